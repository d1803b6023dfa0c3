"""The one interface samplers see: D(x, sigma, cond) -> estimate of the clean image.

`x` lives in the variance-exploding frame of Karras et al. (2022): x = x0 + sigma * n.
A discrete DDPM network predicts eps from the variance-preserving input
x_vp = x / sqrt(1 + sigma^2) at timestep t(sigma); this adapter converts between the two.
"""

from __future__ import annotations

import torch
from torch import nn

from difforge.diffusion.schedules import DiscreteSchedule


class EpsDenoiser(nn.Module):
    """Adapter from a discrete-time eps-prediction network to D(x, sigma, cond).

    D(x, sigma) = x - sigma * eps(c_in * x, t(sigma)), c_in = 1 / sqrt(1 + sigma^2)
    (Karras et al. 2022, Table 1, "VP" column). Computation outside the network is in
    the dtype of `x` (use float64 for exact parity tests); the network sees its own dtype.
    """

    variance_preserving = True  # the prior at sigma_max is N(0, (1 + sigma_max^2) I)

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule):
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.num_classes: int | None = getattr(net, "num_classes", None)

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def net_dtype(self) -> torch.dtype:
        p = next(self.net.parameters(), None)
        return torch.float32 if p is None else p.dtype

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        shape = (-1,) + (1,) * (x.ndim - 1)
        s = sigma.to(x.dtype).view(shape)
        c_in = 1.0 / torch.sqrt(1.0 + s**2)
        t = self.schedule.sigma_to_t(sigma)
        dt = self.net_dtype()
        eps = self.net((c_in * x).to(dt), t.to(torch.float32), cond)
        return x - s * eps.to(x.dtype)

    def prior_std(self, sigma_max: float | None = None) -> float:
        """Standard deviation of x at the start of sampling."""
        s = self.sigma_max if sigma_max is None else sigma_max
        return (1.0 + s * s) ** 0.5 if self.variance_preserving else s
