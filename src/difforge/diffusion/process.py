"""The noise process: what every framework tells a denoiser, a sampler and the loss.

Every framework (DDPM, NCSN, the VP / sub-VP / VE score SDEs, EDM) is seen in the
variance-exploding frame of Karras et al. (2022): x = x0 + sigma n. Its own state is a
scaling of that, x_t = s(sigma) x, and its network F is preconditioned as

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

(EDM, Eq. 7 and Table 1). `NoiseProcess` is the one interface; `GridProcess` is the
shared implementation (a grid of `timesteps` noise levels and the index <-> sigma map on
it). A framework defines its noise levels, c_in / c_noise, the prior and how training draws
noise levels; c_skip / c_out come from the prediction target
(`difforge.diffusion.parameterization.skip_out`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from difforge.diffusion.parameterization import min_snr_weight, skip_out

if TYPE_CHECKING:
    from difforge.diffusion.frameworks import FrameworkSpec
    from difforge.diffusion.schedules import DiscreteSchedule


def float64_device(device: torch.device) -> torch.device:
    """Where float64 coefficient maths for tensors on `device` runs: the device itself, or
    the CPU for Apple's MPS, which has no float64 (the results move over in x's dtype)."""
    return torch.device("cpu") if device.type == "mps" else device


def _f64(v) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


# ---------------------------------------------------------------- sigma <-> index


def sigma_to_index(sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Fractional index of `sigma` in the increasing grid `sigmas`, linear in log sigma.

    Exact (the integer index) for sigmas on the grid; sigmas outside the grid's range are
    clamped to its ends. Feeds a sampler's off-grid noise levels to a network trained on
    integer timesteps (k-diffusion's `sigma_to_t`)."""
    sigma = _f64(sigma)
    log_s = sigmas.log().to(sigma.device)
    ls = sigma.clamp(min=float(sigmas[0]), max=float(sigmas[-1])).log()
    idx = torch.searchsorted(log_s, ls.contiguous()).clamp(1, len(sigmas) - 1)
    lo, hi = log_s[idx - 1], log_s[idx]
    return (idx - 1).to(torch.float64) + ((ls - lo) / (hi - lo)).clamp(0, 1)


def index_to_sigma(sigmas: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Noise level at (possibly fractional) indices `t` of the grid, interpolating log sigma."""
    t = _f64(t)
    log_s = sigmas.log().to(t.device)
    t = t.clamp(0, len(sigmas) - 1)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=len(sigmas) - 1)
    w = t - lo
    return ((1 - w) * log_s[lo] + w * log_s[hi]).exp()


# ---------------------------------------------------------------- the interface


@dataclass(frozen=True)
class Preconditioning:
    """The four coefficients of D = c_skip x + c_out F(c_in x, c_noise) (EDM, Eq. 7),
    float64, one per noise level."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


class Discretization(Protocol):
    """Increasing noise levels at the integer timesteps 0..timesteps-1: what the sampler
    grids need (`difforge.diffusion.grids`). A `DiscreteSchedule` is one."""

    @property
    def timesteps(self) -> int: ...
    @property
    def sigmas(self) -> torch.Tensor: ...
    @property
    def sigma_min(self) -> float: ...
    @property
    def sigma_max(self) -> float: ...


class NoiseProcess(Discretization, Protocol):
    """A framework's noise process (module docstring). All coefficients are float64.

    - `name`: the framework; `predictions`: the targets its network may be trained on (the
      first is the default); `min_snr_gamma`: min-SNR-gamma loss weighting, or None.
    - `sigma_to_t` / `t_to_sigma`: noise level <-> fractional timestep on the grid.
    - `scale(sigma)`: s of the process's own state x_t = s x (1 / sqrt(1 + sigma^2) for
      variance-preserving processes, 1 for variance-exploding ones).
    - `precondition(sigma, prediction)`: c_skip, c_out, c_in, c_noise.
    - `prior_std(sigma)`: std of pure noise at level sigma in the VE frame (default sigma_max).
    - `sample_sigmas(batch, generator)`: training noise levels (drawn on the CPU).
    - `loss_weight(prediction, sigma)`: per-sample weight on the loss of F, or None.
    - `discrete`: the DDPM Markov chain (a `DiscreteSchedule`) where the process is one:
      what the variational bound needs; None for the others.
    """

    name: str
    predictions: tuple[str, ...]
    min_snr_gamma: float | None
    discrete: DiscreteSchedule | None

    def sigma_to_t(self, sigma) -> torch.Tensor: ...
    def t_to_sigma(self, t) -> torch.Tensor: ...
    def scale(self, sigma) -> torch.Tensor: ...
    def precondition(self, sigma, prediction: str) -> Preconditioning: ...
    def prior_std(self, sigma: float | None = None) -> float: ...
    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor: ...
    def loss_weight(self, prediction: str, sigma: torch.Tensor) -> torch.Tensor | None: ...


# ---------------------------------------------------------------- the shared implementation


class SigmaGrid:
    """The noise-level range and the sigma <-> timestep map of anything with an
    increasing `sigmas` grid (the DDPM schedule and every process): one log-sigma
    interpolation, exact on the grid."""

    sigmas: torch.Tensor

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma) -> torch.Tensor:
        """Continuous timestep for a noise level (`sigma_to_index`)."""
        return sigma_to_index(self.sigmas, sigma)

    def t_to_sigma(self, t) -> torch.Tensor:
        """Noise level of (possibly fractional) timesteps (`index_to_sigma`)."""
        return index_to_sigma(self.sigmas, t)


