"""What a model is conditioned on: the conditioning spec of a model card.

Each kind is a frozen dataclass with a `kind` name (its "kind" in model.json), the
`task` it serves, the inputs it adds to the network (`network_kwargs`), its null value
(`null`: the unconditional input of classifier-free guidance, Ho & Salimans 2022, and
what label dropout trains), and `to_dict` / `from_dict`:

- `Unconditional`: no conditioning.
- `ClassLabels`: an integer label per image; the null label is `num_classes`, the extra
  embedding row the network learns for "no class".
- `LowResImage`: SR3 super-resolution (Saharia et al. 2022, "Image super-resolution via
  iterative refinement"): the low-resolution image, upsampled bicubically to the model's
  size and concatenated to the network input as `channels` extra channels.
- `CLIPImageEmbedding`: unCLIP's decoder (Ramesh et al. 2022): a domain CLIP's unit image
  embedding per image, (B, dim) float; the null is the zero vector (no unit vector is
  zero), which embedding dropout trains.
- `TextPrompts`: a caption per image, as a `difforge.models.text.TextCond` made by the
  kind's conditioner (a byte tokenizer for a text encoder trained with the model, GLIDE;
  or a frozen pretrained encoder, Imagen / Stable Diffusion); the null is the empty prompt.
- `TextLowResImage`: a text super-resolution model (Imagen's super-resolution stages):
  `LowResImage`'s image channels and `TextPrompts`' caption, as a
  `difforge.models.text_image.TextImageCond`; the null is the empty prompt, the image kept.

- `VideoFrames`: a video model's clips of `frames` frames, conditioned on any observed
  frames and, with `num_classes`, a class label per clip (Flexible Diffusion Models,
  Harvey et al. 2022); the value is a `difforge.models.frames.FrameCond`, its null the
  null label with every frame unobserved.

To add a kind: a dataclass with these members whose `null` builds the kind's null value,
registered in `KINDS`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F

from difforge.models.frames import FrameCond, training_masks
from difforge.models.text import ScratchConditioner, TextCond, TextConditioner
from difforge.models.text_image import TextImageCond


class Conditioning(Protocol):
    kind: ClassVar[str]
    task: ClassVar[str]  # "generate" (sample from nothing) or "superres" (needs a low-resolution image)

    def network_kwargs(self, channels: int) -> dict[str, Any]: ...
    def null(self, n: int, device: torch.device | str | None = None) -> Any: ...
    def to_dict(self) -> dict[str, Any]: ...


def _plain(spec) -> dict[str, Any]:
    return {"kind": spec.kind, **dataclasses.asdict(spec)}


@dataclass(frozen=True)
class Unconditional:
    kind: ClassVar[str] = "none"
    task: ClassVar[str] = "generate"

    def network_kwargs(self, channels: int) -> dict[str, Any]:
        return {"num_classes": None}

    def null(self, n: int, device=None) -> None:
        return None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Unconditional:
        return cls()


def drop_labels(
    labels: torch.Tensor, p: float, null_label: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by the null label independently with probability p
    (classifier-free guidance training, Ho & Salimans 2022)."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)


@dataclass(frozen=True)
class ClassLabels:
    """`num_classes` classes (their names are the card's `class_names`); the null label
    (no class) is `num_classes`. `has_null` False: the network learned no null class (a
    model imported from a library that trains none), so it takes no classifier-free
    guidance and no label dropout; its card says `"null_label": null`."""

    kind: ClassVar[str] = "class-labels"
    task: ClassVar[str] = "generate"
    num_classes: int
    has_null: bool = True

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"a class-conditional model needs num_classes >= 1, got {self.num_classes}")

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.has_null else None

    def network_kwargs(self, channels: int) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    def _need_null(self, what: str) -> int:
        if not self.has_null:
            raise ValueError(f"{what} needs a null class, which this model did not learn; use guidance scale 1")
        return self.num_classes

    def null(self, n: int, device=None) -> torch.Tensor:
        return torch.full((n,), self._need_null("unconditional sampling"), dtype=torch.long, device=device)

    def drop(self, labels: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Label dropout for classifier-free guidance: each label null with probability p."""
        if p <= 0:
            return labels
        return drop_labels(labels, p, self._need_null("label dropout"), generator)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.num_classes, "null_label": self.null_label}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassLabels:
        spec = cls(int(d["num_classes"]))
        null = d.get("null_label", spec.null_label)
        if null is None:
            return cls(spec.num_classes, has_null=False)
        if null != spec.null_label:
            raise ValueError(f"null label {null} is not num_classes = {spec.num_classes}")
        return spec


