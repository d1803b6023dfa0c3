"""The one interface samplers see: D(x, sigma, cond) -> estimate of the clean image.

`x` lives in the variance-exploding frame of Karras et al. (2022): x = x0 + sigma * n.
A network F trained in any framework becomes a denoiser by its noise process (what
scales x and which noise input the network gets) and its prediction target:

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

(Karras et al. 2022, Eq. 7 and Table 1). A discrete DDPM eps-network sees the VP input
x_vp = x / sqrt(1 + sigma^2) at timestep t(sigma) and gives D = x - sigma eps; VP and
sub-VP SDE networks see their own x_t; NCSN and VE SDE score networks see x itself and
their eps = -sigma * score; EDM networks are preconditioned as in its Table 1.
"""

from __future__ import annotations

import torch
from torch import nn

from difforge.diffusion.parameterization import skip_out
from difforge.diffusion.schedules import DiscreteSchedule


def as_noise(schedule):
    """A noise process from a `DiscreteSchedule` (DDPM) or a process itself."""
    if isinstance(schedule, DiscreteSchedule):
        from difforge.diffusion.frameworks import DDPMNoise

        return DDPMNoise(schedule)
    return schedule


class Denoiser(nn.Module):
    """Adapter from a network F(x, c_noise, cond) to D(x, sigma, cond).

    `noise` is a noise process (`difforge.diffusion.frameworks.make_noise`, or a
    `DiscreteSchedule`), `prediction` one of eps, x0, v, edm. Coefficients are computed in
    float64 and applied in the dtype of `x` (use float64 for exact parity tests); the
    network sees its own dtype.
    """

    def __init__(self, net: nn.Module, noise, prediction: str = "eps"):
        super().__init__()
        self.net = net
        self.noise = as_noise(noise)
        self.schedule = noise  # what it was built from (a DiscreteSchedule for DDPM)
        self.prediction = prediction
        skip_out(prediction, torch.ones(1))  # a clear error for unknown predictions
        self.num_classes: int | None = getattr(net, "num_classes", None)

    @property
    def variance_preserving(self) -> bool:
        return bool(self.noise.variance_preserving)

    @property
    def sigma_min(self) -> float:
        return self.noise.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.noise.sigma_max

    def net_dtype(self) -> torch.dtype:
        p = next(self.net.parameters(), None)
        return torch.float32 if p is None else p.dtype

    def network_output(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """F(c_in x, c_noise, cond) in the network's dtype; sigma is (B,) float64."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        c_in = self.noise.c_in(sigma).to(x.device, x.dtype).view(shape)
        c_noise = self.noise.c_noise(sigma).to(x.device, torch.float32)
        return self.net((c_in * x).to(self.net_dtype()), c_noise, cond)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        shape = (-1,) + (1,) * (x.ndim - 1)
        c_skip, c_out = skip_out(self.prediction, sigma)
        out = self.network_output(x, sigma, cond)
        return c_skip.to(x.dtype).view(shape) * x + c_out.to(x.dtype).view(shape) * out.to(x.dtype)

    def prior_std(self, sigma_max: float | None = None) -> float:
        """Standard deviation of x at the start of sampling (the process's prior at sigma_max)."""
        return self.noise.prior_std(self.sigma_max if sigma_max is None else sigma_max)


class EpsDenoiser(Denoiser):
    """A discrete-time (or any process's) eps-prediction network as D(x, sigma, cond):
    D(x, sigma) = x - sigma * eps(c_in * x, t(sigma)), c_in = 1 / sqrt(1 + sigma^2) for DDPM
    (Karras et al. 2022, Table 1, "VP" column)."""

    def __init__(self, net: nn.Module, schedule):
        super().__init__(net, schedule, "eps")
