"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022), and its files.

`KLAutoencoder` maps images in model space ([-1, 1], (B, C, S, S)) to a diagonal Gaussian
over latents (B, z, S/f, S/f) and latents back to images; f = 2 ** (levels - 1). Diffusion
then runs on `scale * z`, where `scale` is 1 / the standard deviation of latents drawn
from the posteriors of training images (measured, and stored with the autoencoder: Stable
Diffusion's 0.18215 is only its own autoencoder's value).

On disk an autoencoder is a folder holding `autoencoder.json` (`AutoencoderCard`: the
architecture, the scale, the image size, how it was trained and what it measured) and
`autoencoder.safetensors`. `difforge train-autoencoder` writes one; a latent diffusion run
keeps a copy in `RUN/autoencoder/`, and an exported latent model carries it the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from difforge.models.layers import check_size, group_norm

FORMAT = "difforge-autoencoder"
VERSION = 1
CARD_FILE, WEIGHTS_FILE = "autoencoder.json", "autoencoder.safetensors"
LOGVAR_RANGE = (-30.0, 20.0)  # the posterior's log-variance is clamped here (as LDM's)
# The log-variance head starts here (posterior std 0.02), not at 0 (std 1): with LDM's KL
# weight of 1e-6 the encoder takes tens of thousands of steps to shrink unit noise, and a
# short CPU training would spend itself learning to decode through it (blurred output).
LOGVAR_INIT = -8.0


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with replicate padding: images on a flat background (-1, black)
    would see zero padding as a grey frame, and encode their border differently from their
    middle; with replicated edges a flat background gets one latent everywhere."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode="replicate")


class _Res(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual connection (no time input)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(group_norm(cin), nn.SiLU(), _conv(cin, cout),
                                  group_norm(cout), nn.SiLU(), _conv(cout, cout))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class KLAutoencoder(nn.Module):
    """Convolutional encoder -> N(mean, exp(logvar)) over latents -> convolutional decoder.

    Args:
        channels: image channels.
        latent_channels: z, the latent's channels (LDM: 3 or 4).
        base_channels, channel_mults: widths per level; `len(channel_mults) - 1` stride-2
            downsamplings give the factor f.
        num_res_blocks: residual blocks per level, in the encoder and in the decoder.
    """

    def __init__(self, channels: int = 3, latent_channels: int = 4, *, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2), num_res_blocks: int = 1):
        super().__init__()
        if channels < 1 or latent_channels < 1 or base_channels < 1 or num_res_blocks < 0 or not channel_mults:
            raise ValueError("an autoencoder needs channels, latent_channels, base_channels >= 1 and one level")
        self.channels, self.latent_channels = channels, latent_channels
        self.factor = 2 ** (len(channel_mults) - 1)
        widths = [base_channels * m for m in channel_mults]

        enc: list[nn.Module] = [_conv(channels, widths[0])]
        ch = widths[0]
        for level, w in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(_Res(ch, w))
                ch = w
            if level < len(widths) - 1:
                enc.append(_conv(ch, ch, stride=2))
        enc += [_Res(ch, ch), group_norm(ch), nn.SiLU(), _conv(ch, 2 * latent_channels)]
        with torch.no_grad():
            enc[-1].bias[latent_channels:].fill_(LOGVAR_INIT)
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [_conv(latent_channels, ch), _Res(ch, ch)]
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                dec.append(_Res(ch, widths[level]))
                ch = widths[level]
            if level > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(ch, ch)]
        dec += [group_norm(ch), nn.SiLU(), _conv(ch, channels)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, S, S) in [-1, 1] -> the posterior's mean and log-variance (B, z, S/f, S/f)."""
        check_size(x, self.factor)
        if x.shape[1] != self.channels:
            raise ValueError(f"this autoencoder takes {self.channels}-channel images, got {x.shape[1]} channels")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, z, h, w) -> images (B, C, f h, f w), unclamped."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction from a posterior sample, mean, logvar)."""
        mean, logvar = self.encode(x)
        return self.decode(posterior_sample(mean, logvar, generator)), mean, logvar


def posterior_sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """z = mean + exp(logvar / 2) * n, n ~ N(0, I) drawn from `generator` (on the CPU, so a
    seed gives the same z on every device)."""
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device, mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, summed over the latent's elements (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


