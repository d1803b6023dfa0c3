"""Run the service on uvicorn: check the bind, load the model, listen (with `net`'s limits)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from difforge.serve.config import LOOPBACK_NAMES, ServeConfig, check_bind, hosts_for_bind


def missing_dependencies() -> list[str]:
    """The `serve` extra's packages that are not installed."""
    import importlib.util

    mods = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart",
            "prometheus_client": "prometheus-client", "h11": "h11"}
    return [pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None]


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          device: str = "cpu", ema: bool = True, log=print) -> None:
    """Load `model_path` (a run or exported model directory; safetensors weights only) and
    serve it until interrupted. Raises ValueError for a refused bind or an unloadable model."""
    config = config or ServeConfig()
    if config.allowed_hosts == LOOPBACK_NAMES:  # the default: add the bound name
        config = replace(config, allowed_hosts=hosts_for_bind(host))
    check_bind(host, config.token)
    missing = missing_dependencies()
    if missing:
        raise ImportError(f"serving needs {', '.join(missing)}: pip install 'difforge[serve]'")
    from difforge.pipeline import load_pipeline
    from difforge.serve.app import create_app
    from difforge.serve.net import make_server

    pipe = load_pipeline(model_path, ema=ema, device=device)
    app = create_app(pipe, model_path, config)
    shown = f"[{host}]" if ":" in host else host
    hosts = "any Host" if config.allowed_hosts is None else "Host " + ", ".join(config.allowed_hosts)
    log(f"serving {model_path} on http://{shown}:{port}/ (API docs at /docs; answering {hosts})"
        + ("; token required" if config.token else ""))
    try:
        make_server(app, host, port, config).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
        pass
