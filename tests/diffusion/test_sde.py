"""Score SDEs and NCSN levels against closed forms: each SDE's marginal mean/std from its
moment ODEs and from Euler-Maruyama simulation, sigma(t) conversions, the continuous VP
limit of DDPM's linear schedule."""

from __future__ import annotations

import math

import pytest
import torch

from difforge.diffusion import make_schedule
from difforge.diffusion.frameworks import FRAMEWORKS, FrameworkSpec, make_process
from difforge.diffusion.sde import VESDE, VPSDE, NCSNLevels, SubVPSDE, ncsn_sigmas

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(0.01, 50.0)}


def moments_by_ode(sde, t_end: float, m: int = 400) -> tuple[float, float]:
    """Mean coefficient and variance of x_t given x_0 = x0 for the linear SDE
    dx = f(t) x dt + g(t) dw: m' = f m (m(0) = 1), v' = 2 f v + g^2 (v(0) = 0), by RK4."""
    def f(t):
        return float(sde.drift(torch.ones(1, dtype=torch.float64), t))

    def rhs(t, y):
        mean, var = y
        return (f(t) * mean, 2 * f(t) * var + float(sde.diffusion(t)) ** 2)

    y, h = (1.0, 0.0), t_end / m
    for i in range(m):
        t = i * h
        k1 = rhs(t, y)
        k2 = rhs(t + h / 2, tuple(a + h / 2 * b for a, b in zip(y, k1)))
        k3 = rhs(t + h / 2, tuple(a + h / 2 * b for a, b in zip(y, k2)))
        k4 = rhs(t + h, tuple(a + h * b for a, b in zip(y, k3)))
        y = tuple(a + h / 6 * (b1 + 2 * b2 + 2 * b3 + b4) for a, b1, b2, b3, b4 in zip(y, k1, k2, k3, k4))
    return y


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("t", [0.05, 0.3, 1.0])
def test_marginal_matches_moment_odes(name, t):
    sde = SDES[name]
    mean, var = moments_by_ode(sde, t)
    a, s = sde.marginal(t)
    assert float(a) == pytest.approx(mean, rel=1e-7)
    assert float(s) ** 2 == pytest.approx(var, rel=1e-6)


@pytest.mark.parametrize("name", list(SDES))
def test_euler_maruyama_on_gaussian_data(name):
    # x0 ~ N(0.7, 0.4^2): x_t ~ N(a 0.7, a^2 0.16 + std^2). 20000 paths, 400 EM steps to t = 0.5;
    # tolerances: 4 standard errors plus the O(dt) bias of EM (< 0.3% here).
    sde, n, steps, t_end = SDES[name], 20_000, 400, 0.5
    g = torch.Generator().manual_seed(0)
    x = 0.7 + 0.4 * torch.randn(n, generator=g, dtype=torch.float64)
    h = t_end / steps
    for i in range(steps):
        t = i * h
        x = (x + sde.drift(x, t) * h
             + sde.diffusion(t) * math.sqrt(h) * torch.randn(n, generator=g, dtype=torch.float64))
    a, s = (float(v) for v in sde.marginal(t_end))
    sd = math.sqrt(a**2 * 0.16 + s**2)
    assert x.mean().item() == pytest.approx(a * 0.7, abs=4 * sd / math.sqrt(n))
    assert x.std().item() == pytest.approx(sd, rel=4 / math.sqrt(2 * n) + 0.003)


@pytest.mark.parametrize("name", list(SDES))
def test_sigma_is_std_over_alpha_and_inverts(name):
    sde = SDES[name]
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    a, s = sde.marginal(t)
    sigma = sde.sigma(t)
    if name == "ve":  # Song et al.'s kernel: the data carry sigma_min already
        assert torch.allclose(sigma**2, s**2 + sde.smin**2, rtol=1e-12)
    else:
        assert torch.allclose(sigma, s / a, rtol=1e-10)
    assert torch.allclose(sde.t_of_sigma(sigma), t, rtol=1e-9, atol=1e-12)


def test_subvp_network_input_is_its_own_xt():
    # c_in * (x0 + sigma n) = alpha x0 + (1 - alpha^2) n: the sub-VP x_t of Song et al., Eq. 17
    sde = SubVPSDE()
    t = torch.tensor([0.02, 0.4, 0.9], dtype=torch.float64)
    a, s = sde.marginal(t)
    sigma = sde.sigma(t)
    c = sde.c_in(sigma)
    assert torch.allclose(c, a, rtol=1e-10)
    assert torch.allclose(c * sigma, s, rtol=1e-10)
    assert torch.allclose(s, 1 - a**2, rtol=1e-10)
    assert (s <= VPSDE().marginal(t)[1]).all()  # less noise than the VP SDE


def test_vp_sde_is_the_limit_of_ddpm_linear_schedule():
    # log alpha_bar_T = sum log(1 - beta_i) -> -int beta as T grows (the gap is ~ sum beta_i^2 / 2 = O(1/T))
    def gap(T):
        ddpm = make_schedule("linear", T, 0.1 / T, 20.0 / T)
        t = (torch.arange(T, dtype=torch.float64) + 1) / T
        return (ddpm.alphas_cumprod.log() + VPSDE(0.1, 20.0, T).integral_beta(t)).abs().max().item()

    assert gap(1000) < 0.07
    assert gap(4000) < gap(1000) / 3.5


def test_ncsn_levels_are_geometric():
    s = ncsn_sigmas(0.01, 50.0, 10)
    ratios = s[1:] / s[:-1]
    assert torch.allclose(ratios, ratios[0].expand(9), rtol=1e-12)
    assert (s[0].item(), s[-1].item()) == (0.01, 50.0)
    lv = NCSNLevels(0.01, 50.0, 10)
    assert torch.equal(lv.sigmas, s)
    # the network's noise input is the level's position, and the levels are the VE SDE's
    assert torch.allclose(lv.c_noise(s), 999 * torch.arange(10, dtype=torch.float64) / 9, atol=1e-9)
    assert torch.allclose(VESDE(0.01, 50.0).sigma(torch.arange(10, dtype=torch.float64) / 9), s, rtol=1e-12)
    drawn = lv.sample_sigmas(2000, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) <= set(s.tolist()) and len(set(drawn.tolist())) == 10


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_process_has_a_consistent_grid(framework):
    p = make_process(FrameworkSpec(framework, timesteps=100))
    s = p.sigmas
    assert s.dtype == torch.float64 and len(s) == p.timesteps == 100
    assert (s[1:] > s[:-1]).all()
    assert (p.sigma_min, p.sigma_max) == (float(s[0]), float(s[-1]))
    idx = torch.tensor([0.0, 17.5, 99.0], dtype=torch.float64)
    assert torch.allclose(p.sigma_to_t(p.t_to_sigma(idx)), idx, atol=1e-9)
    drawn = p.sample_sigmas(500, torch.Generator().manual_seed(1))
    assert drawn.shape == (500,) and (drawn > 0).all()


def test_bad_ranges_are_clear_errors():
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        VESDE(1.0, 0.5)
    with pytest.raises(ValueError, match="at least 2 noise levels"):
        ncsn_sigmas(0.01, 1.0, 1)
    with pytest.raises(ValueError, match="unknown framework 'ddim'"):
        make_process(FrameworkSpec("ddim"))