# ---------------------------------------------------------------- SR3


def downsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The mean over each `scale` x `scale` block (area downsampling)."""
    return F.avg_pool2d(x, scale)


def upsample_bicubic(low: torch.Tensor, size: int) -> torch.Tensor:
    """The conditioning image (and the classical baseline): bicubic to `size`, clamped."""
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


@dataclass(frozen=True)
class LowResImage:
    """SR3's conditioning: the image at 1/`scale` of the data's size, upsampled back."""

    kind: ClassVar[str] = "low-res-image"
    task: ClassVar[str] = "superres"
    scale: int

    def __post_init__(self) -> None:
        if self.scale < 2:
            raise ValueError(f"the super-resolution scale must be >= 2, got {self.scale}")

    def check(self, native_size: int, image_size: int) -> None:
        """Reject a data / model size this scale cannot work with (one-line reasons)."""
        if native_size % self.scale:
            raise ValueError(f"the super-resolution scale must divide the image size {native_size}, got {self.scale}")
        if image_size < native_size:
            raise ValueError("super-resolution training needs a model input size >= the data's size")

    def network_kwargs(self, channels: int) -> dict[str, Any]:
        return {"num_classes": None, "cond_channels": channels}

    def null(self, n: int, device=None):
        raise ValueError("a super-resolution model has no null condition: it takes no classifier-free guidance")

    def from_clean(self, x0: torch.Tensor, native_size: int) -> torch.Tensor:
        """The conditioning image for model-space images x0 (N, C, S, S) in training: the
        native-size region area-downsampled by `scale`, upsampled back bicubically,
        padded as x0 is. Sampling makes the same from a user's image (`from_low`)."""
        size = x0.shape[-1]
        top = (size - native_size) // 2
        crop = x0[..., top : top + native_size, top : top + native_size] if size > native_size else x0
        up = upsample_bicubic(downsample(crop, self.scale), native_size)
        if size > native_size:
            return F.pad(up, (top, size - native_size - top, top, size - native_size - top), value=-1.0)
        return up

    def training_cond(self, x0: torch.Tensor, cond: Any, native_size: int) -> torch.Tensor:
        """The conditioning of a training batch x0: its conditioning image (`from_clean`);
        `cond` is None (an SR3 model has no other conditioning)."""
        return self.from_clean(x0, native_size)

    def from_low(self, low: torch.Tensor, native_size: int) -> torch.Tensor:
        """A low-resolution batch (N, C, native/scale, native/scale) in [-1, 1], upsampled
        to the native size (float); a clear error for any other shape."""
        side = native_size // self.scale
        if not isinstance(low, torch.Tensor) or low.ndim != 4 or tuple(low.shape[-2:]) != (side, side):
            got = tuple(low.shape) if isinstance(low, torch.Tensor) else type(low).__name__
            raise ValueError(f"low-resolution image must be (N, C, {side}, {side}) for this x{self.scale} model, "
                             f"got {got}")
        return upsample_bicubic(low.float(), native_size)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LowResImage:
        return cls(int(d["scale"]))


# ---------------------------------------------------------------- text

TEXT_ENCODERS = ("scratch", "minilm")
MINILM_DIM = 384  # all-MiniLM-L6-v2's token and (mean-)pooled embedding width


@functools.lru_cache(maxsize=8)
def _conditioner(encoder: str, max_tokens: int, width: int, truncate: bool) -> TextConditioner:
    """One conditioner per setting (a frozen encoder's weights load once per process)."""
    if encoder == "scratch":
        return ScratchConditioner(max_tokens, width, truncate=truncate)
    from difforge.models.minilm import MiniLMConditioner  # the optional `text` extra: only when asked for

    return MiniLMConditioner(max_tokens=max_tokens, **({"truncate": True} if truncate else {}))


