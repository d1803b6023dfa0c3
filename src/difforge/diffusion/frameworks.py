"""The training frameworks by name, each a `NoiseProcess` (`difforge.diffusion.process`).

- ddpm:      discrete DDPM (Ho et al. 2020): a `DiscreteSchedule` as a process (`DDPMProcess`)
- ncsn:      noise-conditional score network, L geometric levels (Song & Ermon 2019)
- vp-sde, subvp-sde, ve-sde: score SDEs in continuous time (Song et al. 2021)
- edm:       Karras et al. (2022): preconditioning, log-normal noise levels

A `FrameworkSpec` names a framework and its parameters (the "diffusion" part of a model
card); `make_process(spec)` builds its process. To add a framework: write its process
(a `GridProcess` subclass with a `from_spec` class method) and add it to `PROCESSES`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from difforge.diffusion.parameterization import (
    P_MEAN,
    PREDICTIONS,
    SIGMA_DATA,
    c_noise_edm_net,
    edm_precond,
    edm_sigmas,
    skip_out,
)
from difforge.diffusion.process import GridProcess, NoiseProcess, Preconditioning
from difforge.diffusion.schedules import DiscreteSchedule, make_schedule
from difforge.diffusion.sde import VESDE, VPSDE, NCSNLevels, SubVPSDE


class DDPMProcess(GridProcess):
    """A discrete DDPM schedule as a noise process: the network sees the VP input
    x_vp = x / sqrt(1 + sigma^2) and the (fractional) timestep t(sigma); training draws
    integer timesteps uniformly, t = 0 included (Ho et al. 2020, Algorithm 1)."""

    name = "ddpm"
    predictions = ("eps", "x0", "v")
    allows_min_snr = True

    def __init__(self, schedule: DiscreteSchedule, *, min_snr_gamma: float | None = None):
        self.discrete = schedule
        self.timesteps = schedule.timesteps
        self._weighting(min_snr_gamma)

    @classmethod
    def from_spec(cls, s: FrameworkSpec) -> DDPMProcess:
        return cls(make_schedule(s.schedule, s.timesteps, s.beta_start, s.beta_end), min_snr_gamma=s.min_snr_gamma)

    @property
    def sigmas(self) -> torch.Tensor:
        return self.discrete.sigmas

    def scale(self, sigma) -> torch.Tensor:
        return 1.0 / torch.sqrt(1.0 + torch.as_tensor(sigma, dtype=torch.float64) ** 2)

    def c_noise(self, sigma) -> torch.Tensor:
        return self.sigma_to_t(sigma)

    def prior_std(self, sigma: float | None = None) -> float:
        s = self.sigma_max if sigma is None else float(sigma)
        return math.sqrt(1.0 + s * s)

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        t = torch.randint(0, self.timesteps, (batch,), generator=generator)
        return self.sigmas[t]


class EDMProcess(GridProcess):
    """Karras et al. (2022)'s process: x = x0 + sigma n with c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = ln(sigma) / 4 (times 1000, `c_noise_edm_net`), training sigmas log-normal
    (P_mean = -1.2, P_std = 1.2), sampling between 0.002 and 80 (Table 1). Its
    `timesteps` levels are log-uniform in that range (for the leading/trailing grids).

    `sigma_data` (sd) is the data's standard deviation: 0.5 for images in [-1, 1] (Table 1),
    1 for latents scaled to unit variance. The training levels move with it (P_mean + ln(sd /
    0.5)), so that data scaled by k with sd scaled by k train alike: the preconditioning and
    the loss at sigma equal those of the unscaled data at sigma / k."""

    name = "edm"
    predictions = ("edm",)
    default_sigma_range = (0.002, 80.0)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, timesteps: int = 1000,
                 sigma_data: float = SIGMA_DATA):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.smin, self.smax, self.timesteps = float(sigma_min), float(sigma_max), int(timesteps)
        self.sigma_data = float(sigma_data)

    @classmethod
    def from_spec(cls, spec: FrameworkSpec) -> EDMProcess:
        lo, hi = cls.default_sigma_range
        return cls(lo if spec.sigma_min is None else spec.sigma_min, hi if spec.sigma_max is None else spec.sigma_max,
                   spec.timesteps, SIGMA_DATA if spec.sigma_data is None else spec.sigma_data)

    def precondition(self, sigma, prediction: str) -> Preconditioning:
        c_skip, c_out = skip_out(prediction, sigma, self.sigma_data)
        return Preconditioning(c_skip, c_out, self.c_in(sigma), self.c_noise(sigma))

    def grid_times(self) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, self.timesteps, dtype=torch.float64)

    def sigma(self, t) -> torch.Tensor:
        return self.smin * torch.exp(torch.as_tensor(t, dtype=torch.float64) * math.log(self.smax / self.smin))

    def scale(self, sigma) -> torch.Tensor:
        return torch.ones_like(torch.as_tensor(sigma, dtype=torch.float64))  # EDM, Table 1: s(t) = 1

    def c_in(self, sigma) -> torch.Tensor:
        return edm_precond(sigma, self.sigma_data)[2]

    def c_noise(self, sigma) -> torch.Tensor:
        return c_noise_edm_net(sigma)

    def prior_std(self, sigma: float | None = None) -> float:
        return self.sigma_max if sigma is None else float(sigma)

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return edm_sigmas(batch, generator, p_mean=P_MEAN + math.log(self.sigma_data / SIGMA_DATA))


# ---------------------------------------------------------------- by name


@dataclass(frozen=True)
class FrameworkSpec:
    """A framework and its parameters, as a model card records them. `timesteps` is also
    NCSN's number of levels and the SDEs' discretization; the VP / sub-VP SDEs take
    beta(t) from timesteps * beta_start to timesteps * beta_end; sigma_min / sigma_max set
    the range of ncsn, ve-sde and edm (None: `DEFAULT_SIGMA_RANGE`); sigma_data is edm's
    data standard deviation (None: 0.5, `EDMProcess`)."""

    framework: str = "ddpm"
    timesteps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    min_snr_gamma: float | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    sigma_data: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FrameworkSpec:
        """From a card's or a config's "diffusion" mapping. Descriptions written before
        frameworks existed are DDPM; a "prediction" key (a config's) is ignored; null
        means the default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"prediction"})
        if unknown:
            raise ValueError(f"unknown diffusion setting(s) {unknown}; expected {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known and v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROCESSES: dict[str, type[GridProcess]] = {
    cls.name: cls for cls in (DDPMProcess, NCSNLevels, VPSDE, SubVPSDE, VESDE, EDMProcess)
}
FRAMEWORKS = tuple(PROCESSES)
# What each framework's network may predict; the first is its default. NCSN and VE SDE
# networks are score models s(x, sigma) = -eps / sigma, trained and stored as eps.
ALLOWED_PREDICTIONS = {name: cls.predictions for name, cls in PROCESSES.items()}
MIN_SNR_FRAMEWORKS = tuple(name for name, cls in PROCESSES.items() if cls.allows_min_snr)
# (sigma_min, sigma_max) when the spec leaves them out, for the frameworks set by sigmas
DEFAULT_SIGMA_RANGE = {name: cls.default_sigma_range for name, cls in PROCESSES.items() if cls.default_sigma_range}
assert set(PREDICTIONS) >= {p for v in ALLOWED_PREDICTIONS.values() for p in v}


