"""Model cards and pipelines for tests: a `tiny` UNet's card at a given size, framework
and conditioning, and a Pipeline around any network."""

from __future__ import annotations

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