@dataclass(frozen=True)
class AutoencoderCard:
    """An autoencoder's description: how to rebuild it (`kwargs` of `KLAutoencoder`), the
    latent `scale`, the pixel `image_size` it works at (the data's `native_size` padded to
    it), and what training recorded (`dataset`, `step`, `metrics` such as PSNR and FD, and
    `training`, the settings it trained with)."""

    kwargs: Mapping[str, Any]
    scale: float
    image_size: int
    native_size: int
    dataset: str | None = None
    step: int | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.scale > 0 and self.scale == self.scale and self.scale != float("inf")):
            raise ValueError(f"latent scale must be a positive finite number, got {self.scale!r}")
        object.__setattr__(self, "kwargs", {k: tuple(v) if isinstance(v, list) else v for k, v in self.kwargs.items()})
        object.__setattr__(self, "metrics", dict(self.metrics))
        object.__setattr__(self, "training", dict(self.training))
        if self.image_size < 1 or self.native_size < 1 or self.native_size > self.image_size:
            raise ValueError(f"bad sizes: native {self.native_size} in an image of {self.image_size}")

    def build(self) -> KLAutoencoder:
        ae = KLAutoencoder(**self.kwargs)
        if self.image_size % ae.factor:
            raise ValueError(f"image size {self.image_size} is not a multiple of the autoencoder's factor {ae.factor}")
        return ae

    @property
    def channels(self) -> int:
        return int(self.kwargs.get("channels", 3))

    @property
    def latent_channels(self) -> int:
        return int(self.kwargs.get("latent_channels", 4))

    @property
    def factor(self) -> int:
        return 2 ** (len(self.kwargs.get("channel_mults", (1, 2))) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.factor

    def to_dict(self) -> dict[str, Any]:
        kw = {k: list(v) if isinstance(v, tuple) else v for k, v in self.kwargs.items()}
        return {"format": FORMAT, "version": VERSION, "kwargs": kw, "scale": self.scale,
                "image_size": self.image_size, "native_size": self.native_size, "dataset": self.dataset,
                "step": self.step, "metrics": dict(self.metrics), "training": dict(self.training)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AutoencoderCard:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError("not a difforge autoencoder description")
        if d.get("version", 1) != VERSION:
            raise ValueError(f"autoencoder description version {d.get('version')!r} is newer than this difforge "
                             f"reads ({VERSION}); upgrade difforge")
        try:
            return cls(d["kwargs"], float(d["scale"]), int(d["image_size"]), int(d["native_size"]), d.get("dataset"),
                       d.get("step"), d.get("metrics") or {}, d.get("training") or {})
        except KeyError as e:
            raise ValueError(f"autoencoder description lacks {e.args[0]!r}") from None
        except TypeError as e:
            raise ValueError(f"bad autoencoder description: {e}") from None


def is_autoencoder_dir(path: str | Path) -> bool:
    return (Path(path) / CARD_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def save_weights(ae: nn.Module, path: str | Path) -> Path:
    """Write the autoencoder's weights to `path` (safetensors) through a temporary file, so
    `path` is never half written."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}, str(tmp))
    tmp.replace(path)
    return path


def load_weights(card: AutoencoderCard, path: str | Path) -> KLAutoencoder:
    """The autoencoder `card` describes with the weights of `path` (eval mode, frozen);
    ValueError in one line for weights that are missing, damaged or of another shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        ae = card.build()
        ae.load_state_dict(load_file(str(path)))
    except (RuntimeError, OSError, ValueError, TypeError, SafetensorError) as e:
        raise ValueError(f"cannot load autoencoder weights {path}: {str(e).splitlines()[0]}") from None
    return ae.eval().requires_grad_(False)


def save_autoencoder(ae: KLAutoencoder, card: AutoencoderCard, directory: str | Path) -> Path:
    """Write `directory/autoencoder.safetensors`, then `autoencoder.json` (the card last, so a
    folder with a card has its weights)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(ae, directory / WEIGHTS_FILE)
    (directory / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return directory


def load_autoencoder(directory: str | Path, device: torch.device | str = "cpu"
                     ) -> tuple[KLAutoencoder, AutoencoderCard]:
    """The autoencoder of `directory` (eval mode, no gradients needed) and its card; one-line errors."""
    directory = Path(directory)
    if not is_autoencoder_dir(directory):
        raise ValueError(f"{directory} is not an autoencoder folder ({CARD_FILE} + {WEIGHTS_FILE}); make one with "
                         "`difforge train-autoencoder`")
    try:
        card = AutoencoderCard.from_dict(json.loads((directory / CARD_FILE).read_text()))
    except (json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{directory / CARD_FILE}: {str(e).splitlines()[0]}") from None
    return load_weights(card, directory / WEIGHTS_FILE).to(device), card
