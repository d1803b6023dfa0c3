"""Model cards and pipelines for tests: a `tiny` UNet's card at a given size, framework
and conditioning, and a Pipeline around any network."""

from __future__ import annotations

import torch

from difforge.diffusion.frameworks import FrameworkSpec
from difforge.models.card import Architecture, ModelCard
from difforge.models.conditioning import ClassLabels, Unconditional
from difforge.pipeline import Pipeline


def tiny_card(size: int = 8, native: int | None = None, channels: int = 1, num_classes: int | None = None,
              framework: str = "ddpm", prediction: str | None = None, conditioning=None, class_names=None,
              **diffusion) -> ModelCard:
    if conditioning is None:
        conditioning = ClassLabels(num_classes) if num_classes else Unconditional()
    return ModelCard(Architecture.of_preset("tiny"), size, size if native is None else native, channels,
                     FrameworkSpec(framework, **diffusion), prediction, conditioning, class_names)


def pipeline(net, card: ModelCard | None = None, device: str = "cpu") -> Pipeline:
    card = card or tiny_card()
    return Pipeline(card.denoiser(net), card, device)


def random_tiny_net(conditioning, channels: int = 3, seed: int = 0):
    """(network, card): a tiny UNet for `conditioning` whose zero-initialised layers are made
    random (normal, std 0.05, from `seed`), so that every input reaches the output."""
    card = tiny_card(channels=channels, conditioning=conditioning)
    torch.manual_seed(seed)
    net = card.build_network().eval()
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return net, card

