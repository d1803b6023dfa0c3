"""difforge: train diffusion models on your own images, sample, evaluate, edit, serve.

Importing the package pulls in nothing heavy: `difforge.Pipeline` and
`difforge.load_pipeline` (`from difforge import Pipeline, load_pipeline`) import torch
on first use, and optional dependencies load inside the modules that use them.
"""

__version__ = "0.1.0"

_LAZY = {"Pipeline": "difforge.pipeline", "load_pipeline": "difforge.pipeline"}
__all__ = ["Pipeline", "load_pipeline", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'difforge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
