"""The DDPM training objective for one batch (Ho et al. 2020, Algorithm 1)."""

from __future__ import annotations

import torch
from torch import nn

from difforge.diffusion import DiscreteSchedule, eps_mse_loss, q_sample, sample_timesteps


def drop_labels(
    labels: torch.Tensor, p: float, null_label: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by the null label independently with probability p
    (classifier-free guidance training, Ho & Salimans 2022)."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)


def ddpm_loss(
    model: nn.Module,
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    cond: torch.Tensor | None,
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
    *,
    rows: slice | None = None,
    global_batch: int | None = None,
) -> torch.Tensor:
    """eps-prediction MSE at uniform timesteps t in 0..T-1 (t = 0 included).

    Randomness (t, eps) is drawn on the CPU from `generator` so runs are reproducible
    and resumable on any device. Under data parallelism `x0` holds rows `rows` of a
    global batch of `global_batch` images: t and eps are drawn for the whole global
    batch and sliced, so each sample's noise does not depend on the number of processes.
    """
    b = x0.shape[0] if global_batch is None else global_batch
    rows = rows if rows is not None else slice(0, b)
    t = sample_timesteps(b, schedule.timesteps, generator=generator)[rows].to(x0.device)
    eps = torch.randn((b, *x0.shape[1:]), generator=generator)[rows].to(x0.device, x0.dtype)
    x_t = q_sample(schedule, x0, t, eps)
    with torch.autocast(x0.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        pred = model(x_t, t.to(torch.float32), cond)
    return eps_mse_loss(pred, eps)


def framework_loss(
    model: nn.Module,
    noise,
    x0: torch.Tensor,
    cond: torch.Tensor | None,
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
    *,
    prediction: str = "eps",
    min_snr_gamma: float | None = None,
    rows: slice | None = None,
    global_batch: int | None = None,
) -> torch.Tensor:
    """The denoising loss of any framework, on the network output F.

    Noise levels come from the process (`noise.sample_sigmas`: DDPM's uniform timesteps,
    NCSN's uniform level, the SDEs' uniform t, EDM's log-normal), then the noise, both
    drawn on the CPU from `generator` in that order (per sample, as `ddpm_loss`). With
    x = x0 + sigma n, F = net(c_in x, c_noise, cond) is regressed on its target
    (x0 - c_skip x) / c_out (`training_target`): the noise for eps (NCSN's denoising score
    matching with lambda = sigma^2, Song & Ermon 2019, Eq. 6; Song et al. 2021's
    likelihood-agnostic weighting), x0, v, or EDM's F with lambda(sigma) c_out^2 = 1
    (Karras et al. 2022, Eq. 8). `min_snr_gamma` weights each sample by min-SNR-gamma
    (Hang et al. 2023). A DDPM eps model without weighting is exactly `ddpm_loss`.
    `rows` / `global_batch`: as `ddpm_loss`, for data parallelism.
    """
    from difforge.diffusion.parameterization import min_snr_weight, training_target
    from difforge.models.denoiser import Denoiser, as_noise

    noise = as_noise(noise)
    if noise.name == "ddpm" and prediction == "eps" and min_snr_gamma is None:
        dp = {} if rows is None and global_batch is None else {"rows": rows, "global_batch": global_batch}
        return ddpm_loss(model, noise.schedule, x0, cond, generator, autocast_dtype, **dp)
    b = x0.shape[0] if global_batch is None else global_batch
    rows = rows if rows is not None else slice(0, b)
    sigma = noise.sample_sigmas(b, generator)[rows].to(x0.device)  # (B,) float64
    n = torch.randn((b, *x0.shape[1:]), generator=generator)[rows].to(x0.device, x0.dtype)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    x = x0 + sigma.to(x0.dtype).view(shape) * n
    den = Denoiser(model, noise, prediction)
    with torch.autocast(x0.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = den.network_output(x, sigma, cond)
    target = training_target(prediction, x0.double(), x.double(), sigma).float()
    per_sample = ((out.float() - target) ** 2).flatten(1).mean(1)  # (B,)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(prediction, sigma, min_snr_gamma).float()
    return per_sample.mean()
