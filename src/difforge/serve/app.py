"""The FastAPI application: routes, limits, authentication and metrics around an `Engine`."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from difforge.serve.bodies import body_doc, parse
from difforge.serve.config import ServeConfig
from difforge.serve.engine import Engine
from difforge.serve.guard import Guard, Observe
from difforge.serve.info import describe_model
from difforge.serve.limits import BodyLimit, HTTPError, one_line
from difforge.serve.metrics import ServeMetrics
from difforge.serve.respond import ClientGone, Responder
from difforge.serve.schemas import ErrorResponse, GenerateRequest, ImagesResponse, InpaintRequest, RestoreRequest

STATIC = files("difforge.serve") / "static"
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 406, 413, 415, 422, 503, 504)}
log = logging.getLogger("difforge.serve")


def swagger_assets() -> Path | None:
    """Swagger UI's files from the swagger-ui-py package (the `serve` extra), served by this
    server itself so /docs works offline; None when it is not installed."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(list(spec.submodule_search_locations)[0]) / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


def create_app(pipe, model_path: str | Path, config: ServeConfig | None = None, warmup: bool = True) -> FastAPI:
    """The service for one loaded `Pipeline`; the worker starts and stops with the app's lifespan."""
    from difforge.serve.requests import Validator

    config = config or ServeConfig()
    engine = Engine(pipe, config)
    metrics = ServeMetrics(depth_fn=engine.depth, running_fn=lambda: engine.running)
    engine.metrics = metrics
    model_info = describe_model(model_path, pipe)
    model_info["limits"] = {"max_n": config.max_n, "max_steps": config.max_steps, "max_batch": config.max_batch,
                            "max_body_bytes": config.max_body_bytes, "timeout_s": config.timeout_s,
                            "queue_size": config.queue_size, "max_prompt_chars": config.max_prompt_chars}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start(warmup=warmup)
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="difforge", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Generate, inpaint and restore images with a difforge diffusion model.")
    app.state.engine, app.state.metrics, app.state.config = engine, metrics, config
    responder = Responder(engine, metrics, config)

    _error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="The server's token (--token-file or DIFFORGE_TOKEN).")
    auth = [Security(bearer)] if config.token else []  # documents the scheme; `Guard` checks the token
    _task_routes(app, Validator(pipe, config), responder, auth)
    _probe_routes(app, engine, metrics, config, model_info, auth)
    _page_routes(app)
    routes = frozenset(getattr(r, "path", "") for r in app.routes) - {""}
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Guard, config=config)
    app.add_middleware(Observe, metrics=metrics, routes=routes)  # outermost: counts every answer
    return app


def _error_handlers(app: FastAPI) -> None:
    """One-line JSON errors; a client that left gets 499; crashes go to the log."""

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError):
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return JSONResponse({"detail": one_line(e.errors())}, status_code=422)

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, e: Exception):
        return Response(status_code=499)  # the client left (or was cut off): never delivered; counted in the metrics

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):  # the details go to the log, not to the client
        log.error("difforge serve: %s %s failed", request.method, request.url.path, exc_info=e)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)


def _task_routes(app: FastAPI, check, responder: Responder, auth: list) -> None:
    """The work routes: generate, inpaint, restore (checked by `check`, answered by `responder`)."""

    @app.post("/v1/generate", dependencies=auth, response_model=ImagesResponse,
              openapi_extra=body_doc(GenerateRequest),
              responses={**ERRORS, 200: {"content": {"image/png": {}, "image/gif": {}, "text/event-stream": {}},
                                         "description": "JSON (default); a PNG grid with `Accept: image/png` (seeds "
                                                        "in X-Seeds); a video model's clips as one GIF with "
                                                        "`Accept: image/gif`; server-sent events `progress` ... "
                                                        "`result` with `Accept: text/event-stream`."}})
    async def generate(request: Request):
        """Sample images: class label(s), prompt(s) (text-to-image models) or none, n, sampler, steps, CFG scale,
        seed."""
        req, _ = await parse(request, GenerateRequest)
        job, meta = await asyncio.to_thread(check.generate, req)  # a text model's prompts are encoded to check them
        return await responder.run(job, request, responder.images(**meta))

    @app.post("/v1/inpaint", dependencies=auth, response_model=ImagesResponse, responses=ERRORS,
              openapi_extra=body_doc(InpaintRequest, ("image", "mask")))
    async def inpaint(request: Request):
        """Fill the masked part of an image (mask: white = fill), keeping the rest."""
        req, uploads = await parse(request, InpaintRequest, ("image", "mask"))
        job, meta = await asyncio.to_thread(check.inpaint, req, uploads)  # decoding stays off the event loop
        return await responder.run(job, request, responder.images(**meta))

    @app.post("/v1/restore", dependencies=auth, response_model=ImagesResponse, responses=ERRORS,
              openapi_extra=body_doc(RestoreRequest, ("image",)))
    async def restore(request: Request):
        """SDEdit: noise the image to `strength`, then denoise it with the model."""
        req, uploads = await parse(request, RestoreRequest, ("image",))
        job, meta = await asyncio.to_thread(check.restore, req, uploads)
        return await responder.run(job, request, responder.images(**meta))


def _probe_routes(app: FastAPI, engine: Engine, metrics: ServeMetrics, config: ServeConfig, model_info: dict,
                  auth: list) -> None:
    """/v1/model, /healthz, /readyz and /metrics."""

    @app.get("/v1/model", dependencies=auth, responses=ERRORS)
    async def model() -> dict:
        """What the model is: classes or prompts, size, channels, training steps, recorded metrics, samplers,
        limits."""
        return model_info

    @app.get("/healthz")
    async def healthz():
        """Liveness: 200 while the process and its worker run; 503 once the worker failed for good."""
        if engine.failed:
            return JSONResponse({"status": f"worker failed: {engine.error}"}, status_code=503)
        if engine.ready.is_set() and not engine.alive:
            return JSONResponse({"status": "worker stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """Readiness: 200 once the model is loaded and warmed up and the worker takes work, with the queue's state."""
        state = {"queue_depth": engine.depth(), "queue_size": config.queue_size, "running_images": engine.running}
        if engine.serving:
            return {"ready": True, **state}
        reason = engine.error or ("shutting down" if engine.closing else "starting" if not engine.ready.is_set()
                                  else "worker stopped")
        return JSONResponse({"ready": False, "reason": reason, **state}, status_code=503)

    @app.get("/metrics", dependencies=auth, responses=ERRORS)
    async def prometheus():
        """Prometheus text format."""
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)


def _page_routes(app: FastAPI) -> None:
    """The web page, /docs (served locally) and the static files."""

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC / "index.html"))

    swagger = swagger_assets()

    @app.get("/docs", include_in_schema=False)
    async def docs():
        if swagger is None:
            raise HTTPError(404, "the API viewer needs swagger-ui-py (pip install 'difforge[serve]'); "
                                 "the schema is at /openapi.json")
        return FileResponse(str(STATIC / "docs.html"))

    if swagger is not None:
        app.mount("/docs/assets", StaticFiles(directory=str(swagger)), name="docs-assets")
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