@dataclass(frozen=True)
class TextPrompts:
    """A caption per image (text-to-image). `encoder` says what turns prompts into what the
    network reads (`difforge.models.text.TextCond`):

    - "scratch": a byte-level tokenizer outside the network and a `ScratchTextEncoder` of
      `width`, `layers`, `heads` inside it, trained with the UNet (GLIDE, Nichol et al. 2022);
    - "minilm": frozen all-MiniLM-L6-v2 token and pooled embeddings (width 384), computed
      outside the network (a frozen pretrained text encoder as in Imagen, Saharia et al.
      2022, and Stable Diffusion, Rombach et al. 2022); `width`, `layers`, `heads` unused.

    `max_tokens` is the longest prompt in the encoder's tokens (BOS / EOS or CLS / SEP
    included). The null (the unconditional input of classifier-free guidance) is the empty
    prompt, which caption dropout (`drop`) trains (GLIDE, Section 2.3; Imagen).
    """

    kind: ClassVar[str] = "text"
    task: ClassVar[str] = "generate"
    encoder: str
    max_tokens: int
    width: int = 128
    layers: int = 2
    heads: int = 4

    def __post_init__(self) -> None:
        if self.encoder not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {self.encoder!r}; expected one of {list(TEXT_ENCODERS)}")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {self.max_tokens}")
        if self.encoder == "scratch" and (self.width < 1 or self.layers < 1 or self.heads < 1
                                          or self.width % self.heads):
            raise ValueError(f"the scratch text encoder needs width, layers, heads >= 1 and heads dividing width, "
                             f"got {self.width}, {self.layers}, {self.heads}")

    def network_kwargs(self, channels: int) -> dict[str, Any]:
        if self.encoder == "scratch":
            encoder = {"width": self.width, "layers": self.layers, "heads": self.heads, "max_tokens": self.max_tokens}
            return {"num_classes": None, "context_dim": self.width, "pooled_dim": self.width, "text_encoder": encoder}
        return {"num_classes": None, "context_dim": MINILM_DIM, "pooled_dim": MINILM_DIM, "text_encoder": None}

    def conditioner(self, truncate: bool = False) -> TextConditioner:
        """Prompts -> TextCond for this model (`truncate`: cut over-long prompts instead of
        refusing them, for training captions). Cached: a frozen encoder loads once."""
        return _conditioner(self.encoder, self.max_tokens, self.width, truncate)

    def null(self, n: int, device=None) -> TextCond:
        """The empty prompt, n times."""
        return self.conditioner()([""] * n, device=device)

    def drop(self, cond: TextCond, p: float, generator: torch.Generator | None = None) -> TextCond:
        """Caption dropout for classifier-free guidance: each row replaced by the empty
        prompt with probability p (drawn on the CPU from `generator`)."""
        if p <= 0:
            return cond
        keep = torch.rand((len(cond),), generator=generator) >= p
        return cond.where(keep, self.null(1, cond.device))

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextPrompts:
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        return cls(str(d["encoder"]), int(d["max_tokens"]),
                   **{k: int(d.get(k, v)) for k, v in defaults.items()})


# ---------------------------------------------------------------- text super-resolution


@dataclass(frozen=True)
class TextLowResImage(TextPrompts, LowResImage):
    """A super-resolution model conditioned on text as well as on the low-resolution image
    (Imagen's super-resolution stages, Saharia et al. 2022, Section 2.5): `LowResImage`'s
    conditioning image at 1/`scale` of the data's size, upsampled back and read as extra
    input channels, and `TextPrompts`' caption (any of its encoders), read by
    cross-attention and the pooled vector. The value is a
    `difforge.models.text_image.TextImageCond`. `null(n)` is the empty prompt (a
    `TextCond`): guidance pairs it with the batch's own image, and caption dropout
    (`drop`) trains it; the image is never dropped."""

    kind: ClassVar[str] = "text-low-res-image"
    task: ClassVar[str] = "superres"

    def __post_init__(self) -> None:
        LowResImage.__post_init__(self)
        TextPrompts.__post_init__(self)

    def network_kwargs(self, channels: int) -> dict[str, Any]:
        return {**TextPrompts.network_kwargs(self, channels), "cond_channels": channels}

    def training_cond(self, x0: torch.Tensor, cond: TextCond, native_size: int) -> TextImageCond:
        """The conditioning of a training batch x0: its captions `cond` (after caption
        dropout) with its conditioning image (`from_clean`)."""
        return TextImageCond(cond, self.from_clean(x0, native_size))

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextLowResImage:
        text = TextPrompts.from_dict(d)
        return cls(int(d["scale"]), **dataclasses.asdict(text))


# ---------------------------------------------------------------- unCLIP


