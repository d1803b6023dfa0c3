"""The diffusion prior of unCLIP (Ramesh et al. 2022, "Hierarchical text-conditional image
generation with CLIP latents", Section 2.2): a diffusion model over a domain CLIP's image
embeddings, conditioned on the CLIP text embedding of the caption.

A sample is a vector of shape (dim,): the same `Denoiser` and samplers as for images
(they broadcast over any trailing dimensions), with `PriorNet` as the network: the noisy
vector, the noise level and the text embedding in, a vector out. The paper's prior is a
decoder-only transformer that predicts the unnoised embedding; at this scale a residual
MLP whose layers are modulated by the noise level and the text embedding (adaptive layer
norm) does the same job, and the prediction is the card's (x0 by default, as the paper).

The CLIP embeddings are unit vectors; the prior works on them times sqrt(dim) (`scale`),
whose components have unit variance as the noise processes assume, and sampled vectors
are divided by it and L2-normalised back onto the sphere the decoder was trained on.
Classifier-free guidance on the text: the text embedding is replaced by the zero vector
(the null) for a fraction of training rows.

A trained prior is a folder with `prior.safetensors` and `prior.json` (`PriorCard`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difforge.diffusion.frameworks import FrameworkSpec, make_process
from difforge.models.denoiser import Denoiser
from difforge.models.layers import timestep_embedding

FORMAT = "difforge-prior"
WEIGHTS, META = "prior.safetensors", "prior.json"


class _Block(nn.Module):
    """x + MLP(LN(x) * (1 + scale) + shift), scale and shift from the conditioning vector."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(width, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, width))
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(c).chunk(2, dim=-1)
        return x + self.mlp(self.norm(x) * (1 + scale) + shift)


class PriorNet(nn.Module):
    """F(x, c_noise, text): x (B, dim) the scaled noisy image embedding, c_noise (B,), text
    (B, dim) the CLIP text embedding (zeros: the null) -> (B, dim)."""

    def __init__(self, dim: int, width: int = 256, depth: int = 4):
        super().__init__()
        if dim < 1 or width < 1 or depth < 1:
            raise ValueError(f"a prior needs dim, width and depth >= 1, got {dim}, {width}, {depth}")
        self.dim, self.width = dim, width
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.text = nn.Linear(dim, width)
        self.inp = nn.Linear(dim + dim, width)  # the noisy vector and the text embedding, side by side
        self.blocks = nn.ModuleList([_Block(width) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"this prior takes embeddings (B, {self.dim}), got {tuple(x.shape)}")
        text = torch.zeros_like(x) if cond is None else cond.to(x.dtype)
        if text.shape != x.shape:
            raise ValueError(f"this prior takes text embeddings ({x.shape[0]}, {self.dim}), got {tuple(text.shape)}")
        c = F.silu(self.time(timestep_embedding(c_noise, self.width).to(x.dtype)) + self.text(text))
        h = self.inp(torch.cat([x, text], dim=1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.out_norm(h))


@dataclass(frozen=True)
class PriorCard:
    """What rebuilds a prior: its network, noise process and prediction, the CLIP it was
    trained on (`clip_fingerprint`: the sha256 of its weights file; `clip_dim`, its
    embedding size), and how it was trained."""

    dim: int
    width: int = 256
    depth: int = 4
    diffusion: FrameworkSpec = field(default_factory=lambda: FrameworkSpec(schedule="cosine"))
    prediction: str = "x0"
    clip_fingerprint: str = ""
    text_dropout: float = 0.1
    training: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """The factor between a unit CLIP embedding and the prior's sample space."""
        return math.sqrt(self.dim)

    def build_network(self) -> PriorNet:
        return PriorNet(self.dim, self.width, self.depth)

    def denoiser(self, net: nn.Module | None = None) -> Denoiser:
        return Denoiser(self.build_network() if net is None else net, make_process(self.diffusion), self.prediction)

    def null(self, n: int, device=None) -> torch.Tensor:
        return torch.zeros(n, self.dim, device=device)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["diffusion"] = self.diffusion.to_dict()
        d["training"] = dict(self.training)
        return {"format": FORMAT, "version": 1, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PriorCard:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError("not a difforge prior description")
        return cls(int(d["dim"]), int(d["width"]), int(d["depth"]), FrameworkSpec.from_dict(d["diffusion"]),
                   str(d["prediction"]), str(d.get("clip_fingerprint", "")), float(d.get("text_dropout", 0.1)),
                   dict(d.get("training") or {}))


def is_prior_dir(directory: str | Path) -> bool:
    return (Path(directory) / META).is_file()


def save_prior(card: PriorCard, net: PriorNet, directory: str | Path) -> Path:
    """prior.safetensors, then prior.json (a folder with it is complete)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META).unlink(missing_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, directory / WEIGHTS)
    (directory / META).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return directory


def load_prior(directory: str | Path, device: torch.device | str = "cpu") -> tuple[PriorCard, Denoiser]:
    """(card, the prior as a Denoiser in eval mode); FileNotFoundError when there is none,
    ValueError when it is unusable."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"no prior in {directory} (expected {WEIGHTS} and {META})")
    try:
        card = PriorCard.from_dict(json.loads((directory / META).read_text()))
        net = card.build_network()
        net.load_state_dict(load_file(directory / WEIGHTS))
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as e:
        raise ValueError(f"cannot load prior {directory}: {str(e).splitlines()[0]}") from None
    return card, card.denoiser(net.to(device).eval())


def clip_fingerprint(clip_dir: str | Path) -> str:
    """The sha256 of a CLIP folder's weights: which CLIP a prior and a decoder were trained on."""
    import hashlib

    from difforge.models.clip import WEIGHTS as CLIP_WEIGHTS

    h = hashlib.sha256()
    with open(Path(clip_dir) / CLIP_WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
