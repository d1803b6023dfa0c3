"""Residual video diffusion (RVD; Yang, Srivastava & Mandt 2022, "Diffusion probabilistic
modeling for video generation").

A clip is made one frame at a time. A deterministic next-frame predictor mu(context) reads
the last K frames, stacked as channels; a diffusion model generates the scaled residual

    r = (x_next - mu) / scale,        x_next = mu + scale * r,

conditioned on the same K frames, on mu and on the class. Sampling is an autoregressive
rollout: each new frame becomes part of the next frame's context (`rollout`).

Choices (docs/video.md, "Residual video diffusion"):

- The predictor is the last context frame plus a learned correction whose output layer
  starts at zero, so an untrained predictor copies the last frame and its residuals are
  frame differences: a meaningful scale from the first step on.
- It is trained by its own MSE loss, and the diffusion loss sees mu detached. The paper
  back-propagates the diffusion loss into the predictor instead. Here the MSE optimum is
  the conditional mean, so the residual is zero-mean as the diffusion prior assumes,
  and the two losses need no relative weight that a user would have to tune.
- `scale` is a running root mean square of the residuals of the training batches
  (momentum `scale_momentum`; the first batch sets it), kept as a buffer so that
  checkpoints, the EMA copy and exported models carry it. The paper's residual scale is a
  fixed hyperparameter; measuring it keeps the diffusion target at about unit variance
  however good the predictor has become, which a single early measurement would not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from difforge.models.denoiser import Denoiser
from difforge.models.frames import FrameCond
from difforge.models.layers import group_norm
from difforge.models.unet import UNet

SCALE_FLOOR = 1e-3  # the smallest residual scale (an exact predictor leaves zero residuals)


def to_residual(frame: torch.Tensor, mu: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """r = (frame - mu) / scale: the diffusion model's target."""
    return (frame - mu) / scale


