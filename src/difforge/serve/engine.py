"""The device worker: a bounded queue of jobs and one thread that runs them.

Generation never runs on the event loop: handlers put a `Job` on the queue and await its
future, so health checks stay fast under load. Requests whose sampler settings agree
(sampler, steps, grid, guidance, options) and that arrive while the worker is busy, or
within `batch_window_s` of each other, are merged into one batch on the device (dynamic
batching) up to `max_batch` images; one request for more images runs in chunks of
`max_batch`. Every image keeps its own seed (per-sample generators) and its own class or
prompt (a text model's prompts of merged requests are encoded together, padded to the
longest, and padding is masked out), so a result does not depend on what it was batched or
chunked with. A negative prompt is part of the sampler settings: it replaces the empty
prompt of the whole batch's guidance. A merged batch that runs out of memory is
run again one request at a time. A failed warm-up or a fatal device error stops the
worker for good: the engine refuses new work (`Unavailable`) and says why.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from difforge.serve.codec import png_b64

log = logging.getLogger("difforge.serve")


class QueueFull(RuntimeError):
    """The queue holds `queue_size` jobs, or the server is shutting down: come back later (503)."""


class Cancelled(RuntimeError):
    """The request gave up (timeout or disconnect) or the server shut down: its work was dropped."""


class Unavailable(RuntimeError):
    """The worker is not running (failed warm-up, fatal device error): no work is taken (503)."""


class OutOfMemory(RuntimeError):
    """The device had not enough memory for this request alone (503)."""


def is_oom(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def is_fatal(e: BaseException) -> bool:
    """An error after which the device cannot be trusted (a CUDA error, a device-side assert)."""
    if is_oom(e) or not isinstance(e, RuntimeError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(e, accelerator_error):
        return True
    text = str(e)
    return any(k in text for k in ("CUDA error", "device-side assert", "CUBLAS_STATUS", "CUDNN_STATUS",
                                   "unspecified launch failure", "illegal memory access"))


@dataclass(eq=False)
class Job:
    """One request's work. `kind` is "generate", "inpaint" or "restore"; `params` go to
    `Pipeline.generate` or the task; `labels` are per image (None: unconditional), and so are
    `prompts` for a text-to-image model (None: the empty prompt)."""

    kind: str
    params: dict
    seeds: list[int]
    labels: list[int] | None = None
    prompts: list[str] | None = None
    inputs: dict = field(default_factory=dict)  # tensors for tasks: image, mask
    key: tuple | None = None  # equal keys may share a batch; None runs alone
    on_progress: Callable[[dict], None] | None = None
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def n(self) -> int:
        return len(self.seeds)

    def cancel(self) -> None:
        self.cancelled.set()
        self.future.cancel()  # only succeeds while still queued

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        except InvalidStateError:  # cancelled while queued
            pass


def progress_to_loop(loop: asyncio.AbstractEventLoop, q: asyncio.Queue) -> Callable[[dict], None]:
    """A thread-safe progress callback that puts events on an asyncio queue."""

    def post(event: dict | None) -> None:
        try:
            loop.call_soon_threadsafe(q.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    return post


class Engine:
    """Runs jobs on the pipeline's device in one worker thread; see the module docstring."""

    def __init__(self, pipe, config, metrics=None):
        self.pipe, self.config, self.metrics = pipe, config, metrics
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=config.queue_size)
        self._held: Job | None = None  # taken while filling a batch it did not fit
        self._stop = threading.Event()  # the worker exits after its batch
        self._abort = threading.Event()  # the running batch stops at its next step
        self._closing = threading.Event()  # no new jobs (shutting down)
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.error: str | None = None  # why the worker failed for good (shown to clients: no exception text)
        self.running = 0  # images in the batch on the device now

    # ------------------------------------------------------------ control
    def start(self, warmup: bool = True) -> None:
        self._thread = threading.Thread(target=self._loop, args=(warmup,), name="difforge-serve", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._closing.set()
        self._stop.set()
        self._abort.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if not self.alive:  # the worker flushes the queue itself; here only when it never ran
            self._flush(Cancelled("the server is shutting down"))

    def drain(self, timeout: float) -> None:
        """Shutting down: take no new jobs, let the queued and running ones finish within
        `timeout` seconds, then drop what is left (their requests get Cancelled)."""
        self._closing.set()
        deadline = time.monotonic() + timeout
        while self.alive and (self.depth() or self.running) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._abort.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def closing(self) -> bool:
        """Shutting down: no new jobs are taken."""
        return self._closing.is_set()

    @property
    def serving(self) -> bool:
        """Warmed up, running and taking work."""
        return self.ready.is_set() and self.alive and not self.failed and not self._closing.is_set()

    def depth(self) -> int:
        """Jobs waiting for the device (not counting the batch running now)."""
        return self._queue.qsize() + (self._held is not None)

    def submit(self, job: Job) -> Job:
        if self.failed:
            raise Unavailable(f"the model is not available ({self.error}); see the server log")
        if self._closing.is_set():
            raise QueueFull("the server is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.config.queue_size} requests are already waiting") from None
        return job

    # ------------------------------------------------------------ worker
    def _next(self, timeout: float) -> Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        try:
            return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _flush(self, error: BaseException) -> None:
        """Answer every queued job with `error`."""
        while True:
            job = self._next(0)
            if job is None:
                return
            job.resolve(error=error)

    def _fail(self, reason: str, e: BaseException) -> None:
        """Stop taking work for good: log the error, answer what waits."""
        log.error("difforge serve: %s; the worker stopped", reason, exc_info=e)
        self.error = reason
        self._flush(Unavailable(f"the model is not available ({reason}); see the server log"))

    def _loop(self, warmup: bool) -> None:
        try:
            if warmup:  # build kernels and caches before saying ready
                labels = torch.zeros(1, dtype=torch.long) if self.pipe.num_classes else None
                make = self.pipe.generate_video if self.pipe.takes_clips else self.pipe.generate
                make(n=1, labels=labels, sampler="ddim", steps=1, seed=0)
        except Exception as e:  # noqa: BLE001 - reported by /readyz and to every request
            self._fail("warm-up failed", e)
            return
        self.ready.set()
        while not self._stop.is_set() and not self.failed:
            job = self._next(0.05)
            if job is None or not self._claim(job):
                continue
            batch = [job]
            if job.key is not None:
                self._fill(batch)
            self._run(batch)
        if not self.failed:
            self._flush(Cancelled("the server is shutting down"))

    @staticmethod
    def _claim(job: Job) -> bool:
        """Mark a queued job running; False if it was cancelled while waiting."""
        if job.cancelled.is_set() or not job.future.set_running_or_notify_cancel():
            job.resolve(error=Cancelled("the request gave up before it ran"))
            return False
        return True

    def _fill(self, batch: list[Job]) -> None:
        """Add queued jobs with the same key until max_batch images or the window closes."""
        key, total = batch[0].key, batch[0].n
        deadline = time.monotonic() + self.config.batch_window_s
        while total < self.config.max_batch:
            job = self._next(max(0.0, deadline - time.monotonic()))
            if job is None:
                return
            if job.key != key or total + job.n > self.config.max_batch:
                self._held = job
                return
            if self._claim(job):
                batch.append(job)
                total += job.n

    def _run(self, batch: list[Job]) -> None:
        n = sum(j.n for j in batch)
        self.running = n
        m = self.metrics
        if m is not None:
            m.batch_size.observe(n)
            m.sampler_runs.labels(kind=batch[0].kind).inc()
            for j in batch:
                m.queue_wait.observe(time.monotonic() - j.enqueued)
        try:
            results = self._generate(batch) if batch[0].kind == "generate" else [self._task(batch[0])]
        except BaseException as e:  # noqa: BLE001 - every error goes back to its request
            self.running = 0
            self._failed_batch(batch, e)
        else:
            if m is not None:
                m.images.labels(kind=batch[0].kind).inc(n)
            for j, r in zip(batch, results):
                j.resolve(r)
        finally:
            self.running = 0

    def _failed_batch(self, batch: list[Job], e: BaseException) -> None:
        if is_oom(e):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) > 1:  # merged requests: each may fit alone
                log.warning("difforge serve: a batch of %d requests ran out of memory; running them one by one",
                            len(batch))
                for j in batch:
                    if j.cancelled.is_set():
                        j.resolve(error=Cancelled("the request gave up"))
                    else:
                        self._run([j])
                return
            e = OutOfMemory("the device ran out of memory for this request; ask for fewer images")
        elif is_fatal(e):
            for j in batch:
                j.resolve(error=Unavailable("the device failed; see the server log"))
            self._fail("device error", e)
            return
        for j in batch:
            j.resolve(error=e)

    def _callback(self, batch: list[Job], spans: list[tuple[int, int]], steps: int, done: int = 0,
                  total: int | None = None) -> Callable[[dict], None]:
        """Per sampler step: count it, answer requests that gave up, stop if all did (or the
        server is shutting down), stream previews. `done` steps of `total` ran before (chunks).

        The preview is the current noisy state in the model's own frame, s(sigma) x (the
        process's `scale`: the VP x_t = x / sqrt(1 + sigma^2) for DDPM and VP models, x
        itself for VE and EDM ones), so the page shows the image emerging from noise."""
        total = total or steps
        every = max(1, math.ceil(total / self.config.preview_frames))
        streams = [(j, s) for j, s in zip(batch, spans) if j.on_progress is not None]

        def on_step(d: dict) -> None:
            if self.metrics is not None:
                self.metrics.sampler_steps.inc()
            if self._abort.is_set():
                raise Cancelled("the server is shutting down")
            gone = [j for j in batch if j.cancelled.is_set()]
            for j in gone:  # answered now; its rows finish with the others or stop with the batch
                j.resolve(error=Cancelled("the request gave up"))
            if len(gone) == len(batch):
                raise Cancelled("every request in the batch gave up")
            i = done + int(d.get("i", 0))
            if not streams or (i % every and i != total - 1) or "x" not in d:
                return
            sigma = float(d.get("sigma", 0.0))
            x = d["x"].float() * float(self.pipe.process.scale(sigma))
            images = self._previews(x)
            for j, (a, b) in streams:
                if not j.cancelled.is_set() and j.on_progress is not None:
                    try:  # one listener's failure must not fail the others' batch
                        j.on_progress({"step": i + 1, "steps": total, "images": [png_b64(im) for im in images[a:b]]})
                    except Exception:  # noqa: BLE001
                        j.on_progress = None

        return on_step

    def _previews(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images of sampler states x: (N, C, S, S) images, or a video model's clips
        (N, C, T, S, S) as one image per clip with its frames in a row."""
        if x.ndim != 5:
            return self.pipe.to_images(x)
        from difforge.serve.codec import frames_in_a_row

        n, c, t, s, _ = x.shape
        frames = self.pipe.to_images(x.transpose(1, 2).reshape(n * t, c, s, s))
        return frames_in_a_row(frames.view(n, t, *frames.shape[1:]).transpose(1, 2))

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        """Rows [a, b) of at most max_batch images."""
        size = self.config.max_batch
        return [(a, min(n, a + size)) for a in range(0, n, size)]

    def _generate(self, batch: list[Job]) -> list[torch.Tensor]:
        p = batch[0].params
        spans, start = [], 0
        for j in batch:
            spans.append((start, start + j.n))
            start += j.n
        labels = None
        if self.pipe.num_classes:
            null = self.pipe.num_classes  # CFGDenoiser's null label: no class
            labels = torch.tensor([k for j in batch for k in (j.labels or [null] * j.n)], dtype=torch.long)
        prompts = None
        if self.pipe.takes_text:
            prompts = [p for j in batch for p in (j.prompts or [""] * j.n)]
        seeds = [s for j in batch for s in j.seeds]
        steps = len(self.pipe.sigmas(p["sampler"], p.get("steps"), p.get("grid"))) - 1
        chunks = self._chunks(len(seeds))  # merged batches fit max_batch; one large request may not
        if self.pipe.takes_clips:  # uint8 clips (N, C, T, h, w); a job with given frames runs alone
            make, p = self.pipe.generate_video, {**p, **batch[0].inputs}
        else:
            make, p = self.pipe.generate, {**p, "prompts": prompts}
        if len(chunks) == 1:
            images, _ = make(n=len(seeds), labels=labels, seeds=seeds, batch_size=len(seeds),
                             callback=self._callback(batch, spans, steps), **p)
            return [images[a:b] for a, b in spans]
        parts = []
        for k, (a, b) in enumerate(chunks):  # one job (merging stops at max_batch)
            cb = self._callback(batch, [(0, b - a)], steps, done=k * steps, total=len(chunks) * steps)
            part = {**p, "prompts": p["prompts"][a:b]} if p.get("prompts") is not None else p
            images, _ = make(n=b - a, labels=None if labels is None else labels[a:b], seeds=seeds[a:b],
                             batch_size=b - a, callback=cb, **part)
            parts.append(images)
        return [torch.cat(parts)]

    def _task(self, job: Job) -> torch.Tensor:
        import difforge.tasks as tasks

        p = dict(job.params)
        steps = self._task_moves(job)
        fn = tasks.inpaint if job.kind == "inpaint" else tasks.restore
        chunks = self._chunks(job.n)
        parts = []
        for k, (a, b) in enumerate(chunks):
            labels = torch.tensor(job.labels[a:b], dtype=torch.long) if job.labels is not None else None
            args = [x[a:b] if isinstance(x, torch.Tensor) else x for x in job.inputs["args"]]
            cb = self._callback([job], [(0, b - a)], steps, done=k * steps, total=len(chunks) * steps)
            parts.append(fn(self.pipe, *args, labels=labels, seed=job.seeds[a], callback=cb, **p))
        return self.pipe.to_images(torch.cat(parts))

    def _task_moves(self, job: Job) -> int:
        """Sampler steps a task takes in all (its callback's count), for the preview cadence."""
        from difforge.tasks import repaint_path
        from difforge.tasks.common import grid_from
        from difforge.tasks.restore import strength_sigma

        p = job.params
        n = len(self.pipe.sigmas(p["sampler"], p["steps"])) - 1
        if job.kind == "inpaint" and p.get("method") == "repaint":
            return len(repaint_path(n, p.get("jump_length", 5), p.get("resample", 5)))
        if job.kind == "restore":
            sigma_start = strength_sigma(self.pipe, job.inputs["args"][1])
            return len(grid_from(self.pipe, p["sampler"], p["steps"], sigma_start)) - 1
        return n