class GridProcess(SigmaGrid):
    """What the processes share: `timesteps` noise levels at times `grid_times()` (a
    subclass defines `sigma(t)`, or overrides `sigmas`), the index <-> sigma map on them,
    c_in = s (the network sees the process's own x_t; EDM overrides it), the
    preconditioning, and min-SNR loss weighting where the framework allows it.

    Subclasses set `name`, `predictions`, `allows_min_snr`, `default_sigma_range` and
    define `from_spec` (build from a `FrameworkSpec`), `scale`, `c_noise`, `prior_std` and
    `sample_sigmas`."""

    name: ClassVar[str]
    predictions: ClassVar[tuple[str, ...]]
    allows_min_snr: ClassVar[bool] = False
    default_sigma_range: ClassVar[tuple[float, float] | None] = None  # set by sigmas (not betas): the default
    # Signal-to-noise ratio of the Langevin corrector of predictor-corrector sampling when
    # none is given: Song et al. (2021)'s 0.16 was tuned for VE processes (the VP ones set theirs).
    corrector_snr: ClassVar[float] = 0.16
    discrete: DiscreteSchedule | None = None
    timesteps: int
    min_snr_gamma: float | None = None

    def _weighting(self, min_snr_gamma: float | None) -> None:
        if min_snr_gamma is not None:
            if not self.allows_min_snr:
                raise ValueError(f"min-SNR weighting does not apply to {self.name!r}")
            if not min_snr_gamma > 0:
                raise ValueError(f"diffusion.min_snr_gamma must be > 0, got {min_snr_gamma}")
        self.min_snr_gamma = None if min_snr_gamma is None else float(min_snr_gamma)

    @classmethod
    def from_spec(cls, spec: FrameworkSpec) -> GridProcess:
        """From the sigma range (default `default_sigma_range`) and `timesteps` of a
        `difforge.diffusion.frameworks.FrameworkSpec`; processes set by betas override it."""
        lo, hi = cls.default_sigma_range
        return cls(lo if spec.sigma_min is None else spec.sigma_min, hi if spec.sigma_max is None else spec.sigma_max,
                   spec.timesteps)

    @property
    def sigmas(self) -> torch.Tensor:
        return self.sigma(self.grid_times())

    def c_in(self, sigma) -> torch.Tensor:
        return self.scale(sigma)

    def precondition(self, sigma, prediction: str) -> Preconditioning:
        c_skip, c_out = skip_out(prediction, sigma)
        return Preconditioning(c_skip, c_out, self.c_in(sigma), self.c_noise(sigma))

    def loss_weight(self, prediction: str, sigma: torch.Tensor) -> torch.Tensor | None:
        """min-SNR-gamma (Hang et al. 2023) when set, else None (unit weight)."""
        if self.min_snr_gamma is None:
            return None
        return min_snr_weight(prediction, sigma, self.min_snr_gamma)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name}: {self.timesteps} levels, "
                f"sigma {self.sigma_min:.4g}..{self.sigma_max:.4g}>")