@dataclass(frozen=True)
class CLIPImageEmbedding:
    """The decoder of unCLIP (Ramesh et al. 2022, "Hierarchical text-conditional image
    generation with CLIP latents", Section 2.1): each image's CLIP image embedding, a unit
    vector of `dim`, as a float tensor (B, dim). The network adds a projection of it to the
    time embedding and cross-attends to `tokens` extra tokens projected from it (the paper's
    four). The null, the unconditional branch of guidance, is the zero vector; `drop` sets
    each row to it with probability p (the paper drops the embedding 10% of the time). The
    CLIP model itself travels with the decoder (`clip/` beside its card); `clip` is the
    sha256 of its weights, which a prior must share (`difforge.models.prior`)."""

    kind: ClassVar[str] = "clip-image-embedding"
    task: ClassVar[str] = "generate"
    dim: int
    tokens: int = 4
    clip: str = ""

    def __post_init__(self) -> None:
        if self.dim < 1 or self.tokens < 1:
            raise ValueError(f"a CLIP image embedding needs dim and tokens >= 1, got {self.dim}, {self.tokens}")

    def network_kwargs(self, channels: int) -> dict[str, Any]:
        return {"num_classes": None, "image_embed_dim": self.dim, "image_embed_tokens": self.tokens}

    def null(self, n: int, device=None) -> torch.Tensor:
        return torch.zeros(n, self.dim, device=device)

    def check(self, emb: Any) -> torch.Tensor:
        """`emb` as float32 (N, dim); a one-line error naming the dimensions otherwise."""
        if (not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[1] != self.dim
                or not emb.is_floating_point()):
            got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise ValueError(f"this model takes CLIP image embeddings (N, {self.dim}), got {got}")
        return emb.float()

    def drop(self, emb: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Embedding dropout for classifier-free guidance: each row the null with probability p
        (drawn on the CPU from `generator`)."""
        if p <= 0:
            return emb
        keep = (torch.rand((len(emb),), generator=generator) >= p).to(emb.device)
        return torch.where(keep[:, None], emb, torch.zeros_like(emb))

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPImageEmbedding:
        return cls(int(d["dim"]), int(d.get("tokens", 4)), str(d.get("clip", "")))


# ---------------------------------------------------------------- video


@dataclass(frozen=True)
class VideoFrames:
    """A video model: clips of `frames` frames (B, C, T, H, W), conditioned on observed
    frames and a mask (Flexible Diffusion Models, Harvey et al. 2022), which the network
    reads as C + 1 extra input channels (the frames, zero where unobserved, and the mask),
    and with `num_classes` on a class label per clip. The value is a `FrameCond`; its null
    (the unconditional branch of classifier-free guidance) is the null label (`num_classes`)
    with no frame observed. Training draws masks with `difforge.models.frames.training_masks`
    (none / the first k / a random subset); a dropped label drops the frames too."""

    kind: ClassVar[str] = "video-frames"
    task: ClassVar[str] = "generate"
    frames: int
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"a video model needs frames >= 1, got {self.frames}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"a class-conditional model needs num_classes >= 1, got {self.num_classes}")

    @property
    def null_label(self) -> int | None:
        return self.num_classes

    @property
    def has_null(self) -> bool:
        return True

    def network_kwargs(self, channels: int) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "cond_channels": channels + 1}

    def null(self, n: int, device=None) -> FrameCond:
        labels = None if self.num_classes is None else torch.full((n,), self.num_classes, dtype=torch.long,
                                                                   device=device)
        return FrameCond(torch.zeros((n, self.frames), dtype=torch.bool, device=device), None, labels)

    def training_cond(self, labels: torch.Tensor | None, n: int, p: float,
                      generator: torch.Generator | None = None) -> FrameCond:
        """A training batch's conditioning without its frames (`FrameCond.observe` adds them):
        labels dropped to the null with probability `p` (classifier-free guidance), then the
        observed-frame masks (`training_masks`), none where the label was dropped. A model
        without classes drops nothing and keeps every mask. Draws from `generator`."""
        dropped = torch.rand((n,), generator=generator) < p if p > 0 else torch.zeros(n, dtype=torch.bool)
        if self.num_classes is None:
            labels, dropped = None, torch.zeros(n, dtype=torch.bool)
        else:
            labels = torch.where(dropped, self.num_classes, labels.cpu())
        return FrameCond(training_masks(n, self.frames, generator, dropped), None, labels)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VideoFrames:
        k = d.get("num_classes")
        return cls(int(d["frames"]), None if k is None else int(k))


KINDS: dict[str, type] = {cls.kind: cls for cls in (Unconditional, ClassLabels, LowResImage, TextPrompts,
                                                    TextLowResImage, CLIPImageEmbedding, VideoFrames)}


def conditioning_from_dict(d: Mapping[str, Any]) -> Conditioning:
    kind = d.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown conditioning kind {kind!r}; expected one of {sorted(KINDS)}")
    return KINDS[kind].from_dict(d)
