"""pyproject.toml's floors and license fields against what the code uses.

The torch floor: NEWEST_TORCH_APIS lists the newest torch APIs the code calls, each with the
release that introduced it (from PyTorch's release notes). The test checks that each is
still used where the table says, that the installed torch has it, and that the floor in
pyproject.toml is exactly the newest of those releases. It does not prove the table is
complete (an older torch is not installed here to run the suite against): whoever calls a
newer torch API adds it to the table, and the floor then follows.
"""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI's); 3.10 has no TOML reader in the standard library

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "difforge"

# API -> (the torch release that introduced it, a module that uses it)
NEWEST_TORCH_APIS = {
    "torch.nn.utils.get_total_norm": ((2, 6), "train/trainer.py"),  # with clip_grads_with_norm_, in 2.6
    "torch.OutOfMemoryError": ((2, 5), "serve/engine.py"),  # device-agnostic; torch.cuda.OutOfMemoryError before
    "torch.amp.GradScaler": ((2, 3), "train/trainer.py"),  # torch.cuda.amp.GradScaler before
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floor(requirements: list[str], name: str) -> tuple[int, ...]:
    (req,) = [r for r in requirements if re.match(rf"{re.escape(name)}\s*>=", r)]
    return tuple(int(p) for p in re.search(r">=\s*([\d.]+)", req).group(1).split("."))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", text).groups())


@pytest.mark.parametrize("api", list(NEWEST_TORCH_APIS))
def test_each_listed_torch_api_is_used_and_installed(api):
    import importlib

    _, module = NEWEST_TORCH_APIS[api]
    assert api in (SRC / module).read_text(), f"{module} no longer uses {api}: update NEWEST_TORCH_APIS"
    parts = api.split(".")
    obj = importlib.import_module(parts[0])
    for attr in parts[1:]:
        obj = getattr(obj, attr)


def test_torch_floor_is_the_newest_api_s_release():
    import torch

    floor = _floor(_pyproject()["project"]["dependencies"], "torch")
    needed = max(version for version, _ in NEWEST_TORCH_APIS.values())
    assert floor == needed, f"pyproject.toml asks torch>={floor}, the code needs {needed}"
    assert _version(torch.__version__) >= floor


def test_setuptools_floor_reads_the_spdx_license_and_the_license_file_exists():
    """`license = "MIT"` (an SPDX expression, PEP 639) and `license-files` need setuptools >= 77."""
    meta = _pyproject()
    assert meta["project"]["license"] == "MIT"
    assert _floor(meta["build-system"]["requires"], "setuptools") >= (77,)
    for name in meta["project"]["license-files"]:
        text = (ROOT / name).read_text()
        assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text
