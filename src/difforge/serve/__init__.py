"""Serve a trained model over HTTP: a JSON API, a web page, health checks and metrics.

`create_app(pipe, path, config)` builds the FastAPI application; `serve(path, ...)` loads a
run or model directory and runs it on uvicorn (what `difforge serve` calls). Needs the
`serve` extra (fastapi, uvicorn, python-multipart, prometheus-client); nothing here is
imported by `import difforge`.
"""

from difforge.serve.config import ServeConfig, check_bind, is_loopback

__all__ = ["ServeConfig", "check_bind", "create_app", "is_loopback", "serve"]


def create_app(*args, **kwargs):
    from difforge.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def serve(*args, **kwargs):
    from difforge.serve.server import serve as _serve

    return _serve(*args, **kwargs)
