"""The FastAPI application: routes, limits, authentication and metrics around an `Engine`."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

import torch
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from difforge.serve.bodies import body_doc, parse
from difforge.serve.codec import BadInput, grid_png, png_b64
from difforge.serve.config import ServeConfig
from difforge.serve.engine import Cancelled, Engine, Job, OutOfMemory, QueueFull, Unavailable, progress_to_loop
from difforge.serve.guard import Guard, Observe
from difforge.serve.info import describe_model
from difforge.serve.limits import BodyLimit, HTTPError, one_line
from difforge.serve.metrics import ServeMetrics
from difforge.serve.schemas import ErrorResponse, GenerateRequest, ImagesResponse, InpaintRequest, RestoreRequest

STATIC = files("difforge.serve") / "static"
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 413, 415, 422, 503, 504)}
log = logging.getLogger("difforge.serve")


def swagger_assets() -> Path | None:
    """Swagger UI's files from the swagger-ui-py package (the `serve` extra), served by this
    server itself so /docs works offline; None when it is not installed."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(list(spec.submodule_search_locations)[0]) / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


class ClientGone(Exception):
    """The client closed its connection while its request waited: nothing to answer."""


def create_app(pipe, model_path: str | Path, config: ServeConfig | None = None, warmup: bool = True) -> FastAPI:
    """The service for one loaded `Pipeline`; the worker starts and stops with the app's lifespan."""
    from difforge.serve.requests import Validator

    config = config or ServeConfig()
    engine = Engine(pipe, config)
    metrics = ServeMetrics(depth_fn=engine.depth, running_fn=lambda: engine.running)
    engine.metrics = metrics
    check = Validator(pipe, config)
    model_info = describe_model(model_path, pipe)
    model_info["limits"] = {"max_n": config.max_n, "max_steps": config.max_steps, "max_batch": config.max_batch,
                            "max_body_bytes": config.max_body_bytes, "timeout_s": config.timeout_s,
                            "queue_size": config.queue_size}

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

    # ------------------------------------------------------------ errors
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

    bearer = HTTPBearer(auto_error=False, description="The server's token (--token-file or DIFFORGE_TOKEN).")
    auth = [Security(bearer)] if config.token else []  # documents the scheme; `Guard` checks the token

    # ------------------------------------------------------------ running a job
    async def run(job: Job, request: Request, render) -> Response:
        """Queue the job and answer as the client asked (Accept): JSON, a PNG grid, or events."""
        t0 = time.perf_counter()
        accept = _accepted(request.headers.get("accept", ""))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue | None = None
        if accept == "text/event-stream":
            events = asyncio.Queue()
            job.on_progress = progress_to_loop(loop, events)
            post = job.on_progress
            job.future.add_done_callback(lambda _: post(None))
        try:
            engine.submit(job)
        except QueueFull as e:
            metrics.rejected.labels(reason="queue_full").inc()
            raise HTTPError(503, f"busy: {e}; retry later", {"Retry-After": str(config.retry_after_s)}) from None
        except Unavailable as e:
            metrics.rejected.labels(reason="unavailable").inc()
            raise HTTPError(503, str(e)) from None
        deadline = loop.time() + config.timeout_s
        if events is not None:
            return StreamingResponse(_stream(job, events, deadline, lambda r: render(r, time.perf_counter() - t0)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await _wait(job, request, deadline)
        body = render(result, time.perf_counter() - t0)
        if accept == "image/png":
            rows = min(len(result), 10)
            png = await asyncio.to_thread(grid_png, result, rows, 1)
            return Response(png, media_type="image/png",
                            headers={"X-Seeds": ",".join(map(str, body.seeds)),
                                     "X-Labels": ",".join("" if k is None else str(k) for k in body.labels)})
        return JSONResponse(body.model_dump())

    async def _wait(job: Job, request: Request, deadline: float):
        """The job's result; cancels it when the client disconnects or the deadline passes."""
        loop = asyncio.get_running_loop()
        result = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({result, gone}, timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server cancelled the handler
            job.cancel()
            raise
        finally:
            gone.cancel()
        if result in done:
            try:
                return result.result()
            except asyncio.CancelledError:  # dropped while queued: by shutdown
                raise HTTPError(503, "the server is shutting down", {"Retry-After": "1"}) from None
            except Exception as e:  # noqa: BLE001
                raise _job_error(e) from None
        job.cancel()
        result.cancel()  # its outcome is nobody's business now (and never "unretrieved")
        if gone in done:
            metrics.rejected.labels(reason="disconnect").inc()
            raise ClientGone()
        metrics.rejected.labels(reason="timeout").inc()
        raise HTTPError(504, f"not finished within this server's {config.timeout_s:g} s limit; "
                             f"ask for fewer images or steps")

    async def _stream(job: Job, events: asyncio.Queue, deadline: float, render):
        loop = asyncio.get_running_loop()
        ended = False  # False in `finally`: the client left (the stream was closed under us)
        try:
            while True:
                left = deadline - loop.time()
                try:
                    event = await asyncio.wait_for(events.get(), max(0.0, min(left, config.keepalive_s)))
                except (asyncio.TimeoutError, TimeoutError):
                    if loop.time() < deadline:
                        yield ": keep-alive\n\n"  # a comment: proxies and clients see the stream is alive
                        continue
                    job.cancel()
                    ended = True
                    metrics.rejected.labels(reason="timeout").inc()
                    yield _sse("error", {"status": 504, "detail": f"not finished within {config.timeout_s:g} s"})
                    return
                if event is None:
                    break
                yield _sse("progress", event)
            ended = True
            try:
                yield _sse("result", render(job.future.result()).model_dump())
            except BaseException as e:  # noqa: BLE001 - the future's error, or its cancellation at shutdown
                err = _job_error(e)
                yield _sse("error", {"status": err.status, "detail": err.detail})
        finally:
            if not ended:
                job.cancel()
                metrics.rejected.labels(reason="disconnect").inc()

    def _images(seeds, labels, sampler, steps, cfg):
        def render(result: torch.Tensor, seconds: float) -> ImagesResponse:
            return ImagesResponse(images=[png_b64(im) for im in result], seeds=seeds, labels=labels,
                                  width=result.shape[-1], height=result.shape[-2], channels=result.shape[1],
                                  sampler=sampler, steps=steps, cfg=cfg, seconds=round(seconds, 4))

        return render

    # ------------------------------------------------------------ routes
    @app.post("/v1/generate", dependencies=auth, response_model=ImagesResponse,
              openapi_extra=body_doc(GenerateRequest),
              responses={**ERRORS, 200: {"content": {"image/png": {}, "text/event-stream": {}},
                                         "description": "JSON (default); a PNG grid with `Accept: image/png` (seeds "
                                                        "in X-Seeds); server-sent events `progress` ... `result` "
                                                        "with `Accept: text/event-stream`."}})
    async def generate(request: Request):
        """Sample images: class label(s) or none, n, sampler, steps, CFG scale, seed."""
        req, _ = await parse(request, GenerateRequest)
        job, meta = check.generate(req)
        return await run(job, request, _images(**meta))

    @app.post("/v1/inpaint", dependencies=auth, response_model=ImagesResponse, responses=ERRORS,
              openapi_extra=body_doc(InpaintRequest, ("image", "mask")))
    async def inpaint(request: Request):
        """Fill the masked part of an image (mask: white = fill), keeping the rest."""
        req, uploads = await parse(request, InpaintRequest, ("image", "mask"))
        job, meta = await asyncio.to_thread(check.inpaint, req, uploads)  # decoding stays off the event loop
        return await run(job, request, _images(**meta))

    @app.post("/v1/restore", dependencies=auth, response_model=ImagesResponse, responses=ERRORS,
              openapi_extra=body_doc(RestoreRequest, ("image",)))
    async def restore(request: Request):
        """SDEdit: noise the image to `strength`, then denoise it with the model."""
        req, uploads = await parse(request, RestoreRequest, ("image",))
        job, meta = await asyncio.to_thread(check.restore, req, uploads)
        return await run(job, request, _images(**meta))

    @app.get("/v1/model", dependencies=auth, responses=ERRORS)
    async def model() -> dict:
        """What the model is: classes, size, channels, training steps, recorded metrics, samplers, limits."""
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

    routes = frozenset(getattr(r, "path", "") for r in app.routes) - {""}
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Guard, config=config)
    app.add_middleware(Observe, metrics=metrics, routes=routes)  # outermost: counts every answer
    return app


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _accepted(accept: str) -> str:
    """The first of JSON, PNG or event-stream named in an Accept header (default JSON)."""
    for part in accept.split(","):
        kind = part.split(";")[0].strip().lower()
        if kind in ("application/json", "image/png", "text/event-stream"):
            return kind
    return "application/json"


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _job_error(e: BaseException) -> HTTPError:
    if isinstance(e, (Cancelled, asyncio.CancelledError)):
        return HTTPError(503, str(e) or "the server is shutting down", {"Retry-After": "1"})
    if isinstance(e, OutOfMemory):
        return HTTPError(503, str(e), {"Retry-After": "5"})
    if isinstance(e, Unavailable):
        return HTTPError(503, str(e))
    if isinstance(e, (ValueError, BadInput)):
        return HTTPError(422, str(e).splitlines()[0] if str(e) else type(e).__name__)
    log.error("difforge serve: generation failed", exc_info=e)
    return HTTPError(500, "generation failed; see the server log")
