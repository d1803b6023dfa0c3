"""bits/dim (`evaluate --bpd`) for a model of every framework: the probability-flow ODE
through the framework's denoiser; the variational bound only where it exists (DDPM eps)."""

from __future__ import annotations

import math

import pytest
import torch

from difforge.diffusion.frameworks import FRAMEWORKS
from difforge.eval.bpd import test_set_bits_per_dim as bits_per_dim_of
from difforge.models import build_model
from model_cards import pipeline, tiny_card


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bpd_runs_for_every_framework(framework):
    torch.manual_seed(0)
    net = build_model("tiny", in_channels=1, num_classes=None).eval()
    images = torch.randint(0, 256, (2, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    out = bits_per_dim_of(pipeline(net, tiny_card(framework=framework)), images, timesteps=4, ode_steps=3)  # ode=False
    if framework == "ddpm":  # the bound only, as asked
        assert "ode" not in out and math.isfinite(out["vlb"]["large"]["bpd"])
    else:  # no bound for these: the ODE runs without being asked
        assert "vlb" not in out and out["ode"]["nfe"] == 12 and math.isfinite(out["ode"]["bpd"])
