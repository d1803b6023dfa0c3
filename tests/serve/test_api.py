"""Every route of the HTTP API and every bad input, on a tiny untrained model (FastAPI TestClient)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

SIZE = 8  # the conftest model's size


@pytest.fixture()
def make_client(serve_helpers):
    return serve_helpers["make_client"]


@pytest.fixture()
def make_model_dir(serve_helpers):
    return serve_helpers["make_model_dir"]


def png_array(b64_or_bytes) -> np.ndarray:
    data = base64.b64decode(b64_or_bytes) if isinstance(b64_or_bytes, str) else b64_or_bytes
    return np.asarray(Image.open(io.BytesIO(data)))


def png_b64(arr: np.ndarray, mode: str = "L") -> str:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def left_half_mask(size: int = SIZE) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[:, : size // 2] = 255
    return m


def generate(client, **body):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- generate
def test_generate_json_matches_the_pipeline_and_returns_seeds(client, pipe):
    out = generate(client, n=3, **{"class": "two"}, sampler="ddim", steps=4, cfg=2.0, seed=11)
    assert out["seeds"] == [11, 12, 13] and out["labels"] == [2, 2, 2]
    assert (out["width"], out["height"], out["channels"], out["steps"], out["cfg"]) == (SIZE, SIZE, 1, 4, 2.0)
    images = np.stack([png_array(b) for b in out["images"]])
    expected, _ = pipe.generate(labels=torch.tensor([2, 2, 2]), sampler="ddim", steps=4, cfg=2.0, seed=11)
    assert np.array_equal(images, expected[:, 0].numpy())  # an independent call of the library


def test_each_returned_seed_reproduces_its_image(client):
    out = generate(client, labels=[0, 1, "two"], steps=3, seed=40)
    assert out["labels"] == [0, 1, 2]
    again = generate(client, **{"class": 1}, n=1, steps=3, seed=out["seeds"][1])
    assert again["images"][0] == out["images"][1]


def test_random_seed_is_reported(client):
    a, b = generate(client, steps=2), generate(client, steps=2)
    assert a["seeds"] != b["seeds"]
    assert generate(client, steps=2, seed=a["seeds"][0])["images"] == a["images"]


def test_unconditional_request_on_a_conditional_model_uses_the_null_label(client, pipe):
    out = generate(client, n=2, steps=3, seed=5)
    assert out["labels"] == [None, None]
    x, _ = pipe.generate(labels=torch.full((2,), pipe.num_classes), steps=3, seed=5)  # the default sampler
    assert np.array_equal(np.stack([png_array(b) for b in out["images"]]), x[:, 0].numpy())


def test_generate_png_grid(client):
    r = client.post("/v1/generate", json={"n": 3, "steps": 2, "seed": 1}, headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-seeds"] == "1,2,3"
    grid = png_array(r.content)
    assert grid.shape == (SIZE + 4, 3 * (SIZE + 2) + 2)  # one row of 3, 2-pixel padding
    single = png_array(generate(client, n=1, steps=2, seed=2)["images"][0])
    assert np.array_equal(grid[2 : 2 + SIZE, 12 : 12 + SIZE], single)


def test_generate_event_stream_ends_in_the_same_result(client):
    body = {"n": 2, "steps": 5, "seed": 8, "class": 1}
    r = client.post("/v1/generate", json=body, headers={"Accept": "text/event-stream"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [(blk.split("\n")[0][7:], json.loads(blk.split("\n")[1][6:])) for blk in r.text.strip().split("\n\n")]
    kinds = [k for k, _ in events]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"progress"} and len(kinds) == 6  # 5 steps, 5 previews
    steps = [e["step"] for k, e in events[:-1]]
    assert steps == [1, 2, 3, 4, 5] and all(len(e["images"]) == 2 for _, e in events[:-1])
    first = png_array(events[0][1]["images"][0]).astype(float)
    assert first.std() > 20  # the first preview is mostly noise
    assert events[-1][1]["images"] == generate(client, **body)["images"]


# ---------------------------------------------------------------- inpaint, restore
def test_inpaint_json_keeps_the_unmasked_pixels(client):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIZE, SIZE))
    out = client.post("/v1/inpaint", json={"image": png_b64(image), "mask": png_b64(left_half_mask()),
                                           "steps": 4, "seed": 3, "n": 2, "method": "blend"})
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["seeds"] == [3, 4] and body["sampler"] == "ddpm"
    for b in body["images"]:
        result = png_array(b)
        assert np.array_equal(result[:, SIZE // 2 :], image[:, SIZE // 2 :])  # kept exactly
        assert not np.array_equal(result[:, : SIZE // 2], image[:, : SIZE // 2])  # filled anew


def test_inpaint_multipart_upload_matches_json(client):
    image = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 3) % 256
    img_b64, mask_b64 = png_b64(image), png_b64(left_half_mask())
    opts = {"steps": "3", "seed": "9", "class": "1", "jump_length": "2", "resample": "2"}
    files = {"image": ("x.png", base64.b64decode(img_b64), "image/png"),
             "mask": ("m.png", base64.b64decode(mask_b64), "image/png")}
    a = client.post("/v1/inpaint", files=files, data=opts)
    b = client.post("/v1/inpaint", json={"image": img_b64, "mask": mask_b64, **{k: int(v) for k, v in opts.items()}})
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    assert a.json()["images"] == b.json()["images"] and a.json()["labels"] == [1]


def test_inpaint_transparent_mask_counts_opaque_pixels():
    from difforge.serve.codec import decode_mask

    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[2:4, 3:6] = (255, 0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    mask = decode_mask(buf.getvalue(), SIZE)
    assert mask.shape == (1, 1, SIZE, SIZE) and mask.sum() == 6 and mask[0, 0, 2:4, 3:6].all()


def test_restore_noises_and_denoises(client, pipe):
    image = np.full((SIZE, SIZE), 128)
    r = client.post("/v1/restore", json={"image": png_b64(image), "strength": 0.3, "steps": 10, "seed": 2})
    assert r.status_code == 200, r.text
    from difforge.tasks import restore

    x = torch.tensor(image, dtype=torch.float32)[None, None] / 127.5 - 1
    from difforge.defaults import DEFAULT_SAMPLER  # the request's default sampler

    expected = pipe.to_images(restore(pipe, x, 0.3, steps=10, seed=2, sampler=DEFAULT_SAMPLER))
    assert np.array_equal(png_array(r.json()["images"][0]), expected[0, 0].numpy())


# ---------------------------------------------------------------- model, health, metrics, page, schema
def test_model_describes_the_model(client):
    m = client.get("/v1/model").json()
    assert m["preset"] == "tiny" and m["class_names"] == ["zero", "one", "two"] and m["num_classes"] == 3
    assert (m["image_size"], m["channels"], m["training_steps"]) == (SIZE, 1, 0)
    assert m["parameters"] > 1000 and "ddim" in m["samplers"] and m["limits"]["max_n"] == 8
    from difforge.defaults import DEFAULT_SAMPLER

    assert m["default_sampler"] == DEFAULT_SAMPLER in m["samplers"]  # the page preselects it


def test_model_reports_recorded_metrics(tmp_path, pipe, make_client, make_model_dir):
    d = make_model_dir(tmp_path / "m")
    (d / "metrics.jsonl").write_text('{"step": 5, "loss": 0.5}\n{"step": 10, "loss": 0.25}\n'
                                     '{"step": 10, "val_loss": 0.3}\n{"tru')
    (d / "eval").mkdir()
    (d / "eval" / "report.json").write_text(json.dumps({"n": 100, "metrics": {"classifier": {"fd": 4.5, "kid": 0.1}}}))
    with make_client(pipe, d) as c:
        m = c.get("/v1/model").json()["metrics"]
    assert m["training"] == {"step": 10, "loss": 0.25, "val_loss": 0.3}
    assert m["evaluation"] == {"n": 100, "classifier": {"fd": 4.5, "kid": 0.1}}


def test_health_and_readiness(client, pipe, model_dir, make_client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    cold = make_client(pipe, model_dir)  # no lifespan: the worker never started
    r = cold.get("/readyz")
    assert r.status_code == 503 and r.json() == {"ready": False, "reason": "starting", "queue_depth": 0,
                                                 "queue_size": 32, "running_images": 0}


def test_metrics_count_requests_images_and_steps(pipe, model_dir, make_client):
    with make_client(pipe, model_dir) as c:
        generate(c, n=3, steps=4, seed=0)
        c.post("/v1/generate", json={"n": 0})
        text = c.get("/metrics").text
    assert 'difforge_requests_total{method="POST",route="/v1/generate",status="200"} 1.0' in text
    assert 'difforge_requests_total{method="POST",route="/v1/generate",status="422"} 1.0' in text
    assert 'difforge_images_generated_total{kind="generate"} 3.0' in text
    assert "difforge_sampler_steps_total 4.0" in text  # the warm-up is not counted
    assert 'difforge_request_seconds_bucket{le="+Inf",route="/v1/generate"} 2.0' in text
    assert "difforge_queue_depth 0.0" in text


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "/static/app.js" in r.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_openapi_documents_every_route(client):
    spec = client.get("/openapi.json").json()
    assert ({"/v1/generate", "/v1/inpaint", "/v1/restore", "/v1/model", "/healthz", "/readyz", "/metrics"}
            <= set(spec["paths"]))
    body = spec["paths"]["/v1/inpaint"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
