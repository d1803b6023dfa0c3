"""The model card: everything needed to rebuild a trained model, typed.

A run directory stores it as `model.json`, an exported model as `config.json` (with the
step and which weights were exported). `ModelCard.to_dict` writes format version 2;
`ModelCard.from_dict` also reads version 1 (difforge before the card), so every run and
exported model written since the first release still loads.

Version 2 (JSON):

    {"format": "difforge-model", "version": 2,
     "architecture": {"preset": "unet", "kwargs": {"base_channels": 32, ...}},
     "image_size": 32, "native_size": 28, "channels": 1,
     "diffusion": {"framework": "ddpm", "timesteps": 1000, "schedule": "linear", ...},
     "prediction": "eps",
     "conditioning": {"kind": "class-labels", "num_classes": 10, "null_label": 10},
     "class_names": ["T-shirt/top", ...], "dataset": "fashion-mnist", "step": 1400, "weights": "ema"}

Version 3 is version 2 plus "autoencoder" (an `AutoencoderCard`): a latent diffusion model,
whose `image_size` and `channels` are its latents' and whose `native_size` is the images';
its autoencoder's weights are `autoencoder.safetensors` beside the card. Cards without an
autoencoder are still written as version 2, so older difforge keeps reading them, and
refuses (asks for an upgrade) the latent ones it could not sample.

A fine-tuned model's card (either version) also holds "source" (`Source`: the model it
started from, its weights file and SHA-256) and, for LoRA, "lora" (`LoraSpec`): its
weights are then only the adapter, applied to the source on load. Older difforge ignores
both keys; it reads a merged export as any model and fails to load a LoRA adapter's
weights (missing keys).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from difforge.diffusion.frameworks import FrameworkSpec, check_framework, make_process, resolve_prediction
from difforge.diffusion.process import NoiseProcess
from difforge.io.space import to_model_size, to_native_size
from difforge.models.autoencoder import AutoencoderCard
from difforge.models.conditioning import ClassLabels, Conditioning, LowResImage, Unconditional, conditioning_from_dict
from difforge.models.denoiser import Denoiser
from difforge.models.lora import LoraSpec
from difforge.models.registry import PRESETS, build_model
from difforge.models.rvd import RVDDenoiser, RVDNet, check_context

FORMAT = "difforge-model"
VERSION = 2  # written for pixel-space models
LATENT_VERSION = 3  # written for latent diffusion models (an "autoencoder" entry)


def _frozen(v: Any) -> Any:
    """JSON values as immutable Python ones: lists -> tuples, recursively."""
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    return v


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


@dataclass(frozen=True)
class Architecture:
    """The network: a preset of `difforge.models.PRESETS` and the keyword arguments it was
    built with (recorded, so a later change of the preset does not change the model)."""

    preset: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown model {self.preset!r}; expected one of {sorted(PRESETS)}")
        object.__setattr__(self, "kwargs", MappingProxyType({k: _frozen(v) for k, v in dict(self.kwargs).items()}))

    @classmethod
    def of_preset(cls, preset: str) -> Architecture:
        return cls(preset, PRESETS[preset].kwargs if preset in PRESETS else {})

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "kwargs": {k: _jsonable(v) for k, v in self.kwargs.items()}}


@dataclass(frozen=True)
class Source:
    """Where a fine-tuned model started: the model `path` (an absolute folder, or a Hub id),
    the weights file inside it (`weights`, relative), that file's SHA-256, and its step."""

    path: str
    weights: str
    sha256: str
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "weights": self.weights, "sha256": self.sha256, "step": self.step}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Source:
        return cls(str(d["path"]), str(d["weights"]), str(d["sha256"]), d.get("step"))