def _known(framework: str) -> str:
    if framework not in PROCESSES:
        raise ValueError(f"unknown framework {framework!r}; expected one of {sorted(FRAMEWORKS)}")
    return framework


def make_process(spec: FrameworkSpec) -> NoiseProcess:
    """The noise process of a framework from its parameters."""
    cls = PROCESSES[_known(spec.framework)]
    if spec.min_snr_gamma is not None and not cls.allows_min_snr:
        raise ValueError(f"min-SNR weighting applies to {list(MIN_SNR_FRAMEWORKS)}, not to {spec.framework!r}")
    if spec.sigma_data is not None and cls is not EDMProcess:
        raise ValueError(f"sigma_data is edm's data standard deviation, not a setting of {spec.framework!r}")
    return cls.from_spec(spec)


def resolve_prediction(framework: str, prediction: str | None) -> str:
    """The network's target: `prediction`, else the framework's default; checked."""
    allowed = ALLOWED_PREDICTIONS[_known(framework)]
    pred = allowed[0] if prediction is None else prediction
    if pred not in allowed:
        raise ValueError(f"framework {framework!r} trains prediction {list(allowed)}, not {pred!r}")
    return pred


def check_framework(spec: FrameworkSpec, prediction: str | None = None) -> None:
    """Reject settings that do not fit the framework, with a one-line reason."""
    fw = _known(spec.framework)
    resolve_prediction(fw, prediction)
    if (spec.sigma_min is not None or spec.sigma_max is not None) and fw not in DEFAULT_SIGMA_RANGE:
        raise ValueError(f"sigma_min/sigma_max set the range of {sorted(DEFAULT_SIGMA_RANGE)}; "
                         f"{fw!r} takes its range from the beta schedule")
    if fw in ("vp-sde", "subvp-sde") and spec.schedule != "linear":
        raise ValueError(f"{fw!r} is the continuous linear schedule; schedule {spec.schedule!r} "
                         "applies to ddpm only")
    make_process(spec)  # min-SNR where it applies, gamma > 0, 0 < sigma_min < sigma_max, levels >= 2
