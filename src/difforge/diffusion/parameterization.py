"""What a network predicts, and how that becomes the denoiser D(x, sigma).

Everything is in the variance-exploding frame x = x0 + sigma * n of Karras et al. (2022).
A network output F becomes D = c_skip(sigma) x + c_out(sigma) F (EDM, Eq. 7), and the
training target for F is (x0 - c_skip x) / c_out, so one formula covers:

- eps  (Ho et al. 2020):               c_skip = 1,                c_out = -sigma
- x0   (data prediction):               c_skip = 0,                c_out = 1
- v    (Salimans & Ho 2022, v = alpha n - s x0 in the variance-preserving frame
        alpha = 1/sqrt(1 + sigma^2), s = sigma alpha):  c_skip = alpha^2, c_out = -s
- edm  (Karras et al. 2022, Table 1):   c_skip = sd^2 / (sigma^2 + sd^2),
                                         c_out = sigma sd / sqrt(sigma^2 + sd^2)

(v-prediction is EDM's preconditioning with sigma_data = 1, up to the sign of F.)
The score of the noisy data is (D - x) / sigma^2 = -eps / sigma (Tweedie's formula).
All functions take and return tensors; sigma broadcasts against x from the left.
"""

from __future__ import annotations

import torch

PREDICTIONS = ("eps", "x0", "v", "edm")
SIGMA_DATA = 0.5  # EDM's sigma_data for images in [-1, 1] (Karras et al. 2022, Table 1)
P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal training noise levels (Table 1)


def _b(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as a tensor broadcastable against x: scalar or (B,) -> (B, 1, ..., 1)."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return s.reshape((-1,) + (1,) * (x.ndim - 1)) if s.ndim == 1 else s


# ---------------------------------------------------------------- conversions
def eps_to_x0(x: torch.Tensor, sigma, eps: torch.Tensor) -> torch.Tensor:
    return x - _b(sigma, x) * eps


def x0_to_eps(x: torch.Tensor, sigma, x0: torch.Tensor) -> torch.Tensor:
    return (x - x0) / _b(sigma, x)


def v_to_x0(x: torch.Tensor, sigma, v: torch.Tensor) -> torch.Tensor:
    """x0 = alpha x_vp - s v with x_vp = alpha x (Salimans & Ho 2022, Section 4)."""
    s = _b(sigma, x)
    a2 = 1.0 / (1.0 + s**2)
    return a2 * x - s * a2.sqrt() * v


def x0_to_v(x: torch.Tensor, sigma, x0: torch.Tensor) -> torch.Tensor:
    """v = alpha eps - s x0 in the variance-preserving frame."""
    s = _b(sigma, x)
    a = 1.0 / torch.sqrt(1.0 + s**2)
    return a * x0_to_eps(x, sigma, x0) - s * a * x0


def eps_to_score(sigma, eps: torch.Tensor) -> torch.Tensor:
    """grad_x log p_sigma(x) = -eps / sigma (Song & Ermon 2019; Vincent 2011)."""
    return -eps / _b(sigma, eps)


def score_to_eps(sigma, score: torch.Tensor) -> torch.Tensor:
    return -_b(sigma, score) * score


def x0_to_score(x: torch.Tensor, sigma, x0: torch.Tensor) -> torch.Tensor:
    """Tweedie: grad log p_sigma(x) = (E[x0 | x] - x) / sigma^2."""
    return (x0 - x) / _b(sigma, x) ** 2


def score_to_x0(x: torch.Tensor, sigma, score: torch.Tensor) -> torch.Tensor:
    return x + _b(sigma, x) ** 2 * score


# ---------------------------------------------------------------- preconditioning
def edm_precond(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) of Karras et al. (2022), Table 1 ("Ours")."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)  # EDM, Table 1
    c_out = sigma * sigma_data / torch.sqrt(sigma**2 + sd2)
    c_in = 1.0 / torch.sqrt(sigma**2 + sd2)
    c_noise = torch.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise


def skip_out(prediction: str, sigma: torch.Tensor,
             sigma_data: float = SIGMA_DATA) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) turning the network output into D = c_skip x + c_out F (float64)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if prediction == "eps":
        return torch.ones_like(sigma), -sigma
    if prediction == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma)
    if prediction == "v":
        a2 = 1.0 / (1.0 + sigma**2)
        return a2, -sigma * a2.sqrt()
    if prediction == "edm":
        c_skip, c_out, _, _ = edm_precond(sigma, sigma_data)
        return c_skip, c_out
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {sorted(PREDICTIONS)}")


def training_target(prediction: str, x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor,
                    sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """What the network output should be: (x0 - c_skip x) / c_out, e.g. the noise for eps."""
    c_skip, c_out = skip_out(prediction, sigma, sigma_data)
    return (x0 - _b(c_skip, x) * x) / _b(c_out, x)


# ---------------------------------------------------------------- loss weighting
def edm_sigmas(batch: int, generator: torch.Generator | None = None, p_mean: float = P_MEAN,
               p_std: float = P_STD) -> torch.Tensor:
    """Training noise levels ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1), float64."""
    return torch.exp(p_mean + p_std * torch.randn(batch, generator=generator, dtype=torch.float64))


def edm_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 on ||D - x0||^2 (Table 1); it is
    1 / c_out^2, so the loss on the network output F is unweighted."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def snr(sigma: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha^2 / s^2 = 1 / sigma^2."""
    return 1.0 / torch.as_tensor(sigma, dtype=torch.float64) ** 2


def min_snr_weight(prediction: str, sigma: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma weights on the network-output loss (Hang et al. 2023, "Efficient
    diffusion training via min-SNR weighting strategy"): the x0-space weight
    min(SNR, gamma), divided by each target's own SNR factor: eps -> min(SNR, g) / SNR,
    x0 -> min(SNR, g), v -> min(SNR, g) / (SNR + 1). Generally min(SNR, g) * c_out^2."""
    if gamma <= 0:
        raise ValueError(f"min-SNR gamma must be > 0, got {gamma}")
    _, c_out = skip_out(prediction, sigma)
    return torch.clamp(snr(sigma), max=gamma) * c_out**2


def c_noise_edm_net(sigma: torch.Tensor) -> torch.Tensor:
    """EDM's c_noise = ln(sigma) / 4, times 1000 so that a sinusoidal embedding built for
    DDPM timesteps 0..999 resolves it (one unit of ln sigma = 250 'timesteps')."""
    return 1000.0 * edm_precond(sigma)[3]


__all__ = [
    "PREDICTIONS", "SIGMA_DATA", "eps_to_x0", "x0_to_eps", "v_to_x0", "x0_to_v", "eps_to_score", "score_to_eps",
    "x0_to_score", "score_to_x0", "edm_precond", "skip_out", "training_target", "edm_sigmas", "edm_weight",
    "snr", "min_snr_weight", "c_noise_edm_net",
]
