"""A small contrastive image-text model (CLIP, Radford et al. 2021, "Learning transferable
visual models from natural language supervision") at the scale of difforge's datasets.

Two towers map an image and a caption into one embedding space of `embed_dim`, each
output L2-normalised:

- the image tower (`ImageTower`): conv3x3-GroupNorm-SiLU layers with 2x average pooling
  between them, a global average pool and a linear projection; it takes images in model
  space ([-1, 1], as `difforge.io.space.to_model_input` makes them) of any square size;
- the text tower: the byte-level `ScratchTextEncoder` of `models/text.py` (trained with
  the image tower, its EOS state as the caption's feature vector) or the pooled sentence
  embedding of the frozen MiniLM (`models/minilm.py`, outside the module), followed by a
  trained linear projection.

`DomainCLIP` is a trained model with its description and text conditioner (embeddings
of uint8 images and of prompts); `load_clip` / `DomainCLIP.save` read and write its
folder (`model.safetensors` + `clip.json`), which `difforge.eval.clip` trains.

`clip_loss` is the symmetric InfoNCE loss of CLIP's Figure 3: cross-entropy over the
cosine-similarity logits scaled by a learned temperature, image -> text and text ->
image, averaged. The scale is learned as its logarithm, starts at 1 / 0.07 and is clamped
to at most 100 (CLIP, Section 2.5).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from difforge.io.space import to_model_input
from difforge.models.text import ScratchConditioner, ScratchTextEncoder, TextCond

TEXT_ENCODERS = ("scratch", "minilm")
MINILM_DIM = 384  # the pooled width of all-MiniLM-L6-v2 (difforge.models.minilm.DIM, not imported: no extra needed)
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class CLIPArch:
    """The architecture of a `CLIPModel` (recorded in its description, rebuilt from it)."""

    channels: int = 3  # image channels
    embed_dim: int = 64  # the shared embedding's size
    widths: tuple[int, ...] = (16, 32, 64, 128)  # image tower: channels per conv block (a 2x pool between blocks)
    text_encoder: str = "scratch"  # scratch | minilm
    text_width: int = 64  # scratch encoder width (minilm: fixed at 384)
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 64  # prompt limit in tokens of the encoder, BOS/EOS ([CLS]/[SEP]) included

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {self.text_encoder!r}; expected one of {list(TEXT_ENCODERS)}")
        if self.channels not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {self.channels}")
        if self.embed_dim < 1 or not self.widths or min(self.widths) < 1:
            raise ValueError(f"embed_dim and widths must be positive, got {self.embed_dim}, {list(self.widths)}")
        if any(w % 8 for w in self.widths):
            raise ValueError(f"image tower widths must be multiples of 8 (GroupNorm groups), got {list(self.widths)}")

    @property
    def text_dim(self) -> int:
        """The width of the text feature the projection takes."""
        return self.text_width if self.text_encoder == "scratch" else MINILM_DIM

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CLIPArch:
        return cls(**d)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class ImageTower(nn.Module):
    """Model-space images (B, C, H, W) -> unnormalised embeddings (B, embed_dim).

    GroupNorm rather than BatchNorm: an image's embedding does not depend on the rest of
    its batch, in training as in scoring."""

    def __init__(self, channels: int, widths: tuple[int, ...], embed_dim: int):
        super().__init__()
        layers, cin = [], channels
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.AvgPool2d(2, ceil_mode=True))  # a 1x1 map stays 1x1
            layers.append(_block(cin, w))
            cin = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(cin, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x))


class CLIPModel(nn.Module):
    """The two towers and the learned logit scale (see the module doc).

    `embed_images(x)`: model-space images -> unit vectors (B, embed_dim).
    `text_features(cond)`: a `TextCond` -> the text feature before the projection: the
    scratch encoder's EOS state of `cond.ids` (scratch), or `cond.pooled` (minilm, made by
    the frozen encoder outside the module). `embed_text(cond)` projects and normalises it;
    `project_text(features)` does that for features computed earlier (a frozen encoder's
    cache). `forward(x, cond)` gives both embeddings.
    """

    def __init__(self, arch: CLIPArch = CLIPArch()):
        super().__init__()
        self.arch = arch
        self.image = ImageTower(arch.channels, arch.widths, arch.embed_dim)
        self.text_encoder = (ScratchTextEncoder(arch.text_width, arch.text_layers, arch.text_heads, arch.max_tokens)
                             if arch.text_encoder == "scratch" else None)
        self.text_proj = nn.Linear(arch.text_dim, arch.embed_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp of the learned log scale, clamped to [1, 100] (the clamp passes no gradient beyond it)."""
        return self.log_logit_scale.clamp(0.0, MAX_LOGIT_SCALE).exp()

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(x), dim=-1)

    def text_features(self, cond: TextCond) -> torch.Tensor:
        if self.text_encoder is not None:
            if cond.ids is None:
                raise ValueError("this CLIP model's scratch text encoder needs token ids (a ScratchConditioner's)")
            return self.text_encoder(cond.ids, cond.mask)[1]
        if cond.pooled is None:
            raise ValueError("this CLIP model's text tower needs the frozen encoder's pooled embedding")
        return cond.pooled

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(features), dim=-1)

    def embed_text(self, cond: TextCond) -> torch.Tensor:
        return self.project_text(self.text_features(cond))

    def forward(self, x: torch.Tensor, cond: TextCond) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_images(x), self.embed_text(cond)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
              positives: torch.Tensor | None = None) -> torch.Tensor:
    """The symmetric InfoNCE loss of a batch of B (image, text) pairs.

    logits[i, j] = logit_scale * <image_emb[i], text_emb[j]> (the embeddings unit vectors);
    the loss is (CE(logits, targets) + CE(logits^T, targets^T)) / 2, the mean of the
    image -> text and text -> image cross-entropies over the batch. The targets are the
    diagonal (pair i matches only caption i), or with `positives` (B, B) bool, row i's
    target distribution is uniform over the j with positives[i, j]: a batch that holds one
    caption twice then does not ask the model to tell the two copies apart. `positives`
    must be symmetric with a True diagonal.
    """
    b = image_emb.shape[0]
    if text_emb.shape[0] != b:
        raise ValueError(f"{b} images and {text_emb.shape[0]} texts: a batch of pairs needs as many of each")
    logits = logit_scale * image_emb @ text_emb.T
    if positives is None:
        target = torch.arange(b, device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    if positives.shape != (b, b) or not bool(positives.diagonal().all()) or not torch.equal(positives, positives.T):
        raise ValueError("positives must be a symmetric (B, B) bool matrix with a True diagonal")
    target = positives.to(logits.dtype)
    target = target / target.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


# ---------------------------------------------------------------- a trained model and its folder

FORMAT = "difforge-clip"
WEIGHTS, META = "model.safetensors", "clip.json"
CARRIED = "clip"  # the folder, beside a model's card, that holds the CLIP an unCLIP decoder carries


def copy_clip(source: str | Path, directory: str | Path) -> Path:
    """Copy a CLIP folder's two files into `directory` (created), clip.json last."""
    import shutil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(source) / WEIGHTS, directory / WEIGHTS)
    shutil.copyfile(Path(source) / META, directory / META)
    return directory


