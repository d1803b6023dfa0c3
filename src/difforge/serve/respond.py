"""Answering a queued job: as JSON, a PNG grid or server-sent events (by the Accept
header), with the request's deadline, cancellation when the client leaves, and errors
mapped to HTTP statuses."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from difforge.io.video import DEFAULT_FPS, gif_bytes
from difforge.serve.codec import BadInput, frames_in_a_row, gif_b64, grid_png, png_b64
from difforge.serve.config import ServeConfig
from difforge.serve.engine import Cancelled, Engine, Job, OutOfMemory, QueueFull, Unavailable, progress_to_loop
from difforge.serve.limits import HTTPError
from difforge.serve.metrics import ServeMetrics
from difforge.serve.schemas import ImagesResponse

log = logging.getLogger("difforge.serve")


class ClientGone(Exception):
    """The client closed its connection while its request waited: nothing to answer."""


class Responder:
    """Runs jobs on the engine for the routes and turns their results into responses."""

    def __init__(self, engine: Engine, metrics: ServeMetrics, config: ServeConfig):
        self.engine, self.metrics, self.config = engine, metrics, config

    async def run(self, job: Job, request: Request, render) -> Response:
        """Queue the job and answer as the client asked (Accept): JSON, a PNG grid, or events."""
        t0 = time.perf_counter()
        accept = _accepted(request.headers.get("accept", ""))
        if accept == "image/gif" and not self.engine.pipe.takes_clips:
            raise HTTPError(406, "Accept: image/gif: this is an image model; ask for image/png or JSON")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue | None = None
        if accept == "text/event-stream":
            events = asyncio.Queue()
            job.on_progress = progress_to_loop(loop, events)
            post = job.on_progress
            job.future.add_done_callback(lambda _: post(None))
        try:
            self.engine.submit(job)
        except QueueFull as e:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise HTTPError(503, f"busy: {e}; retry later", {"Retry-After": str(self.config.retry_after_s)}) from None
        except Unavailable as e:
            self.metrics.rejected.labels(reason="unavailable").inc()
            raise HTTPError(503, str(e)) from None
        deadline = loop.time() + self.config.timeout_s
        if events is not None:
            return StreamingResponse(self._stream(job, events, deadline,
                                                  lambda r: render(r, time.perf_counter() - t0)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await self._wait(job, request, deadline)
        body = render(result, time.perf_counter() - t0)
        if accept == "image/gif":  # a video model's clips side by side, as one GIF
            gif = await asyncio.to_thread(gif_bytes, result, fps=DEFAULT_FPS)
            return Response(gif, media_type="image/gif", headers=_reproduce(body))
        if accept == "image/png":
            if result.ndim == 5:  # clips: a row of frames each
                png = await asyncio.to_thread(grid_png, frames_in_a_row(result), 1, 1)
                return Response(png, media_type="image/png", headers=_reproduce(body))
            rows = min(len(result), 10)
            png = await asyncio.to_thread(grid_png, result, rows, 1)
            return Response(png, media_type="image/png",
                            headers={"X-Seeds": ",".join(map(str, body.seeds)),
                                     "X-Labels": ",".join("" if k is None else str(k) for k in body.labels)})
        return JSONResponse(body.model_dump())

    async def _wait(self, job: Job, request: Request, deadline: float):
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
            self.metrics.rejected.labels(reason="disconnect").inc()
            raise ClientGone()
        self.metrics.rejected.labels(reason="timeout").inc()
        raise HTTPError(504, f"not finished within this server's {self.config.timeout_s:g} s limit; "
                             f"ask for fewer images or steps")

    async def _stream(self, job: Job, events: asyncio.Queue, deadline: float, render):
        loop = asyncio.get_running_loop()
        ended = False  # False in `finally`: the client left (the stream was closed under us)
        try:
            while True:
                left = deadline - loop.time()
                try:
                    event = await asyncio.wait_for(events.get(), max(0.0, min(left, self.config.keepalive_s)))
                except (asyncio.TimeoutError, TimeoutError):
                    if loop.time() < deadline:
                        yield ": keep-alive\n\n"  # a comment: proxies and clients see the stream is alive
                        continue
                    job.cancel()
                    ended = True
                    self.metrics.rejected.labels(reason="timeout").inc()
                    yield _sse("error", {"status": 504, "detail": f"not finished within {self.config.timeout_s:g} s"})
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
                self.metrics.rejected.labels(reason="disconnect").inc()

    @staticmethod
    def images(seeds, labels, sampler, steps, cfg, prompts=None):
        def render(result: torch.Tensor, seconds: float) -> ImagesResponse:
            video = {}
            if result.ndim == 5:  # a video model's uint8 clips (N, C, T, h, w)
                video = {"videos": [gif_b64(clip, DEFAULT_FPS) for clip in result], "frames": result.shape[2],
                         "fps": DEFAULT_FPS}
                result_images = frames_in_a_row(result)
            else:
                result_images = result
            return ImagesResponse(images=[png_b64(im) for im in result_images], seeds=seeds, labels=labels,
                                  prompts=prompts, width=result.shape[-1], height=result.shape[-2],
                                  channels=result.shape[1], sampler=sampler, steps=steps, cfg=cfg,
                                  seconds=round(seconds, 4), **video)

        return render


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _reproduce(body) -> dict:
    """The headers that say how to make a binary answer's images again."""
    return {"X-Seeds": ",".join(map(str, body.seeds)),
            "X-Labels": ",".join("" if k is None else str(k) for k in body.labels)}


def _accepted(accept: str) -> str:
    """The first of JSON, PNG, GIF or event-stream named in an Accept header (default JSON)."""
    for part in accept.split(","):
        kind = part.split(";")[0].strip().lower()
        if kind in ("application/json", "image/png", "image/gif", "text/event-stream"):
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
