"""Run the service on uvicorn: check the bind, load the model, listen."""

from __future__ import annotations

from pathlib import Path

from difforge.serve.config import ServeConfig, check_bind


def missing_dependencies() -> list[str]:
    """The `serve` extra's packages that are not installed."""
    import importlib.util

    mods = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart",
            "prometheus_client": "prometheus-client"}
    return [pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None]


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          device: str = "cpu", ema: bool = True, log=print) -> None:
    """Load `model_path` (a run or exported model directory; safetensors weights only) and
    serve it until interrupted. Raises ValueError for a refused bind or an unloadable model."""
    config = config or ServeConfig()
    check_bind(host, config.token)
    missing = missing_dependencies()
    if missing:
        raise ImportError(f"serving needs {', '.join(missing)}: pip install 'difforge[serve]'")
    import uvicorn

    from difforge.pipeline import load_pipeline
    from difforge.serve.app import create_app

    pipe = load_pipeline(model_path, ema=ema, device=device)
    app = create_app(pipe, model_path, config)
    shown = f"[{host}]" if ":" in host else host
    log(f"serving {model_path} on http://{shown}:{port}/ (API docs at /docs)"
        + ("; token required" if config.token else ""))
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
