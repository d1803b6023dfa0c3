"""Tiny pipelines for the task tests: an untrained `tiny` UNet, and a closed-form one."""

import pytest
import torch
from torch import nn

from difforge.diffusion import make_schedule
from difforge.models import build_model
from model_cards import pipeline, tiny_card


@pytest.fixture(scope="session")
def tiny_pipe():
    torch.manual_seed(0)
    net = build_model("tiny", in_channels=1, num_classes=None).eval()
    return pipeline(net, tiny_card())


@pytest.fixture(scope="session")
def tiny_cond_pipe():
    torch.manual_seed(1)
    net = build_model("tiny", in_channels=1, num_classes=3).eval()
    return pipeline(net, tiny_card(num_classes=3))


@pytest.fixture(scope="session")
def steered_cond_pipe():
    """Like tiny_cond_pipe with a random (not zero-initialised) output layer, so that the
    label reaches the output."""
    torch.manual_seed(3)
    net = build_model("tiny", in_channels=1, num_classes=3).eval()
    with torch.no_grad():
        for p in net.out_conv.parameters():
            p.normal_(0, 0.05)
    return pipeline(net, tiny_card(num_classes=3))


@pytest.fixture(scope="session")
def padded_pipe():
    """Native 7x7 images padded to the model's 8x8 (one pixel right and bottom)."""
    torch.manual_seed(2)
    net = build_model("tiny", in_channels=1, num_classes=None).eval()
    return pipeline(net, tiny_card(size=8, native=7))


@pytest.fixture(scope="session")
def make_sr_pipe():
    """Builds an untrained SR3 `tiny` model (x2, conditioned on the upsampled image)."""
    from difforge.models.conditioning import LowResImage

    def make(size=8, native=8):
        torch.manual_seed(0)
        card = tiny_card(size, native, conditioning=LowResImage(2))
        return pipeline(card.build_network().eval(), card)

    return make


class GaussianEps(nn.Module):
    """The exact eps-prediction for data x0 ~ N(0, sd^2) per pixel: with x = x0 + sigma n,
    D(x, sigma) = x sd^2 / (sigma^2 + sd^2), so eps = x sigma / (sigma^2 + sd^2)."""

    num_classes = None

    def __init__(self, schedule, sd: float):
        super().__init__()
        self.schedule, self.sd = schedule, sd

    def forward(self, x_vp, t, cond=None):
        sigma = self.schedule.t_to_sigma(t.double()).view(-1, 1, 1, 1)
        x = x_vp.double() * (1 + sigma**2).sqrt()
        return (x * sigma / (sigma**2 + self.sd**2)).to(x_vp.dtype)


@pytest.fixture(scope="session")
def gaussian_pipe():
    return pipeline(GaussianEps(make_schedule("linear", 1000), 0.3), tiny_card())
