"""A tiny randomly initialised model directory and a TestClient serving it; a tiny text-to-image
run trained for two steps on coloured squares, and a TestClient serving that."""

from __future__ import annotations

import json

import pytest
import torch

SIZE, CLASSES = 8, ("zero", "one", "two")


def make_model_dir(path, num_classes: int | None = len(CLASSES), channels: int = 1, size: int = SIZE, seed: int = 0):
    """model.safetensors + config.json of an untrained `tiny` UNet (what `difforge export` writes)."""
    from safetensors.torch import save_file

    from difforge.models import build_model

    torch.manual_seed(seed)
    net = build_model("tiny", in_channels=channels, num_classes=num_classes)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path / "model.safetensors")
    info = {
        "format": "difforge-model", "version": 1,
        "model": {"preset": "tiny", "in_channels": channels, "num_classes": num_classes},
        "diffusion": {"timesteps": 1000, "schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
        "prediction": "eps", "image_size": size, "native_size": size, "channels": channels,
        "class_names": list(CLASSES[:num_classes]) if num_classes else None, "dataset": "synthetic",
        "step": 0, "weights": "ema",
    }
    (path / "config.json").write_text(json.dumps(info))
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="session")
def pipe(model_dir):
    from difforge.pipeline import load_pipeline

    return load_pipeline(model_dir)


TEXT_COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def make_text_run(root, steps: int = 2):
    """A text-to-image run (scratch text encoder, max_tokens 32) trained for `steps` steps on
    16 RGB 8x8 squares captioned "a red square" / "a blue square"; its card's example prompts
    are those two captions."""
    import numpy as np
    from PIL import Image

    from difforge.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from difforge.train.loop import train

    data = root / "captioned"
    data.mkdir(parents=True)
    lines = []
    for i in range(16):
        name = list(TEXT_COLOURS)[i % 2]
        a = np.zeros((SIZE, SIZE, 3), np.uint8)
        a[2:6, 2:6] = TEXT_COLOURS[name]
        Image.fromarray(a).save(data / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": f"a {name} square"}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    cfg = RunConfig(data=DataConfig(dataset="folder", path=str(data), val_fraction=0.0),
                    model=ModelConfig(preset="tiny", text_encoder="scratch", caption_dropout=0.2, max_tokens=32),
                    train=TrainConfig(max_steps=steps, batch_size=8, checkpoint_every=0, sample_every=0, log_every=1,
                                      ema_warmup=1, lr=1e-3, device="cpu", final_grid=False),
                    out=str(root / "run"))
    train(cfg, progress=False)
    return root / "run"


VIDEO_FRAMES = 4


def make_video_model_dir(path, seed: int = 0):
    """model.safetensors + config.json of an untrained class-conditional `stunet-tiny` video
    model: clips of VIDEO_FRAMES frames of SIZE x SIZE, classes CLASSES, 50 DDPM timesteps."""
    from safetensors.torch import save_file

    from difforge.diffusion.frameworks import FrameworkSpec
    from difforge.models.card import Architecture, ModelCard
    from difforge.models.conditioning import VideoFrames

    card = ModelCard(Architecture.of_preset("stunet-tiny"), SIZE, SIZE, 1, FrameworkSpec("ddpm", timesteps=50), None,
                     VideoFrames(VIDEO_FRAMES, len(CLASSES)), CLASSES, dataset="synthetic", step=0, weights="ema")
    torch.manual_seed(seed)
    net = card.build_network()
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(card.to_dict()))
    return path


@pytest.fixture(scope="session")
def video_model_dir(tmp_path_factory):
    return make_video_model_dir(tmp_path_factory.mktemp("serve-video") / "model")


@pytest.fixture(scope="session")
def video_pipe(video_model_dir):
    from difforge.pipeline import load_pipeline

    return load_pipeline(video_model_dir)


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory):
    return make_text_run(tmp_path_factory.mktemp("serve-text"))


@pytest.fixture(scope="session")
def text_pipe(text_model_dir):
    from difforge.pipeline import load_pipeline

    return load_pipeline(text_model_dir)


BASE_URL = "http://127.0.0.1:8000"  # a name the server answers to (its Host check)


def make_client(pipe, model_dir, warmup: bool = True, **limits):
    from fastapi.testclient import TestClient

    from difforge.serve import ServeConfig, create_app

    return TestClient(create_app(pipe, model_dir, ServeConfig(**limits), warmup=warmup), base_url=BASE_URL)


@pytest.fixture(scope="module")
def client(pipe, model_dir):
    with make_client(pipe, model_dir, max_n=8, max_steps=50, max_body_bytes=64 * 1024) as c:
        yield c


@pytest.fixture(scope="module")
def text_client(text_pipe, text_model_dir):
    with make_client(text_pipe, text_model_dir, max_n=8, max_steps=50, max_body_bytes=64 * 1024) as c:
        yield c


@pytest.fixture(scope="module")
def video_client(video_pipe, video_model_dir):
    with make_client(video_pipe, video_model_dir, max_n=8, max_steps=50, max_body_bytes=64 * 1024) as c:
        yield c


@pytest.fixture(scope="session")
def serve_helpers():
    """The helpers above, for tests that build their own model or client."""
    return {"size": SIZE, "make_client": make_client, "make_model_dir": make_model_dir}
