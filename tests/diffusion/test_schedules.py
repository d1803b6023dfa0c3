"""Schedules and the forward process against their closed forms."""

import math

import pytest
import torch

from difforge.diffusion import beta_schedule, make_schedule, q_sample, sample_timesteps
from difforge.diffusion.grids import discrete_sigmas, timestep_subset


def test_linear_betas_closed_form():
    b = beta_schedule("linear", 1000)
    k = torch.arange(1000, dtype=torch.float64)
    assert torch.allclose(b, 1e-4 + k * (0.02 - 1e-4) / 999, atol=1e-15, rtol=0)
    assert b.dtype == torch.float64


def test_cosine_alpha_bar_closed_form():
    # Nichol & Dhariwal (2021), Eq. 17; betas are clipped at 0.999 only at the very end.
    sched = make_schedule("cosine", 1000)
    T, s = 1000, 0.008

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in [0, 1, 10, 250, 500, 900, 990]:
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert sched.betas.max() <= 0.999


def test_scaled_linear_betas_closed_form():
    # linear in sqrt(beta): the k-th of T is (sqrt(b0) + k (sqrt(b1) - sqrt(b0)) / (T - 1))^2
    b = beta_schedule("scaled_linear", 1000, 0.00085, 0.012)
    k = torch.arange(1000, dtype=torch.float64)
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    assert torch.allclose(b, (lo + k * (hi - lo) / 999) ** 2, atol=1e-15, rtol=0)
    with pytest.raises(ValueError, match="scaled_linear schedule needs 0 < beta_start < beta_end < 1"):
        beta_schedule("scaled_linear", 10, 0.02, 0.01)


def test_alpha_bar_is_product_and_sigmas_increase():
    sched = make_schedule("linear", 50)
    prod = 1.0
    for t in range(50):
        prod *= 1 - sched.betas[t].item()
        assert sched.alphas_cumprod[t].item() == pytest.approx(prod, rel=1e-12)
    assert torch.all(sched.sigmas[1:] > sched.sigmas[:-1])


def test_unknown_schedule_names_choices():
    with pytest.raises(ValueError,
                       match=r"unknown schedule 'quadratic'; expected one of \['cosine', 'linear', 'scaled_linear'\]"):
        beta_schedule("quadratic", 10)


def test_q_sample_matches_iterated_one_step_process():
    # Iterating x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z from a fixed x0 gives a
    # Gaussian with mean sqrt(ab_t) x0 and variance 1 - ab_t; q_sample must agree.
    sched = make_schedule("cosine", 200)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n,), 0.7, dtype=torch.float64)
    x = x0.clone()
    t = 120
    for k in range(t + 1):
        b = sched.betas[k]
        x = (1 - b).sqrt() * x + b.sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    direct = q_sample(sched, x0, torch.full((n,), t), torch.randn(n, generator=g, dtype=torch.float64))
    ab = sched.alphas_cumprod[t]
    for sample in (x, direct):
        assert sample.mean().item() == pytest.approx((ab.sqrt() * 0.7).item(), abs=5e-3)
        assert sample.var().item() == pytest.approx((1 - ab).item(), rel=1e-2)


def test_q_sample_is_exact_reparameterisation():
    sched = make_schedule("linear", 1000)
    x0 = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(q_sample(sched, x0, t, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=1e-14)


def test_timesteps_cover_whole_range_including_zero():
    t = sample_timesteps(100_000, 1000, generator=torch.Generator().manual_seed(0))
    assert t.min().item() == 0 and t.max().item() == 999


def test_sigma_t_round_trip():
    sched = make_schedule("linear", 1000)
    t = torch.tensor([0.0, 1.0, 17.0, 500.0, 998.0, 999.0])
    assert torch.allclose(sched.sigma_to_t(sched.t_to_sigma(t)), t.double(), atol=1e-9)
    on_grid = sched.sigmas[[0, 5, 999]]
    assert torch.equal(sched.sigma_to_t(on_grid), torch.tensor([0.0, 5.0, 999.0], dtype=torch.float64))


def test_grids():
    sched = make_schedule("linear", 1000)
    full = discrete_sigmas(sched)
    assert len(full) == 1001 and full[-1] == 0 and torch.all(full[:-1] > full[1:])
    assert full[0] == sched.sigmas[-1] and full[-2] == sched.sigmas[0]
    assert timestep_subset(1000, 4, "leading").tolist() == [750, 500, 250, 0]
    assert timestep_subset(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert timestep_subset(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    with pytest.raises(ValueError, match="unknown spacing"):
        timestep_subset(1000, 4, "middle")
    with pytest.raises(ValueError, match="steps must be in 1..1000"):
        timestep_subset(1000, 0)
