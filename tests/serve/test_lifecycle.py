"""Work that must stop and limits that must bound: disconnects, a dead worker, max_batch,
out-of-memory, slow clients, too many connections, shutdown, event-stream keep-alives.
Some run a real uvicorn server on a loopback port (in a thread)."""

from __future__ import annotations

import copy
import dataclasses
import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(pipe, model_dir, **limits):
    """`difforge serve`'s server (make_server: connection limits, draining) on 127.0.0.1."""
    from difforge.serve import ServeConfig, create_app
    from difforge.serve.net import make_server

    config = ServeConfig(**limits)
    app = create_app(pipe, model_dir, config)
    port = free_port()
    srv = make_server(app, "127.0.0.1", port, config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not srv.started and time.monotonic() < end:
        time.sleep(0.02)
    assert srv.started and app.state.engine.ready.wait(60)
    try:
        yield srv, port, app
    finally:
        srv.should_exit = True
        thread.join(30)


def post(port: int, path: str, body: dict, accept: str = "application/json", timeout: float = 60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", "Accept": accept})
    r = conn.getresponse()
    return r.status, r.getheader("content-type"), r.read()


def wait_for(cond, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def decode_all(images: list[str]) -> torch.Tensor:
    """Base64 PNGs (grayscale) -> uint8 (N, H, W)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in images]))


def raw_request(body: bytes, accept: str) -> bytes:
    return (b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: " + accept.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


# ---------------------------------------------------------------- 4. disconnects cancel the work
@pytest.mark.parametrize("accept", ["application/json", "image/png", "text/event-stream"])
def test_a_client_that_disconnects_stops_its_work(pipe, model_dir, accept):
    with live_server(pipe, model_dir, max_steps=1000) as (srv, port, app):
        engine, metrics = app.state.engine, app.state.metrics
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(raw_request(json.dumps({"n": 2, "steps": 1000, "sampler": "ddim"}).encode(), accept))
        assert wait_for(lambda: engine.running == 2)
        s.close()  # about 12 s of sampling left
        assert wait_for(lambda: engine.running == 0, 5.0)
        assert metrics.sampler_steps._value.get() < 1000
        assert metrics.rejected.labels(reason="disconnect")._value.get() == 1


def test_a_request_that_gives_up_is_answered_at_the_next_step_of_its_batch(pipe):
    from difforge.serve import ServeConfig
    from difforge.serve.engine import Cancelled, Engine, Job

    engine = Engine(pipe, ServeConfig(max_batch=8, batch_window_s=0.3))
    params = {"sampler": "ddim", "steps": 400, "cfg": 2.0}
    key = tuple(sorted(params.items()))
    leaving, staying = Job("generate", params, [1], [0], key=key), Job("generate", params, [2], [1], key=key)
    for j in (leaving, staying):
        engine.submit(j)
    engine.start(warmup=False)
    assert wait_for(lambda: engine.running == 2)
    t0 = time.monotonic()
    leaving.cancel()
    with pytest.raises(Cancelled):
        leaving.future.result(timeout=2)  # answered now, not when the batch ends (about 5 s)
    assert time.monotonic() - t0 < 1 and not staying.future.done()
    assert staying.future.result(timeout=60).shape[0] == 1  # the other request is served
    engine.stop()


# ---------------------------------------------------------------- 6. a dead worker takes no traffic
def test_a_failed_warm_up_makes_the_server_unready_and_requests_503_at_once(pipe, model_dir, serve_helpers):
    from difforge.models.conditioning import LowResImage

    sr = copy.copy(pipe)  # a super-resolution model: it cannot generate, so its warm-up fails
    sr.card = dataclasses.replace(pipe.card, conditioning=LowResImage(2), class_names=None)
    with serve_helpers["make_client"](sr, model_dir, timeout_s=5) as c:
        assert wait_for(lambda: c.app.state.engine.failed)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["reason"] == "warm-up failed"
        assert "super-resolution" not in r.text  # the exception is in the log, not shown
        assert c.get("/healthz").status_code == 503
        t0 = time.monotonic()
        r = c.post("/v1/generate", json={"steps": 2})
        assert r.status_code == 503 and time.monotonic() - t0 < 2  # not a 504 after the timeout
        assert r.json()["detail"] == "the model is not available (warm-up failed); see the server log"


def test_a_fatal_device_error_stops_the_worker(pipe, model_dir, serve_helpers, monkeypatch):
    with serve_helpers["make_client"](pipe, model_dir, timeout_s=5) as c:
        engine = c.app.state.engine
        assert engine.ready.wait(60)

        def dead_device(*args, **kwargs):
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

        monkeypatch.setattr(engine.pipe, "generate", dead_device)
        r = c.post("/v1/generate", json={"steps": 2})
        assert r.status_code == 503 and r.json()["detail"] == "the device failed; see the server log"
        assert wait_for(lambda: not engine.alive)
        assert c.get("/readyz").json()["reason"] == "device error" and c.get("/healthz").status_code == 503
        t0 = time.monotonic()
        assert c.post("/v1/generate", json={"steps": 2}).status_code == 503 and time.monotonic() - t0 < 2


def test_an_ordinary_error_leaves_the_worker_running(pipe, model_dir, serve_helpers, monkeypatch):
    with serve_helpers["make_client"](pipe, model_dir) as c:
        engine = c.app.state.engine
        assert engine.ready.wait(60)
        real = engine.pipe.generate
        monkeypatch.setattr(engine.pipe, "generate", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad grid")))
        assert c.post("/v1/generate", json={"steps": 2}).status_code == 422
        monkeypatch.setattr(engine.pipe, "generate", real)
        assert c.post("/v1/generate", json={"steps": 2}).status_code == 200 and c.get("/readyz").status_code == 200


# ---------------------------------------------------------------- 7. limits that bound
def test_max_batch_bounds_one_large_request_too(pipe, model_dir, serve_helpers, monkeypatch):
    import difforge.tasks as tasks

    sizes = []
    with serve_helpers["make_client"](pipe, model_dir, max_batch=4, max_n=10) as c:
        engine = c.app.state.engine
        assert engine.ready.wait(60)
        real = engine.pipe.generate
        monkeypatch.setattr(engine.pipe, "generate", lambda *a, n=None, **k: sizes.append(n) or real(*a, n=n, **k))
        out = c.post("/v1/generate", json={"n": 10, "steps": 3, "seed": 5, "class": 1})
        assert out.status_code == 200, out.text
        assert sizes == [4, 4, 2]
        expected, _ = real(labels=torch.ones(10, dtype=torch.long), steps=3, seed=5)  # the default sampler
        assert torch.equal(decode_all(out.json()["images"]), expected[:, 0])  # the same seeds, whatever the chunks

        task_sizes = []
        inpaint = tasks.inpaint
        monkeypatch.setattr(tasks, "inpaint", lambda pipe, image, *a, **k: task_sizes.append(len(image))
                            or inpaint(pipe, image, *a, **k))
        import base64
        import io

        import numpy as np
        from PIL import Image

        def b64(arr):
            buf = io.BytesIO()
            Image.fromarray(arr.astype(np.uint8), "L").save(buf, format="PNG")
            return base64.b64encode(buf.getvalue()).decode()

        mask = np.zeros((8, 8))
        mask[:, :4] = 255
        r = c.post("/v1/inpaint", json={"image": b64(np.full((8, 8), 70)), "mask": b64(mask), "n": 6,
                                        "steps": 2, "method": "blend", "seed": 3})
        assert r.status_code == 200 and len(r.json()["images"]) == 6 and task_sizes == [4, 2]


class TightMemory:
    """The real pipeline on a device that holds at most `limit` images at once."""

    def __init__(self, pipe, limit: int):
        self._pipe, self.limit, self.sizes = pipe, limit, []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def generate(self, n=None, labels=None, **kw):
        self.sizes.append(n)
        if n > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self._pipe.generate(n=n, labels=labels, **kw)


def test_a_merged_batch_out_of_memory_is_retried_one_request_at_a_time(pipe):
    from difforge.serve import ServeConfig
    from difforge.serve.engine import Engine, Job, OutOfMemory
    from difforge.serve.metrics import ServeMetrics

    tight = TightMemory(pipe, limit=2)
    engine = Engine(tight, ServeConfig(max_batch=8, batch_window_s=0.3))
    engine.metrics = ServeMetrics()
    params = {"sampler": "ddim", "steps": 2, "cfg": 2.0}
    key = tuple(sorted(params.items()))
    jobs = [Job("generate", params, [1, 2], [0, 1], key=key), Job("generate", params, [9, 10], [2, 2], key=key)]
    alone = Job("generate", {**params, "steps": 3}, [4, 5, 6], [0, 0, 0], key=("alone",))
    for j in (*jobs, alone):
        engine.submit(j)
    engine.start(warmup=False)
    results = [j.future.result(timeout=60) for j in jobs]
    with pytest.raises(OutOfMemory, match="ask for fewer images"):
        alone.future.result(timeout=60)
    engine.stop()
    assert tight.sizes == [4, 2, 2, 3]  # merged, out of memory, then each request alone
    for j, got in zip(jobs, results):
        solo, _ = pipe.generate(labels=torch.tensor(j.labels), seeds=j.seeds, **params)
        assert torch.equal(got, solo)
    assert engine.alive is False and engine.failed is False  # out of memory is not fatal


def test_slow_and_silent_clients_are_cut_off(pipe, model_dir):
    with live_server(pipe, model_dir, read_timeout_s=0.5) as (srv, port, app):
        silent = socket.create_connection(("127.0.0.1", port))
        slow_headers = socket.create_connection(("127.0.0.1", port))
        slow_headers.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        slow_body = socket.create_connection(("127.0.0.1", port))
        slow_body.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n{\"n\": 1")  # 993 bytes never sent
        for s in (silent, slow_headers, slow_body):
            s.settimeout(5)
            t0 = time.monotonic()
            data = b""
            while chunk := s.recv(4096):  # the server closes the connection
                data += chunk
            assert time.monotonic() - t0 < 3
            if data:
                assert data.startswith(b"HTTP/1.1 408") and b'"detail": "request not received within 0.5 s"' in data
            s.close()
        assert post(port, "/v1/generate", {"steps": 1})[0] == 200  # others are served as before
        text = app.state.metrics.render()[0].decode()
        assert 'status="499"' in text and 'status="500"' not in text  # the cut-off body is no server error


def test_connections_over_the_cap_get_a_json_503(pipe, model_dir):
    with live_server(pipe, model_dir, max_connections=3, read_timeout_s=5) as (srv, port, app):
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(5)
        data = extra.recv(4096)
        assert data.startswith(b"HTTP/1.1 503") and b"over 3 open connections" in data
        assert extra.recv(4096) == b""  # and closed
        for s in held:
            s.close()
        time.sleep(0.2)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200


def test_malformed_http_gets_a_json_400(pipe, model_dir):
    with live_server(pipe, model_dir) as (srv, port, app):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(5)
        s.sendall(b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n")  # no colon
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 400") and b"application/json" in data and b'"detail"' in data
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 20_000)  # headers over 16 KiB
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 400") and b"application/json" in data


# ---------------------------------------------------------------- 8. shutdown drains; streams keep alive
def test_shutdown_lets_running_work_finish_and_answers_the_rest_503(pipe, model_dir):
    answers = {}
    with live_server(pipe, model_dir, max_steps=1000, drain_s=8) as (srv, port, app):
        t = threading.Thread(target=lambda: answers.update(short=post(port, "/v1/generate", {"steps": 100})))
        t.start()
        assert wait_for(lambda: app.state.engine.running == 1)
        srv.should_exit = True  # what Ctrl-C does
        t.join(30)
    status, ctype, body = answers["short"]
    assert status == 200 and len(json.loads(body)["images"]) == 1

    with live_server(pipe, model_dir, max_steps=1000, drain_s=0.3) as (srv, port, app):
        t = threading.Thread(target=lambda: answers.update(long=post(port, "/v1/generate", {"steps": 1000})))
        t.start()
        assert wait_for(lambda: app.state.engine.running == 1)
        t0 = time.monotonic()
        srv.should_exit = True
        t.join(30)
        assert time.monotonic() - t0 < 4  # not uvicorn's grace period, not the 12 s of work
    status, ctype, body = answers["long"]
    assert status == 503 and ctype == "application/json"
    assert json.loads(body)["detail"] == "the server is shutting down"


def test_while_shutting_down_new_requests_get_503_and_readiness_says_so(pipe, model_dir, serve_helpers):
    with serve_helpers["make_client"](pipe, model_dir) as c:
        engine = c.app.state.engine
        assert engine.ready.wait(60)
        engine.drain(0)  # what the server does first on Ctrl-C
        r = c.post("/v1/generate", json={"steps": 2})
        assert r.status_code == 503 and r.json()["detail"] == "busy: the server is shutting down; retry later"
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["reason"] == "shutting down"


def test_an_event_stream_sends_keep_alives_while_queued(pipe, model_dir, serve_helpers):
    c = serve_helpers["make_client"](pipe, model_dir, keepalive_s=0.2, timeout_s=1.0)  # worker not started
    with c.stream("POST", "/v1/generate", json={"steps": 2}, headers={"Accept": "text/event-stream"}) as r:
        text = "".join(r.iter_text())
    blocks = text.strip().split("\n\n")
    assert blocks[0] == ": keep-alive" and blocks.count(": keep-alive") >= 3
    assert blocks[-1].startswith("event: error") and '"status": 504' in blocks[-1]