def clip_conditioner(arch: CLIPArch, truncate: bool):
    """Prompts -> the `TextCond` a CLIP model's text tower reads (`truncate`: cut long ones)."""
    if arch.text_encoder == "scratch":
        return ScratchConditioner(arch.max_tokens, arch.text_width, truncate=truncate)
    from difforge.models.minilm import MiniLMConditioner

    return MiniLMConditioner(arch.max_tokens, truncate=truncate, cache_size=0)


class DomainCLIP:
    """A `CLIPModel` with its description (`meta`) and text conditioner: embeddings of
    uint8 images and of prompts (the CLIP score of pairs: `difforge.eval.clip`)."""

    def __init__(self, net: CLIPModel, meta: dict, device: torch.device | str = "cpu"):
        self.net, self.meta = net.to(device).eval(), meta
        self.device = torch.device(device)
        self.conditioner = clip_conditioner(net.arch, truncate=False)

    @property
    def image_size(self) -> int:
        return self.meta["image_size"]

    def _check(self, images: torch.Tensor) -> None:
        from difforge.io.images import check_uint8_batch

        check_uint8_batch(images, self.net.arch.channels, self.image_size, "this CLIP model")

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Unit embeddings (N, embed_dim) float32 on the CPU of uint8 images (N, C, H, W)."""
        self._check(images)
        out = [self.net.embed_images(to_model_input(images[s : s + batch_size].to(self.device), self.image_size))
               .float().cpu() for s in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.net.arch.embed_dim)

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str], batch_size: int = 500) -> torch.Tensor:
        """Unit embeddings (N, embed_dim) float32 on the CPU of prompts; a prompt over the
        model's token limit is a one-line ValueError."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        out = [self.net.embed_text(self.conditioner(prompts[s : s + batch_size], device=self.device)).float().cpu()
               for s in range(0, len(prompts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.net.arch.embed_dim)

    def save(self, directory: str | Path) -> Path:
        """Write model.safetensors + clip.json into `directory` (created if missing); each
        file goes to a temporary name first, clip.json last (a folder with it is complete).
        Callers check the folder first (`check_clip_dir`)."""
        from difforge.io.outputs import save_weights_and_meta

        return save_weights_and_meta(directory, self.net, self.meta, WEIGHTS, META)


def is_clip_dir(directory: str | Path) -> bool:
    return (Path(directory) / META).is_file()


def check_clip_dir(directory: str | Path, *, overwrite: bool = False, what: str = "--out") -> Path:
    """Refuse (before any training) a folder a CLIP model may not be written to: a file, a
    folder of other files, or an existing CLIP model unless `overwrite`."""
    from difforge.io.outputs import check_output_dir

    return check_output_dir(directory, holds="CLIP model", is_ours=is_clip_dir, overwrite=overwrite, what=what)


def load_clip(directory: str | Path, device: torch.device | str = "cpu") -> DomainCLIP:
    """Load a model written by `DomainCLIP.save`; FileNotFoundError when there is none,
    ValueError when it is unusable, ImportError when it needs the missing `text` extra."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"no CLIP model in {directory} (expected {WEIGHTS} and {META})")
    try:
        meta = json.loads((directory / META).read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("not a difforge CLIP model description")
        net = CLIPModel(CLIPArch.from_dict(meta["arch"]))
        net.load_state_dict(load_file(directory / WEIGHTS))
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as e:
        raise ValueError(f"cannot load CLIP model {directory}: {str(e).splitlines()[0]}") from None
    return DomainCLIP(net, meta, device)