@dataclass(frozen=True)
class ModelCard:
    """A trained model's description (module docstring). `image_size` is the network's
    input size, `native_size` the data's (padded or resized to it); `class_names` name the
    classes of a class-conditional model; `step` and `weights` ("ema" / "raw") are set on
    exported models; `prompts`, example prompts of a text-to-image model (its training
    previews and the default of `difforge sample`); `autoencoder`, the first stage of a
    latent diffusion model (then `image_size` and `channels` describe its latents);
    `source`, the model a fine-tuned one started from (`train --init-from`); `lora`, the
    adapters of a LoRA model, whose weights are only the adapters and whose base is
    `source` (its hash checked on load)."""

    architecture: Architecture
    image_size: int
    native_size: int
    channels: int
    diffusion: FrameworkSpec = field(default_factory=FrameworkSpec)
    prediction: str | None = None  # None: the framework's default
    conditioning: Conditioning = field(default_factory=Unconditional)
    class_names: tuple[str, ...] | None = None
    dataset: str | None = None
    step: int | None = None
    weights: str | None = None
    prompts: tuple[str, ...] | None = None
    autoencoder: AutoencoderCard | None = None
    source: Source | None = None
    lora: LoraSpec | None = None

    def __post_init__(self) -> None:
        if self.lora is not None and self.source is None:
            raise ValueError("a LoRA model needs its base model (source)")
        if self.prompts is not None:
            object.__setattr__(self, "prompts", tuple(str(p) for p in self.prompts))
        check_framework(self.diffusion, self.prediction)
        if PRESETS[self.architecture.preset].cls is RVDNet:  # its clips must be longer than its context
            check_context(dict(self.architecture.kwargs).get("context", 4), self.frames)
        object.__setattr__(self, "prediction", resolve_prediction(self.diffusion.framework, self.prediction))
        if self.channels < 1 or self.image_size < 1 or self.native_size < 1:
            raise ValueError(f"bad image shape: {self.channels} channels, "
                             f"size {self.native_size} -> {self.image_size}")
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
            if len(self.class_names) != (self.num_classes or 0):
                raise ValueError(f"{len(self.class_names)} class names for {self.num_classes or 0} classes")
        ae = self.autoencoder
        if ae is not None and (ae.latent_channels, ae.latent_size, ae.native_size) != (
                self.channels, self.image_size, self.native_size):
            raise ValueError(f"the autoencoder's latents are {ae.latent_channels}x{ae.latent_size}x{ae.latent_size} "
                             f"of {ae.native_size}-pixel images, but the model takes {self.channels}x"
                             f"{self.image_size}x{self.image_size} of {self.native_size}-pixel images")

    @property
    def latent(self) -> bool:
        """Whether this is a latent diffusion model (it samples latents that its autoencoder decodes)."""
        return self.autoencoder is not None

    @property
    def frames(self) -> int | None:
        """The clip length of a video model (its samples are (C, T, H, W)); None for images."""
        return getattr(self.conditioning, "frames", None) if self.conditioning.kind == "video-frames" else None

    @property
    def pixel_channels(self) -> int:
        """The channels of the images the model makes (its latents' for a latent model differ)."""
        return self.autoencoder.channels if self.autoencoder is not None else self.channels

    # ------------------------------------------------------------ what it describes
    @property
    def framework(self) -> str:
        return self.diffusion.framework

    @property
    def task(self) -> str:
        return self.conditioning.task

    @property
    def num_classes(self) -> int | None:
        return self.network_kwargs().get("num_classes")

    def network_kwargs(self) -> dict[str, Any]:
        return self.conditioning.network_kwargs(self.channels)

    # ------------------------------------------------------------ the model object
    def process(self) -> NoiseProcess:
        return make_process(self.diffusion)

    def build_kwargs(self) -> dict[str, Any]:
        """The arguments of `difforge.models.build_model` for this card's network."""
        return {"preset": self.architecture.preset, "in_channels": self.channels, "kwargs": self.architecture.kwargs,
                **self.network_kwargs()}

    def build_network(self) -> nn.Module:
        """The untrained network (weights from the global RNG, as `build_model`)."""
        return build_model(**self.build_kwargs())

    def denoiser(self, net: nn.Module | None = None) -> Denoiser:
        """The model object: `net` (default: a new network) with this card's process and prediction
        (an `RVDDenoiser` for residual video diffusion)."""
        net = self.build_network() if net is None else net
        if PRESETS[self.architecture.preset].cls is RVDNet:
            return RVDDenoiser(net, self.process(), self.prediction, frames=self.frames)
        return Denoiser(net, self.process(), self.prediction)

    # ------------------------------------------------------------ images in and out
    def check_images(self, image: torch.Tensor, what: str = "image") -> torch.Tensor:
        """A float (N, C, H, W) batch at the native size and channels; clear errors."""
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"{what} must be a tensor, got {type(image).__name__}")
        if image.ndim != 4:
            raise ValueError(f"{what} must be a batch (N, C, H, W), got shape {tuple(image.shape)}")
        c, size = self.channels, self.native_size
        if image.shape[1] != c:
            raise ValueError(f"{what} has {image.shape[1]} channels; this model takes {c}")
        if tuple(image.shape[-2:]) != (size, size):
            raise ValueError(f"{what} is {image.shape[-2]}x{image.shape[-1]}; this model works at {size}x{size}")
        if image.shape[0] < 1:
            raise ValueError(f"{what} is an empty batch")
        if not image.is_floating_point():
            raise ValueError(f"{what} must be float in [-1, 1], got {image.dtype}")
        if not torch.isfinite(image).all():
            raise ValueError(f"{what} has NaN or infinite values")
        return image.float()

    def to_model(self, x: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
        """Native-size float images -> the model's input size: padded with `fill` (the data's
        black, as `difforge.data.to_model_input`), or resized (bilinear) for a smaller model."""
        return to_model_size(x, self.image_size, fill)

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """Model-size images -> native size (inverse of `to_model`), float in [-1, 1]."""
        return to_native_size(x, self.native_size).clamp(-1, 1)

    # ------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": LATENT_VERSION if self.latent else VERSION,
                "architecture": self.architecture.to_dict(),
                "image_size": self.image_size, "native_size": self.native_size, "channels": self.channels,
                "diffusion": self.diffusion.to_dict(), "prediction": self.prediction,
                "conditioning": self.conditioning.to_dict(),
                "class_names": None if self.class_names is None else list(self.class_names),
                "dataset": self.dataset, "step": self.step, "weights": self.weights,
                **({"prompts": list(self.prompts)} if self.prompts is not None else {}),
                **({"autoencoder": self.autoencoder.to_dict()} if self.autoencoder is not None else {}),
                **({"source": self.source.to_dict()} if self.source is not None else {}),
                **({"lora": self.lora.to_dict()} if self.lora is not None else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelCard:
        """A card from its JSON (version 2, or version 1: before the card); one-line errors."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError("not a difforge model description")
        version = d.get("version", 1)
        if version not in (1, VERSION, LATENT_VERSION):
            raise ValueError(f"model description version {version!r} is newer than this difforge reads "
                             f"(1..{LATENT_VERSION}); upgrade difforge")
        try:
            return _from_v1(cls, d) if version == 1 else _from_v2(cls, d)
        except KeyError as e:
            raise ValueError(f"model description lacks {e.args[0]!r}") from None
        except TypeError as e:
            raise ValueError(f"bad model description: {e}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e})") from None
        return cls.from_dict(d)

    def exported(self, step: int, weights: str) -> ModelCard:
        """This card for an exported model: the training step and which weights ("ema"/"raw")."""
        return dataclasses.replace(self, step=int(step), weights=weights)

    def merged(self) -> ModelCard:
        """This card for a LoRA model whose adapters were folded into the weights: a plain
        model (its `source` still says where it started)."""
        return dataclasses.replace(self, lora=None)


def _from_v2(cls: type[ModelCard], d: Mapping[str, Any]) -> ModelCard:
    arch = d["architecture"]
    kwargs = arch.get("kwargs")
    return cls(Architecture(arch["preset"], kwargs) if kwargs is not None else Architecture.of_preset(arch["preset"]),
               int(d["image_size"]), int(d["native_size"]), int(d["channels"]),
               FrameworkSpec.from_dict(d["diffusion"]), d.get("prediction"), conditioning_from_dict(d["conditioning"]),
               d.get("class_names"), d.get("dataset"), d.get("step"), d.get("weights"), d.get("prompts"),
               AutoencoderCard.from_dict(d["autoencoder"]) if d.get("autoencoder") is not None else None,
               Source.from_dict(d["source"]) if d.get("source") is not None else None,
               LoraSpec.from_dict(d["lora"]) if d.get("lora") is not None else None)


def _from_v1(cls: type[ModelCard], d: Mapping[str, Any]) -> ModelCard:
    """Version 1: "model" {preset, in_channels, num_classes, cond_channels}, "diffusion"
    (the run config's section; no "framework" before frameworks existed: DDPM), a top-level
    "prediction", "class_names", and "task" / "scale" for SR3 models. v1 recorded no
    architecture kwargs: the preset's are taken."""
    m = d["model"]
    if d.get("task", "generate") == "superres":
        conditioning: Conditioning = LowResImage(int(d["scale"]))
    elif m.get("num_classes"):
        conditioning = ClassLabels(int(m["num_classes"]))
    else:
        conditioning = Unconditional()
    return cls(Architecture.of_preset(m["preset"]), int(d["image_size"]), int(d["native_size"]), int(d["channels"]),
               FrameworkSpec.from_dict(d.get("diffusion") or {}), d.get("prediction"), conditioning,
               d.get("class_names"), d.get("dataset"), d.get("step"), d.get("weights"))
