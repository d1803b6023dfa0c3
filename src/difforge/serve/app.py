"""The FastAPI application: routes, limits, authentication and metrics around an `Engine`."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from difforge.serve.codec import BadInput, b64decode, grid_png, png_b64
from difforge.serve.config import ServeConfig
from difforge.serve.engine import Cancelled, Engine, Job, QueueFull, progress_to_loop
from difforge.serve.info import describe_model
from difforge.serve.limits import BodyLimit, HTTPError, one_line
from difforge.serve.metrics import ServeMetrics
from difforge.serve.schemas import ErrorResponse, GenerateRequest, ImagesResponse, InpaintRequest, RestoreRequest

STATIC = files("difforge.serve") / "static"
ERRORS = {code: {"model": ErrorResponse} for code in (401, 413, 415, 422, 503, 504)}


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

    app = FastAPI(title="difforge", version="1", lifespan=lifespan,
                  description="Generate, inpaint and restore images with a difforge diffusion model.")
    app.state.engine, app.state.metrics, app.state.config = engine, metrics, config

    # ------------------------------------------------------------ errors, metrics, limits
    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError):
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return JSONResponse({"detail": one_line(e.errors()), "errors": json.loads(json.dumps(e.errors(), default=str))},
                            status_code=422)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "other")
        metrics.requests.labels(route=route, method=request.method, status=str(response.status_code)).inc()
        metrics.latency.labels(route=route).observe(time.perf_counter() - start)
        return response

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)

    def authorized(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        if config.token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.token.encode()):
            raise HTTPError(401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                            {"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorized)]

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
        deadline = loop.time() + config.timeout_s
        if events is not None:
            return StreamingResponse(_stream(job, events, deadline, lambda r: render(r, time.perf_counter() - t0)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await _wait(job, deadline)
        body = render(result, time.perf_counter() - t0)
        if accept == "image/png":
            rows = min(len(result), 10)
            return Response(grid_png(result, rows, scale=1), media_type="image/png",
                            headers={"X-Seeds": ",".join(map(str, body.seeds)),
                                     "X-Labels": ",".join("" if k is None else str(k) for k in body.labels)})
        return JSONResponse(body.model_dump())

    async def _wait(job: Job, deadline: float):
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), max(0.0, deadline - loop.time()))
        except (asyncio.TimeoutError, TimeoutError):
            job.cancel()
            metrics.rejected.labels(reason="timeout").inc()
            raise HTTPError(504, f"not finished within this server's {config.timeout_s:g} s limit; "
                                 f"ask for fewer images or steps") from None
        except asyncio.CancelledError:  # the client went away
            job.cancel()
            raise
        except Exception as e:  # noqa: BLE001
            raise _job_error(e) from None

    async def _stream(job: Job, events: asyncio.Queue, deadline: float, render):
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), max(0.0, deadline - loop.time()))
                except (asyncio.TimeoutError, TimeoutError):
                    job.cancel()
                    metrics.rejected.labels(reason="timeout").inc()
                    yield _sse("error", {"status": 504, "detail": f"not finished within {config.timeout_s:g} s"})
                    return
                if event is None:
                    break
                yield _sse("progress", event)
            try:
                yield _sse("result", render(job.future.result()).model_dump())
            except Exception as e:  # noqa: BLE001
                err = _job_error(e)
                yield _sse("error", {"status": err.status, "detail": err.detail})
        finally:
            if not job.future.done():
                job.cancel()

    def _images(seeds, labels, sampler, steps, cfg):
        def render(result: torch.Tensor, seconds: float) -> ImagesResponse:
            return ImagesResponse(images=[png_b64(im) for im in result], seeds=seeds, labels=labels,
                                  width=result.shape[-1], height=result.shape[-2], channels=result.shape[1],
                                  sampler=sampler, steps=steps, cfg=cfg, seconds=round(seconds, 4))

        return render

    # ------------------------------------------------------------ routes
    @app.post("/v1/generate", dependencies=auth, response_model=ImagesResponse, responses={
        **ERRORS, 200: {"content": {"image/png": {}, "text/event-stream": {}},
                        "description": "JSON (default); a PNG grid with `Accept: image/png` (seeds in X-Seeds); "
                                       "server-sent events `progress` ... `result` with `Accept: text/event-stream`."}})
    async def generate(req: GenerateRequest, request: Request):
        """Sample images: class label(s) or none, n, sampler, steps, CFG scale, seed."""
        job, meta = check.generate(req)
        return await run(job, request, _images(**meta))

    @app.post("/v1/inpaint", dependencies=auth, response_model=ImagesResponse, responses=ERRORS,
              openapi_extra=_body_doc(InpaintRequest, ("image", "mask")))
    async def inpaint(request: Request):
        """Fill the masked part of an image (mask: white = fill), keeping the rest."""
        req, uploads = await _parse(request, InpaintRequest, ("image", "mask"))
        job, meta = check.inpaint(req, uploads)
        return await run(job, request, _images(**meta))

    @app.post("/v1/restore", dependencies=auth, response_model=ImagesResponse, responses=ERRORS,
              openapi_extra=_body_doc(RestoreRequest, ("image",)))
    async def restore(request: Request):
        """SDEdit: noise the image to `strength`, then denoise it with the model."""
        req, uploads = await _parse(request, RestoreRequest, ("image",))
        job, meta = check.restore(req, uploads)
        return await run(job, request, _images(**meta))

    @app.get("/v1/model", dependencies=auth)
    async def model() -> dict:
        """What the model is: classes, size, channels, training steps, recorded metrics, samplers, limits."""
        return model_info

    @app.get("/healthz")
    async def healthz():
        """Liveness: 200 while the process and its worker run."""
        if engine.ready.is_set() and not engine.alive:
            return JSONResponse({"status": "worker stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """Readiness: 200 once the model is loaded and warmed up, with the queue's state."""
        state = {"queue_depth": engine.depth(), "queue_size": config.queue_size, "running_images": engine.running}
        if engine.ready.is_set() and engine.alive:
            return {"ready": True, **state}
        reason = engine.error or ("starting" if not engine.ready.is_set() else "worker stopped")
        return JSONResponse({"ready": False, "reason": reason, **state}, status_code=503)

    @app.get("/metrics", dependencies=auth)
    async def prometheus():
        """Prometheus text format."""
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


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
    if isinstance(e, Cancelled):
        return HTTPError(503, str(e), {"Retry-After": "1"})
    if isinstance(e, (ValueError, BadInput)):
        return HTTPError(422, str(e).splitlines()[0] if str(e) else type(e).__name__)
    return HTTPError(500, f"generation failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


async def _parse(request: Request, model, file_fields: tuple[str, ...]):
    """A task request from JSON (base64 images) or multipart/form-data (image files)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    uploads: dict[str, bytes] = {}
    if ctype == "multipart/form-data":
        from starlette.datastructures import UploadFile

        try:
            form = await request.form(max_files=len(file_fields), max_fields=32)
        except Exception as e:  # noqa: BLE001 - malformed multipart
            raise HTTPError(422, f"unreadable multipart body: {one_line(e)}") from None
        fields = {}
        for k, v in form.multi_items():
            if isinstance(v, UploadFile):
                if k not in file_fields:
                    raise HTTPError(422, f"unexpected file field {k!r}; expected {list(file_fields)}")
                uploads[k] = await v.read()
            else:
                fields[k] = v
        body = fields
    elif ctype in ("application/json", ""):
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(422, f"body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPError(422, "body must be a JSON object")
    else:
        raise HTTPError(415, f"unsupported content type {ctype!r}; send application/json or multipart/form-data")
    try:
        req = model.model_validate(body)
    except ValidationError as e:
        raise HTTPError(422, one_line(e.errors())) from None
    for name in file_fields:
        text = getattr(req, name)
        if name in uploads and text is not None:
            raise HTTPError(422, f"{name}: given both as a file and as base64")
        if name not in uploads:
            if text is None:
                raise HTTPError(422, f"{name}: missing")
            try:
                uploads[name] = b64decode(text, name)
            except BadInput as e:
                raise HTTPError(422, str(e)) from None
    return req, uploads


def _body_doc(model, file_fields: tuple[str, ...]) -> dict:
    """OpenAPI request body for a route parsed by hand: JSON or multipart with files."""
    schema = model.model_json_schema()
    form = json.loads(json.dumps(schema))
    for f in file_fields:
        form["properties"][f] = {"type": "string", "format": "binary", "description": f"{f} file (PNG)"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                          "multipart/form-data": {"schema": form}}}}
