"""The streamed preview shows the sampler's state in the model's own frame: s(sigma) x,
the process's scale (VP: x / sqrt(1 + sigma^2); VE and EDM: x itself)."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from difforge.serve.config import ServeConfig
from difforge.serve.engine import Engine, Job
from model_cards import pipeline, tiny_card


@pytest.mark.parametrize("framework, scale", [
    ("ddpm", lambda s: 1 / math.sqrt(1 + s * s)), ("vp-sde", lambda s: 1 / math.sqrt(1 + s * s)),
    ("ve-sde", lambda s: 1.0), ("edm", lambda s: 1.0),
])
def test_preview_uses_the_process_scaling(framework, scale):
    card = tiny_card(framework=framework)
    pipe = pipeline(card.build_network().eval(), card)
    shown = []
    job = Job("generate", {}, [0, 1], on_progress=shown.append)
    on_step = Engine(pipe, ServeConfig(preview_frames=1))._callback([job], [(0, 2)], steps=1)
    x = torch.linspace(-3, 3, 128).view(2, 1, 8, 8)
    on_step({"i": 0, "x": x, "sigma": 2.0})
    got = np.stack([np.array(Image.open(io.BytesIO(base64.b64decode(p)))) for p in shown[0]["images"]])
    expected = pipe.to_images(x * scale(2.0))[:, 0].numpy()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # rounding of the scaling only
