"""Score SDEs in continuous time (Song et al. 2021, "Score-based generative modeling
through stochastic differential equations") and NCSN's geometric noise levels (Song &
Ermon 2019, "Generative modeling by estimating gradients of the data distribution").

Each process has a marginal x_t = alpha(t) x0 + std(t) n. Seen in the variance-exploding
frame of Karras et al. (2022), x_t / alpha(t) = x0 + sigma(t) n with sigma = std / alpha:
that noise level is all the samplers see. Each class is a `NoiseProcess`
(`difforge.diffusion.process`): a grid of `timesteps` levels at equally spaced times (so
the "leading"/"trailing" grids work), c_in = alpha (the network sees its own x_t),
c_noise = 999 t(sigma) (the 0..999 scale of DDPM timesteps), its prior and its training
noise levels.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from difforge.diffusion.process import GridProcess

if TYPE_CHECKING:
    from difforge.diffusion.frameworks import FrameworkSpec


def _f64(v) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


class VPSDE(GridProcess):
    """Variance-preserving SDE dx = -beta(t)/2 x dt + sqrt(beta(t)) dw, t in [0, 1],
    beta(t) = beta_min + t (beta_max - beta_min): the continuous limit of DDPM's linear
    schedule (Song et al. 2021, Eq. 11; beta_min = T beta_1, beta_max = T beta_T).

    Marginal: alpha(t) = exp(-B(t)/2), std(t) = sqrt(1 - alpha^2), with
    B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2 (Eq. 33), so
    sigma(t) = sqrt(exp(B(t)) - 1). Training draws t ~ U(t_train, 1) (Song et al. use
    1e-5); sampling stops at t_min = 1e-3 (their sampling epsilon).
    """

    name = "vp-sde"
    predictions = ("eps", "x0", "v")
    allows_min_snr = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, timesteps: int = 1000,
                 t_min: float = 1e-3, t_train: float = 1e-5, *, min_snr_gamma: float | None = None):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.timesteps = float(beta_min), float(beta_max), int(timesteps)
        self.t_min, self.t_train = float(t_min), float(t_train)
        self._weighting(min_snr_gamma)

    @classmethod
    def from_spec(cls, spec: FrameworkSpec) -> VPSDE:
        # the continuous limit of the linear schedule: beta(t) = T beta_start .. T beta_end
        T = spec.timesteps
        return cls(T * spec.beta_start, T * spec.beta_end, T, min_snr_gamma=spec.min_snr_gamma)

    def grid_times(self) -> torch.Tensor:
        return torch.linspace(self.t_min, 1.0, self.timesteps, dtype=torch.float64)

    def beta(self, t) -> torch.Tensor:
        return self.beta_min + _f64(t) * (self.beta_max - self.beta_min)

    def integral_beta(self, t) -> torch.Tensor:
        t = _f64(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _t_of_integral(self, b: torch.Tensor) -> torch.Tensor:
        # solve beta_min t + (beta_max - beta_min) t^2 / 2 = b for t >= 0 (stable root form)
        a = 0.5 * (self.beta_max - self.beta_min)
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 4 * a * b))

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(-0.5 * self.integral_beta(t))

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return -0.5 * self.beta(t).to(x.dtype) * x

    def diffusion(self, t) -> torch.Tensor:
        return self.beta(t).sqrt()

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), std(t)) of x_t = alpha x0 + std n, in closed form."""
        a = self.alpha(t)
        return a, torch.sqrt(-torch.expm1(-self.integral_beta(t)))

    def sigma(self, t) -> torch.Tensor:
        return torch.sqrt(torch.expm1(self.integral_beta(t)))

    def t_of_sigma(self, sigma) -> torch.Tensor:
        return self._t_of_integral(torch.log1p(_f64(sigma) ** 2))

    def scale(self, sigma) -> torch.Tensor:
        return 1.0 / torch.sqrt(1.0 + _f64(sigma) ** 2)  # = alpha(t(sigma))

    def c_noise(self, sigma) -> torch.Tensor:
        return 999.0 * self.t_of_sigma(sigma)  # EDM, Table 1 (VP): (M - 1) t

    def prior_std(self, sigma: float | None = None) -> float:
        s = self.sigma_max if sigma is None else float(sigma)
        return math.sqrt(1.0 + s * s)

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        return self.sigma(self.t_train + (1 - self.t_train) * u)