def from_residual(r: torch.Tensor, mu: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """frame = mu + scale * r, the inverse of `to_residual`."""
    return mu + scale * r


def context_and_target(clips: torch.Tensor, pos: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For clips (B, C, T, H, W) and positions `pos` (B,) with k <= pos < T: the context, frames
    pos-k..pos-1 stacked as channels (B, k C, H, W), oldest first, and the target frame pos."""
    b, c, t, h, w = clips.shape
    if pos.min() < k or pos.max() >= t:
        raise ValueError(f"positions must be in {k}..{t - 1}")
    pos = pos.to(clips.device)
    rows = torch.arange(b, device=clips.device)
    idx = pos[:, None] - k + torch.arange(k, device=clips.device)[None]
    by_frame = clips.transpose(1, 2)  # (B, T, C, H, W)
    return by_frame[rows[:, None], idx].reshape(b, k * c, h, w), by_frame[rows, pos]


def stack_context(frames: Sequence[torch.Tensor]) -> torch.Tensor:
    """Frames (B, C, H, W), oldest first, as one context (B, K C, H, W) (`context_and_target`'s layout)."""
    return torch.cat(list(frames), dim=1)


@dataclass(frozen=True, eq=False)
class ResidualCond:
    """The residual network's conditioning: `context` (B, K C, H, W), `mu` (B, C, H, W) and
    `labels` (B,) or None. A structured cond batch, as `FrameCond`."""

    context: torch.Tensor
    mu: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.context.shape[0]

    def _map(self, fn) -> ResidualCond:
        return ResidualCond(fn(self.context), fn(self.mu), None if self.labels is None else fn(self.labels))

    def __getitem__(self, index) -> ResidualCond:
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return self._map(lambda t: t[index])

    def to(self, device) -> ResidualCond:
        return self._map(lambda t: t.to(device))

    @staticmethod
    def cat(items: Sequence[ResidualCond]) -> ResidualCond:
        items = list(items)
        labels = None if items[0].labels is None else torch.cat([c.labels for c in items])
        return ResidualCond(torch.cat([c.context for c in items]), torch.cat([c.mu for c in items]), labels)


class _PredictorBlock(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(F.silu(self.norm(x)))


class FramePredictor(nn.Module):
    """mu(context) = last context frame + a correction by dilated residual convolutions over
    the K frames stacked as channels (receptive field 1 + 2 sum(dilations) pixels). The
    correction's output layer starts at zero: untrained, mu copies the last frame."""

    def __init__(self, channels: int, context: int, width: int = 32, dilations: Sequence[int] = (1, 2, 4, 1)):
        super().__init__()
        self.channels, self.context = channels, context
        self.inp = nn.Conv2d(channels * context, width, 3, padding=1)
        self.blocks = nn.Sequential(*(_PredictorBlock(width, d) for d in dilations))
        self.norm = group_norm(width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        last = context[:, -self.channels:]
        return last + self.out(F.silu(self.norm(self.blocks(self.inp(context)))))


class RVDNet(nn.Module):
    """The two networks of residual video diffusion in one module (one set of weights, one
    EMA, one checkpoint): `predictor` (`FramePredictor`) and `residual`, a `UNet` over one
    residual frame with the context and mu as extra input channels, class-conditional with
    `num_classes`. `forward(x, c_noise, cond: ResidualCond)` is the residual network; the
    `scale` buffer is the residual scale (module docstring).

    Args:
        context: K, the frames the predictor and the residual network see.
        predictor_width, predictor_dilations: the predictor's width and its blocks' dilations.
        base_channels, channel_mults, num_res_blocks, attention_levels, num_heads, dropout,
            time_dim: the residual UNet's (`difforge.models.unet.UNet`).
        scale_momentum: of the running residual RMS.
        cond_channels: what a video card's conditioning asks for (observed frames and a
            mask); RVD makes its own context channels, so it is not used.
    """

    takes_clips = True

    def __init__(self, in_channels: int, out_channels: int, num_classes: int | None, *, context: int = 4,
                 predictor_width: int = 32, predictor_dilations: tuple[int, ...] = (1, 2, 4, 1),
                 base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1,
                 attention_levels: tuple[int, ...] = (2,), num_heads: int = 4, dropout: float = 0.0,
                 time_dim: int | None = None, scale_momentum: float = 0.99, cond_channels: int = 0):
        super().__init__()
        if context < 1:
            raise ValueError(f"context must be >= 1 frame, got {context}")
        if not 0 <= scale_momentum < 1:
            raise ValueError(f"scale_momentum must be in [0, 1), got {scale_momentum}")
        if out_channels != in_channels:
            raise ValueError("an RVD model predicts frames of its input's channels")
        self.channels, self.context, self.num_classes = in_channels, context, num_classes
        self.scale_momentum = scale_momentum
        self.predictor = FramePredictor(in_channels, context, predictor_width, predictor_dilations)
        self.residual = UNet(in_channels * (context + 2), out_channels, num_classes, base_channels=base_channels,
                             channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                             attention_levels=attention_levels, num_heads=num_heads, dropout=dropout,
                             time_dim=time_dim)
        self.size_multiple = self.residual.size_multiple
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("scale_updates", torch.zeros((), dtype=torch.long))

    def predict(self, context: torch.Tensor) -> torch.Tensor:
        """mu: the predicted next frame (B, C, H, W) of a context (B, K C, H, W)."""
        if context.ndim != 4 or context.shape[1] != self.channels * self.context:
            raise ValueError(f"a context must be (B, {self.channels * self.context}, H, W) ({self.context} frames of "
                             f"{self.channels} channels), got {tuple(context.shape)}")
        return self.predictor(context)

    @torch.no_grad()
    def observe_residuals(self, residual: torch.Tensor) -> None:
        """Update the running residual RMS with a batch of unscaled residuals frame - mu."""
        ms = residual.float().pow(2).mean().clamp_min(SCALE_FLOOR ** 2)
        m = self.scale_momentum if int(self.scale_updates) else 0.0
        self.scale.copy_((m * self.scale.float() ** 2 + (1 - m) * ms).sqrt())
        self.scale_updates += 1

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: ResidualCond) -> torch.Tensor:
        if not isinstance(cond, ResidualCond):
            raise ValueError("an RVD residual network is conditioned on its context frames (a ResidualCond)")
        inp = torch.cat([x, cond.context.to(x.dtype), cond.mu.to(x.dtype)], dim=1)
        return self.residual(inp, c_noise, cond.labels)


def check_context(context: int, frames: int | None) -> None:
    """A one-line error unless clips of `frames` frames are longer than the context."""
    if frames is not None and context >= frames:
        raise ValueError(f"an RVD model with a context of {context} frames needs clips longer than {context} frames; "
                         f"these have {frames} (set model.architecture.context below {frames})")


def core_network(net: nn.Module) -> RVDNet:
    """The `RVDNet` of `net` (itself, or what torch.compile wrapped); one-line errors otherwise."""
    if isinstance(net, nn.parallel.DistributedDataParallel):
        raise ValueError("residual video diffusion trains in one process: data-parallel training is not supported")
    core = getattr(net, "_orig_mod", net)
    if not isinstance(core, RVDNet):
        raise ValueError(f"expected an RVD network, got {type(core).__name__}")
    return core


class RVDDenoiser(Denoiser):
    """The model object of residual video diffusion: `forward` is D over one residual frame
    (cond a `ResidualCond`), `loss` is the training loss of whole clips (`loss`), and
    `frames`, the clip length of the training data, must exceed the context."""

    def __init__(self, net: nn.Module, process, prediction: str, frames: int | None = None,
                 predictor_weight: float = 1.0):
        super().__init__(net, process, prediction)
        check_context(core_network(net).context, frames)
        self.predictor_weight = predictor_weight

    @property
    def core(self) -> RVDNet:
        return core_network(self.net)

    def loss(self, x0: torch.Tensor, cond=None, *, generator: torch.Generator, autocast: torch.dtype | None = None,
             rows: slice | None = None, global_batch: int | None = None) -> torch.Tensor:
        """The loss of clean clips `x0` (B, C, T, H, W), rows `rows` of a batch of `global_batch`
        (gradient accumulation; `Denoiser.loss`): for each clip a frame position p in
        K..T-1 drawn from `generator` (before the noise levels and the noise), the
        predictor's MSE on frame p from frames p-K..p-1, plus the denoising loss
        (`Denoiser.loss`) of the scaled residual given the context, mu (detached) and the
        label (`cond.labels` of a `FrameCond`, or (B,) labels, or None). In training mode the
        batch's residuals update the running scale first."""
        core = self.core
        if x0.ndim != 5:
            raise ValueError(f"an RVD model trains on clips (B, C, T, H, W), got {tuple(x0.shape)}")
        t, k = x0.shape[2], core.context
        b = x0.shape[0] if global_batch is None else global_batch  # gradient accumulation: rows of a larger batch
        rows = rows if rows is not None else slice(0, b)
        if t <= k:
            raise ValueError(f"clips of {t} frames are too short for a context of {k} frames")
        pos = torch.randint(k, t, (b,), generator=generator)[rows]
        context, target = context_and_target(x0, pos, k)
        with torch.autocast(x0.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            mu = core.predict(context).float()
        mse = (mu - target.float()).pow(2).mean()
        mu = mu.detach()
        if core.training and torch.is_grad_enabled():
            core.observe_residuals(target - mu)
        labels = cond.labels if isinstance(cond, FrameCond) else cond
        r = to_residual(target, mu.to(target.dtype), core.scale.to(target.dtype))
        diffusion = super().loss(r, ResidualCond(context, mu, labels), generator=generator, autocast=autocast,
                                 rows=rows, global_batch=b)
        return diffusion + self.predictor_weight * mse


class ClampResidual(nn.Module):
    """D over residuals with its estimate clipped so that mu + scale * r lies in [-1, 1]."""

    def __init__(self, denoiser: nn.Module, scale: torch.Tensor):
        super().__init__()
        self.denoiser, self.scale = denoiser, scale

    def forward(self, x: torch.Tensor, sigma, cond: ResidualCond) -> torch.Tensor:
        mu, s = cond.mu.to(x.dtype), self.scale.to(x.device, x.dtype)
        return torch.minimum(torch.maximum(self.denoiser(x, sigma, cond), (-1 - mu) / s), (1 - mu) / s)


@torch.no_grad()
def rollout(model: RVDDenoiser, given: torch.Tensor, frames: int, labels: torch.Tensor | None,
            sample_residual: Callable[[nn.Module, ResidualCond], torch.Tensor], clip: bool = True) -> torch.Tensor:
    """Clips (B, C, frames, H, W) continuing `given` (B, C, G, H, W) (model space, G >= K) one
    frame at a time: mu from the last K frames, a residual from `sample_residual(D, cond)`
    (a sampler run from noise; D clipped to keep frames in [-1, 1] with `clip`), frame =
    mu + scale r (clamped to [-1, 1]), fed back as context. The given frames are kept
    exactly."""
    core = model.core
    k, g = core.context, given.shape[2]
    if g < k:
        raise ValueError(f"this RVD model predicts from its last {k} frames: give at least {k}, got {g}")
    if frames <= g:
        raise ValueError(f"{frames} frames with {g} given: nothing is left to make")
    den = ClampResidual(model, core.scale) if clip else model
    out = list(given.unbind(2))
    for _ in range(g, frames):
        context = stack_context(out[-k:])
        mu = core.predict(context)
        r = sample_residual(den, ResidualCond(context, mu, labels))
        out.append(from_residual(r.to(mu.dtype), mu, core.scale.to(mu.dtype)).clamp(-1, 1))
    return torch.stack(out, dim=2)


def given_prefix(mask: torch.Tensor, context: int) -> tuple[int, int]:
    """(G, T) of a mask of given frames ((T,) or (N, T) bool, the same in every row) that
    gives the first G >= `context` frames of T; one-line errors for any other mask."""
    mask = torch.as_tensor(mask, dtype=torch.bool).cpu()
    if mask.ndim == 2:
        if not (mask == mask[:1]).all():
            raise ValueError("an RVD model continues the same number of given frames in every clip")
        mask = mask[0]
    if mask.ndim != 1:
        raise ValueError(f"the frame mask must be (T,) or (N, T), got {tuple(mask.shape)}")
    g, t = int(mask.sum()), mask.shape[0]
    if not mask[:g].all():
        raise ValueError(f"an RVD model predicts forward: the given frames must be the first ones (--given first:G), "
                         f"got frames {mask.nonzero().flatten().tolist()}")
    if g < context:
        raise ValueError(f"this RVD model predicts from its last {context} frames: give at least the first "
                         f"{context} (--given first:{context}), got {g}")
    if g >= t:
        raise ValueError(f"{t} frames with {g} given: nothing is left to make")
    return g, t
