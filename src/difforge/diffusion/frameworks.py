"""The training frameworks by name, each a noise process the samplers can use.

- ddpm:      discrete DDPM (Ho et al. 2020), `DiscreteSchedule` seen through `DDPMNoise`
- ncsn:      noise-conditional score network, L geometric levels (Song & Ermon 2019)
- vp-sde, subvp-sde, ve-sde: score SDEs in continuous time (Song et al. 2021)
- edm:       Karras et al. (2022): preconditioning, log-normal noise levels

`make_noise(diffusion)` builds one from a `DiffusionConfig` or the "diffusion" mapping of
a saved model description (model.json / config.json); descriptions written before
frameworks existed are DDPM. `prediction_of(diffusion)` is what its network predicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from difforge.diffusion.parameterization import PREDICTIONS, c_noise_edm_net, edm_precond, edm_sigmas
from difforge.diffusion.schedules import DiscreteSchedule, make_schedule
from difforge.diffusion.sde import NCSNLevels, SubVPSDE, VESDE, VPSDE, _Discretized

FRAMEWORKS = ("ddpm", "ncsn", "vp-sde", "subvp-sde", "ve-sde", "edm")
# What each framework's network may predict; the first is its default. NCSN and VE SDE
# networks are score models s(x, sigma) = -eps / sigma, trained and stored as eps.
ALLOWED_PREDICTIONS = {
    "ddpm": ("eps", "x0", "v"),
    "vp-sde": ("eps", "x0", "v"),
    "subvp-sde": ("eps", "x0", "v"),
    "ncsn": ("eps",),
    "ve-sde": ("eps",),
    "edm": ("edm",),
}
MIN_SNR_FRAMEWORKS = ("ddpm", "vp-sde", "subvp-sde")
# (sigma_min, sigma_max) when the config leaves them out. VE/NCSN: sigma_max about the
# largest distance between two training images in [-1, 1] (Song & Ermon 2020, technique 1).
DEFAULT_SIGMA_RANGE = {"ncsn": (0.01, 50.0), "ve-sde": (0.01, 50.0), "edm": (0.002, 80.0)}
assert set(ALLOWED_PREDICTIONS) == set(FRAMEWORKS) and set(PREDICTIONS) >= {p for v in ALLOWED_PREDICTIONS.values() for p in v}


class DDPMNoise(_Discretized):
    """A discrete DDPM schedule as a noise process: the network sees the VP input
    x_vp = x / sqrt(1 + sigma^2) and the (fractional) timestep t(sigma)."""

    name = "ddpm"
    variance_preserving = True

    def __init__(self, schedule: DiscreteSchedule):
        self.schedule = schedule
        self.timesteps = schedule.timesteps

    @property
    def sigmas(self) -> torch.Tensor:
        return self.schedule.sigmas

    def sigma_to_t(self, sigma) -> torch.Tensor:
        return self.schedule.sigma_to_t(torch.as_tensor(sigma, dtype=torch.float64))

    def t_to_sigma(self, t) -> torch.Tensor:
        return self.schedule.t_to_sigma(torch.as_tensor(t, dtype=torch.float64))

    def c_in(self, sigma) -> torch.Tensor:
        return 1.0 / torch.sqrt(1.0 + torch.as_tensor(sigma, dtype=torch.float64) ** 2)

    def c_noise(self, sigma) -> torch.Tensor:
        return self.sigma_to_t(sigma)

    def prior_std(self, sigma: float | None = None) -> float:
        s = self.sigma_max if sigma is None else float(sigma)
        return math.sqrt(1.0 + s * s)

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        t = torch.randint(0, self.timesteps, (batch,), generator=generator)
        return self.sigmas[t]


class EDMNoise(_Discretized):
    """Karras et al. (2022)'s process: x = x0 + sigma n with c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = ln(sigma) / 4 (times 1000, `c_noise_edm_net`), training sigmas log-normal
    (P_mean = -1.2, P_std = 1.2), sampling between 0.002 and 80 (Table 1). Its
    `timesteps` levels are log-uniform in that range (for the leading/trailing grids)."""

    name = "edm"
    variance_preserving = False

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, timesteps: int = 1000):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.smin, self.smax, self.timesteps = float(sigma_min), float(sigma_max), int(timesteps)

    def grid_times(self) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, self.timesteps, dtype=torch.float64)

    def sigma(self, t) -> torch.Tensor:
        return self.smin * torch.exp(torch.as_tensor(t, dtype=torch.float64) * math.log(self.smax / self.smin))

    def c_in(self, sigma) -> torch.Tensor:
        return edm_precond(sigma)[2]

    def c_noise(self, sigma) -> torch.Tensor:
        return c_noise_edm_net(sigma)

    def prior_std(self, sigma: float | None = None) -> float:
        return self.sigma_max if sigma is None else float(sigma)

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return edm_sigmas(batch, generator)


def _get(d: Any, key: str, default: Any = None) -> Any:
    if isinstance(d, Mapping):
        v = d.get(key, default)
    else:
        v = getattr(d, key, default)
    return default if v is None else v


def framework_of(diffusion: Any) -> str:
    name = _get(diffusion, "framework", "ddpm")
    if name not in FRAMEWORKS:
        raise ValueError(f"unknown framework {name!r}; expected one of {sorted(FRAMEWORKS)}")
    return name


def prediction_of(diffusion: Any) -> str:
    """The network's target: the config's `prediction`, else the framework's default."""
    fw = framework_of(diffusion)
    pred = _get(diffusion, "prediction", ALLOWED_PREDICTIONS[fw][0])
    if pred not in ALLOWED_PREDICTIONS[fw]:
        raise ValueError(f"framework {fw!r} trains prediction {list(ALLOWED_PREDICTIONS[fw])}, not {pred!r}")
    return pred