class SubVPSDE(VPSDE):
    """Sub-VP SDE dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw (Song et al.
    2021, Eq. 17): the VP drift with less noise; std(t) = 1 - exp(-B(t)) <= the VP's.

    sigma = std / alpha, so alpha solves alpha^2 + sigma alpha - 1 = 0.
    """

    name = "subvp-sde"

    def diffusion(self, t) -> torch.Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.integral_beta(t)))

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        return self.alpha(t), -torch.expm1(-self.integral_beta(t))

    def sigma(self, t) -> torch.Tensor:
        b = self.integral_beta(t)
        return -torch.expm1(-b) * torch.exp(0.5 * b)

    def alpha_of_sigma(self, sigma) -> torch.Tensor:
        s = _f64(sigma)
        return 2.0 / (s + torch.sqrt(s * s + 4.0))

    def t_of_sigma(self, sigma) -> torch.Tensor:
        return self._t_of_integral(-2.0 * torch.log(self.alpha_of_sigma(sigma)))

    def scale(self, sigma) -> torch.Tensor:
        return self.alpha_of_sigma(sigma)  # the network sees the sub-VP x_t itself

    def prior_std(self, sigma: float | None = None) -> float:
        s = self.sigma_max if sigma is None else float(sigma)
        return float(1.0 / self.alpha_of_sigma(s))  # x_t ~ N(0, I) at the end, as Song et al.


class VESDE(GridProcess):
    """Variance-exploding SDE dx = sqrt(d sigma^2/dt) dw with sigma(t) = sigma_min
    (sigma_max / sigma_min)^t (Song et al. 2021, Eq. 9 and Appendix C): the continuous
    limit of NCSN. Drift 0, diffusion g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min)).

    The SDE started at t = 0 adds variance sigma(t)^2 - sigma_min^2 (`marginal`); Song et
    al. treat the data as already carrying sigma_min of noise and use the kernel
    N(x0, sigma(t)^2 I), so `sigma(t)` is the noise level the network is trained at.
    Network input unscaled (c_in = 1, EDM Table 1, VE); c_noise = 999 t(sigma), an
    affine map of ln(sigma).
    """

    name = "ve-sde"
    predictions = ("eps",)  # a score network, trained and stored as eps = -sigma * score
    # sigma_max about the largest distance between two training images in [-1, 1]
    # (Song & Ermon 2020, "Improved techniques for training score-based models", technique 1)
    default_sigma_range = (0.01, 50.0)

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, timesteps: int = 1000):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.smin, self.smax, self.timesteps = float(sigma_min), float(sigma_max), int(timesteps)
        self._log_ratio = math.log(self.smax / self.smin)

    def grid_times(self) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, self.timesteps, dtype=torch.float64)

    def sigma(self, t) -> torch.Tensor:
        return self.smin * torch.exp(_f64(t) * self._log_ratio)

    def t_of_sigma(self, sigma) -> torch.Tensor:
        return torch.log(_f64(sigma) / self.smin) / self._log_ratio

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t) -> torch.Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, std) of the SDE's solution from t = 0: std^2 = sigma(t)^2 - sigma_min^2."""
        s = self.sigma(t)
        return torch.ones_like(s), torch.sqrt(s**2 - self.smin**2)

    def scale(self, sigma) -> torch.Tensor:
        return torch.ones_like(_f64(sigma))

    def c_noise(self, sigma) -> torch.Tensor:
        return 999.0 * self.t_of_sigma(sigma)

    def prior_std(self, sigma: float | None = None) -> float:
        return self.sigma_max if sigma is None else float(sigma)

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sigma(torch.rand(batch, generator=generator, dtype=torch.float64))


def ncsn_sigmas(sigma_min: float, sigma_max: float, levels: int) -> torch.Tensor:
    """NCSN's noise levels: a geometric sequence from sigma_min up to sigma_max, float64,
    increasing (Song & Ermon 2019, Section 4.2: sigma_1 > ... > sigma_L with a common ratio,
    listed here from sigma_L up)."""
    if levels < 2:
        raise ValueError(f"NCSN needs at least 2 noise levels, got {levels}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    s = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), levels, dtype=torch.float64))
    s[0], s[-1] = sigma_min, sigma_max
    return s


class NCSNLevels(VESDE):
    """A noise-conditional score network's L geometric noise levels (Song & Ermon 2019).

    Training picks one of the L levels uniformly (denoising score matching with
    lambda(sigma) = sigma^2, their Eq. 6); the network is told the level's position
    c_noise = 999 i / (L - 1). In the VE frame the levels are exactly the VE SDE's sigmas
    at L equally spaced times, so sampling between them is well defined.
    """

    name = "ncsn"

    def grid_times(self) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, self.timesteps, dtype=torch.float64)

    @property
    def sigmas(self) -> torch.Tensor:
        return ncsn_sigmas(self.smin, self.smax, self.timesteps)

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.randint(0, self.timesteps, (batch,), generator=generator)
        return self.sigmas[idx]
