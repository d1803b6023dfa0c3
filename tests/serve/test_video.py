"""A video model in the server: /v1/model says so, /v1/generate answers with clips (a GIF and
a row of frames per clip, or one GIF), given frames come back exactly, image-only routes refuse."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import torch
from conftest import SIZE, VIDEO_FRAMES
from PIL import Image, ImageSequence


def gif_frames(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "GIF"
        return np.stack([np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im)])


def png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def test_model_reports_clips(video_client, client):
    info = video_client.get("/v1/model").json()
    assert info["takes_clips"] is True and info["frames"] == VIDEO_FRAMES and info["fps"] == 8
    image = client.get("/v1/model").json()
    assert image["takes_clips"] is False and image["frames"] is None and image["fps"] is None


def test_generate_returns_the_pipelines_clips(video_client, video_pipe):
    r = video_client.post("/v1/generate", json={"class": 1, "n": 2, "seed": 7, "steps": 2, "sampler": "ddim"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["frames"] == VIDEO_FRAMES and body["fps"] == 8 and len(body["videos"]) == 2
    assert body["seeds"] == [7, 8] and body["labels"] == [1, 1]
    assert (body["width"], body["height"], body["channels"]) == (SIZE, SIZE, 1)
    expected, _ = video_pipe.generate_video(2, torch.tensor([1]), seeds=[7, 8], steps=2, sampler="ddim",
                                            cfg=video_pipe.default_cfg)
    for i in range(2):
        clip = expected[i, 0].numpy()  # (T, H, W)
        assert np.array_equal(gif_frames(base64.b64decode(body["videos"][i])), clip)  # the GIF: every frame, exact
        assert np.array_equal(png(body["images"][i]), np.concatenate(list(clip), axis=1))  # frames in a row
    # the same request with n = 1 and the second seed gives the second clip again
    again = video_client.post("/v1/generate", json={"class": 1, "seed": 8, "steps": 2, "sampler": "ddim"}).json()
    assert again["videos"][0] == body["videos"][1]


def test_generate_as_one_gif_or_png(video_client, client):
    req = {"n": 2, "seed": 3, "steps": 1, "sampler": "ddim"}
    r = video_client.post("/v1/generate", json=req, headers={"Accept": "image/gif"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif" and r.headers["x-seeds"] == "3,4"
    frames = gif_frames(r.content)
    assert frames.shape == (VIDEO_FRAMES, SIZE + 4, 2 * SIZE + 6)  # two clips side by side, 2 px around
    body = video_client.post("/v1/generate", json=req).json()
    first = gif_frames(base64.b64decode(body["videos"][0]))
    assert np.array_equal(frames[:, 2 : 2 + SIZE, 2 : 2 + SIZE], first)
    r = video_client.post("/v1/generate", json=req, headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    strip = np.asarray(Image.open(io.BytesIO(r.content)))
    assert np.array_equal(strip[2 : 2 + SIZE, 2 : 2 + VIDEO_FRAMES * SIZE], png(body["images"][0]))
    r = client.post("/v1/generate", json={"steps": 1}, headers={"Accept": "image/gif"})
    assert r.status_code == 406 and "image model" in r.json()["detail"]


def frame_png(value: int) -> str:
    a = np.zeros((SIZE, SIZE), np.uint8)
    a[2:6, 1:5] = value
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii"), a


def test_given_frames_come_back_exactly(video_client):
    (b0, a0), (b3, a3) = frame_png(200), frame_png(90)
    r = video_client.post("/v1/generate", json={"n": 2, "seed": 1, "steps": 2, "given": f"frames:0,{VIDEO_FRAMES - 1}",
                                                "given_frames": [b0, b3]})
    assert r.status_code == 200, r.text
    for video in r.json()["videos"]:
        clip = gif_frames(base64.b64decode(video))
        assert np.array_equal(clip[0], a0) and np.array_equal(clip[-1], a3)
    # alone, the given frames are the first ones
    r = video_client.post("/v1/generate", json={"seed": 1, "steps": 1, "given_frames": [b3]})
    assert np.array_equal(gif_frames(base64.b64decode(r.json()["videos"][0]))[0], a3)


def test_video_errors(video_client, client):
    b0, _ = frame_png(200)
    cases = [
        (video_client, "/v1/generate", {"given": "first:2", "given_frames": [b0]}, "1 image(s) for the 2 given frame"),
        (video_client, "/v1/generate", {"given": "first:9", "given_frames": [b0]}, "given 'first:9': K must be in"),
        (video_client, "/v1/generate", {"given": "first:1"}, "give one base64 image per given frame"),
        (video_client, "/v1/generate", {"given": "first:1", "given_frames": ["@@"]}, "given_frames[0]: not valid"),
        (video_client, "/v1/restore", {"image": b0}, "restore works on images; this is a video model"),
        (client, "/v1/generate", {"given": "first:1", "given_frames": [b0]}, "given: this is an image model"),
    ]
    for c, route, body, message in cases:
        r = c.post(route, json={"steps": 1, **body})
        assert r.status_code == 422 and message in r.json()["detail"], (route, body, r.text)


def test_progress_streams_rows_of_frames(video_client):
    r = video_client.post("/v1/generate", json={"seed": 2, "steps": 3, "sampler": "ddim"},
                          headers={"Accept": "text/event-stream"})
    events = [chunk for chunk in r.text.split("\n\n") if chunk.startswith("event:")]
    progress = [json.loads(e.split("data: ", 1)[1]) for e in events if e.startswith("event: progress")]
    assert progress and all(png(p["images"][0]).shape == (SIZE, VIDEO_FRAMES * SIZE) for p in progress)
    result = json.loads(events[-1].split("data: ", 1)[1])
    assert events[-1].startswith("event: result") and len(result["videos"]) == 1