def make_noise(diffusion: Any):
    """The noise process of a framework from its diffusion settings (config or mapping)."""
    fw = framework_of(diffusion)
    steps = int(_get(diffusion, "timesteps", 1000))
    if fw == "ddpm":
        return DDPMNoise(make_schedule(_get(diffusion, "schedule", "linear"), steps,
                                       _get(diffusion, "beta_start", 1e-4), _get(diffusion, "beta_end", 0.02)))
    if fw in ("vp-sde", "subvp-sde"):
        # the continuous limit of the linear schedule: beta(t) = T beta_start .. T beta_end
        cls = VPSDE if fw == "vp-sde" else SubVPSDE
        return cls(steps * _get(diffusion, "beta_start", 1e-4), steps * _get(diffusion, "beta_end", 0.02), steps)
    lo, hi = DEFAULT_SIGMA_RANGE[fw]
    lo, hi = _get(diffusion, "sigma_min", lo), _get(diffusion, "sigma_max", hi)
    if fw == "ve-sde":
        return VESDE(lo, hi, steps)
    if fw == "ncsn":
        return NCSNLevels(lo, hi, steps)
    return EDMNoise(lo, hi, steps)


def check_framework(diffusion: Any) -> None:
    """Reject settings that do not fit the framework, with a one-line reason."""
    fw = framework_of(diffusion)
    prediction_of(diffusion)
    gamma = _get(diffusion, "min_snr_gamma")
    if gamma is not None:
        if fw not in MIN_SNR_FRAMEWORKS:
            raise ValueError(f"min-SNR weighting applies to {list(MIN_SNR_FRAMEWORKS)}, not to {fw!r}")
        if not gamma > 0:
            raise ValueError(f"diffusion.min_snr_gamma must be > 0, got {gamma}")
    lo, hi = _get(diffusion, "sigma_min"), _get(diffusion, "sigma_max")
    if (lo is not None or hi is not None) and fw not in DEFAULT_SIGMA_RANGE:
        raise ValueError(f"sigma_min/sigma_max set the range of {sorted(DEFAULT_SIGMA_RANGE)}; "
                         f"{fw!r} takes its range from the beta schedule")
    if fw in ("vp-sde", "subvp-sde") and _get(diffusion, "schedule", "linear") != "linear":
        raise ValueError(f"{fw!r} is the continuous linear schedule; schedule {_get(diffusion, 'schedule')!r} "
                         "applies to ddpm only")
    make_noise(diffusion)  # range checks (0 < sigma_min < sigma_max, levels >= 2)
