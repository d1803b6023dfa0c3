"""The one name -> model registry: presets and `build_model`."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import nn

from difforge.models.diffusers_unet import DiffusersUNet
from difforge.models.rvd import RVDNet
from difforge.models.stunet import STUNet
from difforge.models.unet import UNet
from difforge.models.unet_seed import SeedUNet


@dataclass(frozen=True)
class Preset:
    """A model class with its architecture keyword arguments and a one-line description.

    `in_channels`, `out_channels` and `num_classes` come from the data, not the preset.
    """

    cls: type[nn.Module]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))


PRESETS: dict[str, Preset] = {
    # Sized by benchmarks/model_sizes.py: forward + backward + AdamW, batch 128, 28x28x1.
    "unet": Preset(
        UNet,
        dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(2,)),
        "efficient UNet, the CPU default (1.2M params, ~220 img/s fp32 training at 28x28 on 2 cores)",
    ),
    "unet-large": Preset(
        UNet,
        dict(base_channels=128, channel_mults=(1, 2, 2), num_res_blocks=2, attention_levels=(1, 2), dropout=0.1),
        "a bigger efficient UNet for GPUs (~30M params)",
    ),
    "unet-text": Preset(
        UNet,
        dict(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(1, 2), num_heads=4),
        "a small UNet for text-to-image at 32x32 RGB on CPU (4.9M params, +0.9M with the default scratch text "
        "encoder; about a quarter of unet's training throughput): self-attention, and cross-attention to the text, "
        "at levels 1 and 2 and in the middle",
    ),
    "unet-seed": Preset(
        SeedUNet,
        dict(base_channels=64, time_dim=256),
        "the seed article's UNet: DoubleConv blocks, attention after every block",
    ),
    "tiny": Preset(
        UNet,
        dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), num_heads=2),
        "a very small UNet for fast tests (attention in the middle block only)",
    ),
    "stunet": Preset(
        STUNet,
        dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(2,), num_heads=4,
             time_down=True, max_frames=16),
        "space-time UNet for clips (B, C, T, H, W) (Lumiere / Video Diffusion Models): per-frame convolutions and "
        "attention, temporal convolutions and attention, down- and upsampling in space and time; ~1.5M params",
    ),
    "stunet-space-down": Preset(
        STUNet,
        dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(2,), num_heads=4,
             time_down=False, max_frames=16),
        "stunet without temporal down- and upsampling (every level keeps all frames)",
    ),
    "stunet-tiny": Preset(
        STUNet,
        dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
             time_down=True, max_frames=16),
        "a very small space-time UNet for fast tests",
    ),
    "rvd": Preset(
        RVDNet,
        dict(context=4, predictor_width=32, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
             attention_levels=(2,), num_heads=4),
        "residual video diffusion (Yang et al. 2022): a next-frame predictor from the last 4 frames and a UNet "
        "diffusion model of the scaled residual, rolled out frame by frame (docs/video.md); ~1.2M params",
    ),
    "rvd-tiny": Preset(
        RVDNet,
        dict(context=2, predictor_width=8, predictor_dilations=(1, 2), base_channels=8, channel_mults=(1, 2),
             num_res_blocks=1, attention_levels=(), num_heads=2),
        "a very small RVD model for fast tests",
    ),
    # kwargs: a diffusers UNet2DModel config; an imported model records its own (`difforge import`)
    "diffusers-unet": Preset(
        DiffusersUNet,
        dict(block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8,
             attention_head_dim=8),
        "diffusers' UNet2DModel (needs difforge[interop]); exports to and imports from diffusers",
    ),
}
# the networks that take an SR3 conditioning image as extra input channels (RVDNet: a video card's frame channels,
# which it replaces by its own context)
TAKES_COND_IMAGE = (UNet, DiffusersUNet, STUNet, RVDNet)
# the networks that take text (cross-attention to tokens, a pooled vector, a scratch text encoder)
TAKES_TEXT = (UNet,)


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def build_model(
    preset: str, *, in_channels: int, num_classes: int | None, out_channels: int | None = None, cond_channels: int = 0,
    kwargs: Mapping[str, Any] | None = None, context_dim: int | None = None, pooled_dim: int | None = None,
    text_encoder: Mapping[str, Any] | None = None, image_embed_dim: int | None = None, image_embed_tokens: int = 4,
) -> nn.Module:
    """Build the preset's model; `out_channels` defaults to `in_channels`. `cond_channels`
    > 0 adds image-conditioning input channels (UNet presets only). `context_dim`,
    `pooled_dim`, `text_encoder`: text conditioning (UNet presets only; see `UNet`), as
    `difforge.models.conditioning.TextPrompts.network_kwargs` gives them; `image_embed_dim`,
    `image_embed_tokens`: a CLIP image embedding (unCLIP's decoder; UNet presets only). `kwargs`: the
    architecture's keyword arguments as a model card recorded them (default: the preset's)."""
    p = _preset(preset)
    out = in_channels if out_channels is None else out_channels
    kwargs = dict(p.kwargs if kwargs is None else kwargs)
    if cond_channels:
        if p.cls not in TAKES_COND_IMAGE:
            raise ValueError(f"model {preset!r} cannot take a conditioning image; use a UNet preset such as 'unet'")
        kwargs["cond_channels"] = cond_channels
    if context_dim or pooled_dim or text_encoder is not None:
        if p.cls not in TAKES_TEXT:
            raise ValueError(f"model {preset!r} cannot take text; use a UNet preset such as 'unet-text'")
        kwargs.update(context_dim=context_dim, pooled_dim=pooled_dim,
                      text_encoder=None if text_encoder is None else dict(text_encoder))
    if image_embed_dim:
        if p.cls not in TAKES_TEXT:
            raise ValueError(f"model {preset!r} cannot take a CLIP image embedding; use a UNet preset such as 'unet'")
        kwargs.update(image_embed_dim=image_embed_dim, image_embed_tokens=image_embed_tokens)
    return p.cls(in_channels, out, num_classes, **kwargs)


# what the data, the conditioning and the card give a network, never its architecture settings
NOT_ARCHITECTURE = ("in_channels", "out_channels", "num_classes", "cond_channels", "context_dim", "pooled_dim",
                    "text_encoder")


def architecture_kwargs(preset: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The preset's keyword arguments with `overrides` (a config's `model.architecture`) on top."""
    return {**_preset(preset).kwargs, **(overrides or {})}


