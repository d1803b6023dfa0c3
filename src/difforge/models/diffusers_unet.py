"""diffusers' `UNet2DModel` as a difforge network: `net(x, c_noise, cond=None)`.

The architecture kwargs of a model card with preset "diffusers-unet" are the
`UNet2DModel` config (`block_out_channels`, `down_block_types`, ...); the input and
output channels and the class embeddings come from the card, as for every preset. So
a model imported from diffusers (`difforge import`) rebuilds from its card, and one
trained in difforge with this preset exports to a folder diffusers loads
(`difforge export --format diffusers`).

diffusers is an optional dependency (`pip install 'difforge[interop]'`): it is imported
when such a network is built, never when difforge is.

The interface: `c_noise` is the DDPM process's (fractional) timestep, which UNet2DModel's
sinusoidal ("positional") time embedding takes as it is; `cond` is the class labels
(`num_class_embeds` rows: `num_classes`, plus the null class of classifier-free guidance
unless the card says the model learned none) or, for SR3, the conditioning image,
concatenated to the input channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

# UNet2DModel config keys that describe the file, not the network
_FILE_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")
# keys set from the card (channels, conditioning), never from the architecture kwargs
_CARD_KEYS = ("in_channels", "out_channels")


def diffusers_missing() -> str | None:
    """Why the diffusers networks cannot be built here, or None when they can."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return "the diffusers-unet model needs diffusers: pip install 'difforge[interop]'"
    return None


def unet_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """A UNet2DModel config (as `config.json` holds it) as architecture kwargs: without
    the file's own keys and the channels, which the card sets."""
    return {k: v for k, v in config.items() if k not in _FILE_KEYS + _CARD_KEYS}


class DiffusersUNet(nn.Module):
    """A `diffusers.UNet2DModel` (`self.unet`) behind difforge's network interface.

    `num_classes`: real classes; the network has `num_class_embeds` label embeddings,
    by default `num_classes + 1` (the last is the null class). `cond_channels` > 0 adds
    input channels for an SR3 conditioning image. `config`: the UNet2DModel config."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int | None, cond_channels: int = 0,
                 **config: Any):
        super().__init__()
        missing = diffusers_missing()
        if missing:
            raise ImportError(missing)
        from diffusers import UNet2DModel

        config = unet_kwargs(config)
        embeds = config.pop("num_class_embeds", None)
        if num_classes:
            embeds = num_classes + 1 if embeds is None else int(embeds)
            if embeds not in (num_classes, num_classes + 1):
                raise ValueError(f"num_class_embeds {embeds} does not fit {num_classes} classes "
                                 f"(expected {num_classes} or {num_classes + 1} with the null class)")
        elif embeds:
            raise ValueError(f"num_class_embeds {embeds} given for a model without classes")
        if config.get("class_embed_type") is not None:
            raise ValueError(f"class_embed_type {config['class_embed_type']!r} is not supported; "
                             "class labels use num_class_embeds")
        if config.get("time_embedding_type", "positional") != "positional":
            raise ValueError(f"time_embedding_type {config['time_embedding_type']!r} is not supported: difforge's "
                             "DDPM networks take the fractional timestep in a positional embedding")
        self.cond_channels = int(cond_channels)
        self.num_classes = num_classes
        self.num_class_embeds = embeds if num_classes else None
        self.unet = UNet2DModel.from_config({**config, "in_channels": in_channels + self.cond_channels,
                                             "out_channels": out_channels, "num_class_embeds": self.num_class_embeds})

    @property
    def size_multiple(self) -> int:
        """Height and width must be divisible by this: one halving per down block but the last."""
        return 2 ** (len(self.unet.config.down_block_types) - 1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        labels = None
        if self.cond_channels:
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif self.num_class_embeds:
            if cond is None:
                raise ValueError("this class-conditional network needs class labels")
            if int(cond.max()) >= self.num_class_embeds or int(cond.min()) < 0:
                raise ValueError(f"class labels must be in 0..{self.num_class_embeds - 1} for this network "
                                 f"(got {int(cond.min())}..{int(cond.max())})")
            labels = cond
        return self.unet(x, c_noise.to(x.device), class_labels=labels).sample
