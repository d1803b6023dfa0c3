"""The model object: a network, its noise process and its prediction target, as the one
denoiser D(x, sigma, cond) -> estimate of the clean image, and its training loss.

`x` lives in the variance-exploding frame of Karras et al. (2022): x = x0 + sigma * n.
A network F trained in any framework becomes a denoiser by its process's preconditioning
(`NoiseProcess.precondition`):

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

(Karras et al. 2022, Eq. 7 and Table 1). A discrete DDPM eps-network sees the VP input
x_vp = x / sqrt(1 + sigma^2) at timestep t(sigma) and gives D = x - sigma eps; VP and
sub-VP SDE networks see their own x_t; NCSN and VE SDE score networks see x itself and
their eps = -sigma * score; EDM networks are preconditioned as in its Table 1. The loss
regresses F on its target through the same coefficients (EDM, Eq. 8; k-diffusion's
`layers.Denoiser.loss`), so one loss serves every framework and prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from difforge.diffusion.parameterization import skip_out
from difforge.diffusion.process import NoiseProcess, Preconditioning, float64_device
from difforge.models.frames import FrameCond


class Denoiser(nn.Module):
    """A network F(x, c_noise, cond), its `process` (`difforge.diffusion.make_process`) and
    its `prediction` (eps, x0, v or edm, one the process allows) as D(x, sigma, cond).

    Coefficients are computed in float64 and applied in the dtype of `x` (use float64 for
    exact parity tests); the network sees its own dtype, or runs under autocast to
    `autocast` (a dtype; None: off) when sampling sets it. `net` may be a wrapper of the
    network (DistributedDataParallel): the loss then runs through it.
    """

    def __init__(self, net: nn.Module, process: NoiseProcess, prediction: str):
        super().__init__()
        skip_out(prediction, torch.ones(1))  # a clear error for unknown predictions
        if prediction not in process.predictions:
            raise ValueError(f"framework {process.name!r} trains prediction {list(process.predictions)}, "
                             f"not {prediction!r}")
        self.net = net
        self.process = process
        self.prediction = prediction
        self.autocast: torch.dtype | None = None

    @property
    def sigma_min(self) -> float:
        return self.process.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.process.sigma_max

    def net_dtype(self) -> torch.dtype:
        p = next(self.net.parameters(), None)
        return torch.float32 if p is None else p.dtype

    def precondition(self, sigma: torch.Tensor) -> Preconditioning:
        return self.process.precondition(sigma, self.prediction)

    def network_output(self, x: torch.Tensor, sigma: torch.Tensor, cond=None, pre: Preconditioning | None = None):
        """F(c_in x, c_noise, cond) in the network's dtype; sigma is (B,) float64."""
        pre = self.precondition(sigma) if pre is None else pre
        shape = (-1,) + (1,) * (x.ndim - 1)
        c_in = pre.c_in.to(x.device, x.dtype).view(shape)
        c_noise = pre.c_noise.to(x.device, torch.float32)
        if self.autocast is None:
            return self.net((c_in * x).to(self.net_dtype()), c_noise, cond)
        with torch.autocast(x.device.type, dtype=self.autocast):
            return self.net((c_in * x).to(self.net_dtype()), c_noise, cond).float()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond=None) -> torch.Tensor:
        """D(x, sigma, cond): the estimate of x0 (EDM, Eq. 7)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=float64_device(x.device))
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        shape = (-1,) + (1,) * (x.ndim - 1)
        pre = self.precondition(sigma)
        out = self.network_output(x, sigma, cond, pre)
        c_skip, c_out = pre.c_skip.to(x.device, x.dtype).view(shape), pre.c_out.to(x.device, x.dtype).view(shape)
        return c_skip * x + c_out * out.to(x.dtype)

    def loss(
        self,
        x0: torch.Tensor,
        cond=None,
        *,
        generator: torch.Generator,
        autocast: torch.dtype | None = None,
        rows: slice | None = None,
        global_batch: int | None = None,
    ) -> torch.Tensor:
        """The denoising loss of a batch of clean images `x0` (model space).

        Noise levels come from the process (`sample_sigmas`: DDPM's uniform timesteps,
        NCSN's uniform level, the SDEs' uniform t, EDM's log-normal), then the noise n, both
        drawn on the CPU from `generator` in that order, so runs are reproducible and
        resumable on any device. With x = x0 + sigma n, F = net(c_in x, c_noise, cond) is
        regressed on its target (x0 - c_skip x) / c_out: the noise for eps (Ho et al. 2020,
        Eq. 14; NCSN's denoising score matching with lambda = sigma^2, Song & Ermon 2019,
        Eq. 6), x0, v, or EDM's F with lambda(sigma) c_out^2 = 1 (Karras et al. 2022, Eq. 8),
        each sample weighted by `process.loss_weight` (min-SNR-gamma, Hang et al. 2023).
        A clip with observed frames (a `FrameCond` mask) is scored on its latent frames only,
        as in Flexible Diffusion Models: the observed ones are given to the network and
        replaced by their true values at sampling, so their error teaches nothing.
        `autocast`: the network's autocast dtype (None: off); the loss is float32.

        Under data parallelism `x0` holds rows `rows` of a global batch of `global_batch`
        images: levels and noise are drawn for the whole global batch and sliced, so each
        sample's noise does not depend on the number of processes.
        """
        b = x0.shape[0] if global_batch is None else global_batch
        rows = rows if rows is not None else slice(0, b)
        wide_at = float64_device(x0.device)
        wide = torch.float64 if wide_at == x0.device else torch.float32  # float32 targets only on MPS
        sigma = self.process.sample_sigmas(b, generator)[rows].to(wide_at)  # (B,) float64
        n = torch.randn((b, *x0.shape[1:]), generator=generator)[rows].to(x0.device, x0.dtype)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        x = x0 + sigma.to(x0.device, x0.dtype).view(shape) * n
        pre = self.precondition(sigma)
        with torch.autocast(x0.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            out = self.network_output(x, sigma, cond, pre)
        c_skip, c_out = pre.c_skip.to(x0.device, wide).view(shape), pre.c_out.to(x0.device, wide).view(shape)
        target = ((x0.to(wide) - c_skip * x.to(wide)) / c_out).float()
        per_sample = latent_frames_mean((out.float() - target) ** 2, cond)  # (B,)
        weight = self.process.loss_weight(self.prediction, sigma)
        if weight is not None:
            per_sample = per_sample * weight.to(per_sample.device).float()
        return per_sample.mean()

    def prior_std(self, sigma_max: float | None = None) -> float:
        """Standard deviation of x at the start of sampling (the process's prior at sigma_max)."""
        return self.process.prior_std(self.sigma_max if sigma_max is None else sigma_max)


def latent_frames_mean(error: torch.Tensor, cond) -> torch.Tensor:
    """The mean of `error` (B, ...) per sample, (B,); for clips (B, C, T, H, W) with observed
    frames (`cond` a `FrameCond` whose mask (B, T) is True where a frame is given), the
    mean over the latent frames only (a clip with none latent scores 0)."""
    mask = cond.mask if isinstance(cond, FrameCond) else None
    if mask is None or error.ndim != 5 or not bool(mask.any()):
        return error.flatten(1).mean(1)
    latent = (~mask.to(error.device, torch.bool)).to(error.dtype)  # (B, T)
    per_frame = error.mean(dim=(1, 3, 4))  # (B, T): every frame has C H W elements
    return (per_frame * latent).sum(1) / latent.sum(1).clamp(min=1)

