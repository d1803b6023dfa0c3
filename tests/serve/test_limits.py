"""Bad input gets one clear 4xx line; limits, token, queue, timeout, batching, safe loading."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

SIZE = 8


def b64png(arr, mode="L") -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, np.uint8), mode).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


IMAGE = b64png(np.full((SIZE, SIZE), 100))
MASK = b64png(np.pad(np.full((SIZE, SIZE // 2), 255), ((0, 0), (0, SIZE // 2))))


@pytest.mark.parametrize("route, body, needle", [
    ("/v1/generate", {"n": 9}, "n = 9 is over this server's maximum of 8"),
    ("/v1/generate", {"steps": 51}, "steps = 51 is over this server's maximum of 50"),
    ("/v1/generate", {"steps": 10**12}, "steps = 1000000000000 is over this server's maximum of 50"),
    ("/v1/generate", {"sampler": "ddpm"},
     "steps = 1000 (the default for ddpm) is over this server's maximum of 50; give steps"),
    ("/v1/generate", {"n": 0}, "n: Input should be greater than or equal to 1"),
    ("/v1/generate", {"steps": "many"}, "steps: Input should be a valid integer"),
    ("/v1/generate", {"sampler": "magic"}, "unknown sampler 'magic'"),
    ("/v1/generate", {"grid": "spiral", "steps": 4}, "spiral"),
    ("/v1/generate", {"class": 7}, "class: class 7 out of range"),
    ("/v1/generate", {"class": "three"}, "class: unknown class 'three'"),
    ("/v1/generate", {"class": 1, "labels": [1]}, "give `class` or `labels`, not both"),
    ("/v1/generate", {"labels": [0, 1], "n": 3}, "n = 3 but 2 labels were given"),
    ("/v1/generate", {"labels": []}, "labels: empty list"),
    ("/v1/generate", {"sampler": "euler", "eta": 0.5}, "eta does not apply to sampler 'euler'"),
    ("/v1/generate", {"cfg": -1}, "cfg: Input should be greater than or equal to 0"),
    ("/v1/generate", {"seed": -3}, "seed: Input should be greater than or equal to 0"),
    ("/v1/generate", {"color": "red"}, "color: unknown field"),
    ("/v1/inpaint", {"image": "not base64!", "mask": MASK}, "image: not valid base64"),
    ("/v1/inpaint", {"image": base64.b64encode(b"plain text").decode(), "mask": MASK, "steps": 8},
     "image: not a readable image"),
    ("/v1/inpaint", {"image": IMAGE, "mask": b64png(np.zeros((4, 4))), "steps": 8},
     "mask is 4x4 but the image is 8x8"),
    ("/v1/inpaint", {"image": IMAGE, "mask": b64png(np.zeros((SIZE, SIZE))), "steps": 8}, "mask is empty"),
    ("/v1/inpaint", {"image": b64png(np.zeros((16, 16))), "mask": MASK, "steps": 8},
     "image is 16x16; this model takes 8x8"),
    ("/v1/inpaint", {"image": IMAGE}, "mask: missing"),
    ("/v1/inpaint", {"image": IMAGE, "mask": MASK, "method": "magic"}, "unknown inpainting method 'magic'"),
    ("/v1/inpaint", {"image": IMAGE, "mask": MASK, "n": 20}, "n = 20 is over this server's maximum of 8"),
    ("/v1/inpaint", {"image": "", "mask": MASK}, "image: empty"),
    # RePaint walks its jumps down again: 50 steps with the default jumps are 230 network steps
    ("/v1/inpaint", {"image": IMAGE, "mask": MASK}, "RePaint takes 230 steps with steps = 50, jump_length = 5 and "
                                                    "resample = 5: over this server's maximum of 50"),
    ("/v1/inpaint", {"image": IMAGE, "mask": MASK, "steps": 20, "resample": 20}, "RePaint takes 305 steps"),
    ("/v1/restore", {"image": IMAGE, "strength": 0}, "strength: Input should be greater than 0"),
    ("/v1/restore", {"image": IMAGE, "strength": 1.5}, "strength: Input should be less than or equal to 1"),
    ("/v1/restore", {"strength": 0.5}, "image: missing"),
    ("/v1/restore", {"image": IMAGE, "eta": 0.2}, "eta does not apply to restore"),
])
def test_bad_input_is_a_clear_422(client, route, body, needle):
    r = client.post(route, json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert needle in detail and "\n" not in detail


def test_malformed_bodies(client):
    r = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = client.post("/v1/inpaint", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body is not valid JSON")
    r = client.post("/v1/inpaint", json=[1, 2])
    assert r.status_code == 422 and r.json()["detail"] == "body must be a JSON object"
    r = client.post("/v1/restore", content=b"image=1", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "unsupported content type 'text/plain'" in r.json()["detail"]


def test_non_image_upload(client):
    r = client.post("/v1/restore", files={"image": ("notes.txt", b"hello, not an image", "text/plain")},
                    data={"strength": "0.5"})
    assert r.status_code == 422 and r.json()["detail"] == (
        "image: not a readable image (UnidentifiedImageError: cannot identify image file); "
        "send PNG, JPEG, BMP, GIF, WebP or TIFF")
    r = client.post("/v1/restore", files={"photo": ("a.png", base64.b64decode(IMAGE), "image/png")})
    assert r.status_code == 422


def test_unconditional_model_refuses_class_and_cfg(tmp_path, serve_helpers):
    from difforge.pipeline import load_pipeline

    d = serve_helpers["make_model_dir"](tmp_path / "u", num_classes=None)
    with serve_helpers["make_client"](load_pipeline(d), d) as c:
        r = c.post("/v1/generate", json={"class": 0, "steps": 2})
        assert r.status_code == 422 and "this model is unconditional" in r.json()["detail"]
        r = c.post("/v1/generate", json={"cfg": 3, "steps": 2})
        assert r.status_code == 422 and "cfg needs a class-conditional model" in r.json()["detail"]
        out = c.post("/v1/generate", json={"n": 2, "steps": 2, "seed": 0}).json()
        assert out["labels"] == [None, None] and out["cfg"] is None


def test_body_size_limit(client):
    big = {"image": "A" * 70_000, "mask": MASK}  # the client fixture allows 64 KiB
    r = client.post("/v1/inpaint", json=big)
    assert r.status_code == 413 and "over this server's limit of 65536 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        for _ in range(20):
            yield b"x" * 8192

    r = client.post("/v1/inpaint", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


# ---------------------------------------------------------------- token and bind
def test_token_guards_the_api_but_not_health_or_page(pipe, model_dir, serve_helpers):
    with serve_helpers["make_client"](pipe, model_dir, token="s3cret-token") as c:
        for path in ("/v1/model", "/metrics"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/model", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert c.post("/v1/generate", json={"steps": 2}).status_code == 401
        ok = {"Authorization": "Bearer s3cret-token"}
        assert c.get("/v1/model", headers=ok).status_code == 200
        assert c.post("/v1/generate", json={"steps": 2}, headers=ok).status_code == 200
        for path in ("/healthz", "/readyz", "/"):
            assert c.get(path).status_code == 200


@pytest.mark.parametrize("host, token, ok", [
    ("127.0.0.1", None, True), ("localhost", None, True), ("::1", None, True), ("127.0.0.2", None, True),
    ("0.0.0.0", None, False), ("192.168.1.5", None, False), ("::", None, False), ("example.org", None, False),
    ("0.0.0.0", "long-enough-token", True),
])
def test_non_loopback_bind_needs_a_token(host, token, ok):
    from difforge.serve import check_bind

    if ok:
        check_bind(host, token)
    else:
        with pytest.raises(ValueError, match="give --token"):
            check_bind(host, token)


def test_cli_refuses_open_bind_and_pickles(tmp_path, model_dir, capsys):
    from difforge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(model_dir), "--host", "0.0.0.0"])
    assert e.value.code == 1 and "give --token" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((model_dir / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, pickled / "model.pt")  # a pickle is never loaded
    with pytest.raises(SystemExit) as e:
        main(["serve", str(pickled)])
    assert e.value.code == 1 and "neither a run directory" in capsys.readouterr().err
    (pickled / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(SystemExit) as e:
        main(["serve", str(pickled)])
    assert e.value.code == 1 and "cannot load weights" in capsys.readouterr().err


# ---------------------------------------------------------------- queue, timeout, event loop
def test_full_queue_is_503_with_retry_after_and_waiting_too_long_is_504(pipe, model_dir, serve_helpers):
    # worker not started
    c = serve_helpers["make_client"](pipe, model_dir, queue_size=1, timeout_s=1.0, retry_after_s=7)
    engine = c.app.state.engine
    first = {}
    t = threading.Thread(target=lambda: first.update(r=c.post("/v1/generate", json={"steps": 2})))
    t.start()
    for _ in range(200):
        if engine.depth() == 1:
            break
        time.sleep(0.01)
    r = c.post("/v1/generate", json={"steps": 2})
    assert r.status_code == 503 and r.headers["retry-after"] == "7" and "busy" in r.json()["detail"]
    t.join()
    assert first["r"].status_code == 504 and "1 s limit" in first["r"].json()["detail"]
    job = engine._queue.get_nowait()
    assert job.cancelled.is_set()  # the work was dropped, not left to run


def test_health_answers_while_the_device_is_busy(pipe, model_dir, serve_helpers):
    with serve_helpers["make_client"](pipe, model_dir, max_steps=1000, max_n=16) as c:
        engine = c.app.state.engine
        done = {}
        t = threading.Thread(target=lambda: done.update(r=c.post("/v1/generate", json={"n": 16, "steps": 150})))
        t.start()
        while engine.running == 0 and t.is_alive():
            time.sleep(0.005)
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").json()["running_images"] == 16
        still_running = engine.running == 16
        t.join()
        assert still_running and done["r"].status_code == 200


# ---------------------------------------------------------------- batching
def test_compatible_requests_share_one_batch_and_keep_their_seeds(pipe):
    from difforge.serve import ServeConfig
    from difforge.serve.engine import Engine, Job
    from difforge.serve.metrics import ServeMetrics

    engine = Engine(pipe, ServeConfig(max_batch=8, batch_window_s=0.2))
    engine.metrics = ServeMetrics()
    params = {"sampler": "ddim", "steps": 3, "cfg": 2.0}
    key = tuple(sorted(params.items()))
    jobs = [Job("generate", params, [10, 11], [0, 1], key=key), Job("generate", params, [50], None, key=key),
            Job("generate", params, [7, 8, 9], [2, 2, 2], key=key),
            Job("generate", {**params, "steps": 4}, [1], [1], key=("other",))]
    for j in jobs:
        engine.submit(j)
    engine.start(warmup=False)
    results = [j.future.result(timeout=60) for j in jobs]
    engine.stop()
    runs = engine.metrics.sampler_runs.labels(kind="generate")._value.get()
    assert runs == 2  # three compatible requests in one batch, the different one alone
    for j, got in zip(jobs, results):
        labels = torch.tensor([k if k is not None else pipe.num_classes for k in (j.labels or [None] * j.n)])
        solo, _ = pipe.generate(labels=labels, seeds=j.seeds, **j.params)
        assert torch.equal(got, solo)  # whatever it was batched with


def test_images_and_masks_are_refused_from_their_header_before_decoding(monkeypatch):
    from PIL import ImageFile

    from difforge.serve.codec import BadInput, decode_image, decode_mask

    buf = io.BytesIO()
    Image.new("L", (4096, 4096)).save(buf, format="PNG")  # 16.7 M pixels in about 17 kB
    loads = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loads.append(im.size) or load(im))
    with pytest.raises(BadInput, match=r"^image is 4096x4096; this model takes 8x8 images$"):
        decode_image(buf.getvalue(), "image", 1, SIZE)
    with pytest.raises(BadInput, match=r"^mask is 4096x4096 but the image is 8x8; they must match$"):
        decode_mask(buf.getvalue(), SIZE)
    assert loads == []  # neither was decoded
    small = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (10, 20, 30)).save(small, format="PNG")
    rgb = decode_image(small.getvalue(), "image", 3, SIZE)
    assert rgb.shape == (1, 3, SIZE, SIZE) and rgb.dtype == torch.uint8 and rgb[0, :, 0, 0].tolist() == [10, 20, 30]


def test_masks_are_decoded_off_the_event_loop(client, monkeypatch):
    import asyncio

    import difforge.serve.requests as requests

    seen = []

    def spy(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            seen.append("event loop")
        except RuntimeError:
            seen.append("worker thread")
        return decode_mask(*args, **kwargs)

    decode_mask = requests.decode_mask
    monkeypatch.setattr(requests, "decode_mask", spy)
    r = client.post("/v1/inpaint", json={"image": IMAGE, "mask": MASK, "steps": 2, "method": "blend"})
    assert r.status_code == 200, r.text
    assert seen == ["worker thread"]


def test_a_request_that_gives_up_stops_its_batch_at_the_next_step(pipe):
    from difforge.serve import ServeConfig
    from difforge.serve.engine import Cancelled, Engine, Job
    from difforge.serve.metrics import ServeMetrics

    engine = Engine(pipe, ServeConfig())
    engine.metrics = ServeMetrics()
    job = engine.submit(Job("generate", {"sampler": "ddim", "steps": 1000, "cfg": 3.0}, list(range(16)), [0] * 16,
                            key=("k",)))
    engine.start(warmup=False)
    while engine.running == 0:
        time.sleep(0.005)
    job.cancel()  # what a timeout or a disconnect does
    with pytest.raises(Cancelled):
        job.future.result(timeout=60)
    engine.stop()
    assert engine.metrics.sampler_steps._value.get() < 1000