def check_architecture(preset: str, overrides: Mapping[str, Any]) -> None:
    """ValueError (one line) unless `overrides` are architecture arguments the preset's
    network takes, with values it can be built with (built on the meta device: no weights)."""
    import inspect

    p = _preset(preset)
    params = inspect.signature(p.cls.__init__).parameters
    allowed = sorted(k for k in params if k != "self" and k not in NOT_ARCHITECTURE
                     and params[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"{unknown} are not arguments of model {preset!r} ({p.cls.__name__}); expected some of "
                         f"{allowed}")
    try:
        with torch.device("meta"):
            build_model(preset, in_channels=1, num_classes=None, kwargs=architecture_kwargs(preset, overrides))
    except (TypeError, ValueError, AssertionError, IndexError, KeyError, ZeroDivisionError) as e:
        raise ValueError(f"model {preset!r} cannot be built with {dict(overrides)} "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def takes_clips(preset: str) -> bool:
    """Whether the preset's network works on clips (B, C, T, H, W) (a video model)."""
    return bool(getattr(_preset(preset).cls, "takes_clips", False))


def size_multiple(preset: str, overrides: Mapping[str, Any] | None = None) -> int:
    """The number that the preset's input height and width must be divisible by (with a
    config's `model.architecture` `overrides`)."""
    with torch.device("meta"):  # builds the module structure without allocating weights
        return build_model(preset, in_channels=1, num_classes=None,
                           kwargs=architecture_kwargs(preset, overrides)).size_multiple
