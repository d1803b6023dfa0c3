"""Every sampler against closed forms, no training: exact denoisers of Gaussian and
Gaussian-mixture data, the probability-flow ODE solved accurately, and exact sampling
at sigma_max, so the only errors left are the sampler's own (and Monte Carlo).

Data x0 ~ sum_k w_k N(mu_k, s_k^2 I). Seen at noise level sigma (x = x0 + sigma n), the
component posterior is r_k(x) ~ w_k N(x; mu_k, (s_k^2 + sigma^2) I) and
E[x0 | x, k] = mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k), so the exact denoiser is
D(x, sigma) = sum_k r_k(x) E[x0 | x, k]. With one zero-mean component (a single Gaussian) this is
D = x sd^2 / (sigma^2 + sd^2), whose ODE solution is x(0) = x_T sd / sqrt(sd^2 + sigma_max^2).

Tolerances: Monte Carlo ones are about 4-5 standard errors of the estimate (fixed seeds,
so the tests are deterministic; the margin keeps them valid under any seed). ODE-match
ones are about twice the error measured when they were written (in the comment next to
each), small enough that a sampler falling back to a lower order fails.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from difforge.diffusion.grids import karras_sigmas, log_snr_sigmas
from difforge.sampling import SAMPLERS, get_sampler, per_sample_generators, randn_like, sample_ddim, sample_euler
from difforge.sampling.dpmpp import _step_order

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # EDM's range (Karras et al. 2022, Table 1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: intra-op threads only add contention on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class GaussianMixtureDenoiser(nn.Module):
    """The exact denoiser E[x0 | x] of an isotropic Gaussian mixture, D(x, sigma, cond), x: (B, d)."""

    def __init__(self, weights, means, stds):
        super().__init__()
        self.w = torch.tensor(weights, dtype=torch.float64)  # (K,)
        self.mu = torch.tensor(means, dtype=torch.float64)  # (K, d)
        self.sd = torch.tensor(stds, dtype=torch.float64)  # (K,)
        self.calls = 0

    def forward(self, x, sigma, cond=None):
        self.calls += 1
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0]).reshape(-1, 1)  # (B, 1)
        var = self.sd**2 + sigma**2  # (B, K)
        diff = x[:, None, :] - self.mu  # (B, K, d)
        log_r = self.w.log() - 0.5 * (diff**2).sum(-1) / var - 0.5 * x.shape[1] * var.log()
        r = log_r.softmax(dim=1)  # (B, K)
        post_means = self.mu + (self.sd**2 / var)[..., None] * diff  # (B, K, d)
        return (r[..., None] * post_means).sum(dim=1)

    def sample(self, n, sigma, generator):
        """Exact samples of x = x0 + sigma n (sigma = 0: the data)."""
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)
        d = self.mu.shape[1]
        x0 = self.mu[k] + self.sd[k, None] * torch.randn(n, d, generator=generator, dtype=torch.float64)
        return x0 + sigma * torch.randn(n, d, generator=generator, dtype=torch.float64)

    def mean(self):
        return (self.w[:, None] * self.mu).sum(0)

    def cov(self):
        m = self.mean()
        d = self.mu.shape[1]
        c = sum(w * (torch.outer(mu - m, mu - m) + s**2 * torch.eye(d, dtype=torch.float64))
                for w, mu, s in zip(self.w, self.mu, self.sd))
        return c

    def nearest(self, x):
        return torch.cdist(x, self.mu).argmin(dim=1)


def mixture():
    # Components 3.5+ component-stds apart: nearest-mean assignment is right for > 99.9%.
    return GaussianMixtureDenoiser([0.5, 0.3, 0.2], [[-2.0, 0.0], [2.0, 1.0], [0.5, -2.5]], [0.5, 0.3, 0.4])


def gaussian_denoiser(sd):
    def D(x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=torch.float64)
        return x * (sd**2 / (s**2 + sd**2)).to(x.dtype)
    return D


def rk4_reference(D, x, m=400):
    """The probability-flow ODE dx/dlog(sigma) = x - D(x, sigma) by classical RK4 with m
    equal steps in log sigma from SIGMA_MAX to SIGMA_MIN, then the samplers' common last
    step x -> D(x, SIGMA_MIN). m = 400 is within 1e-7 (RMS) of m = 800 here."""
    u = torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), m + 1, dtype=torch.float64).tolist()

    def f(x, u):
        return x - D(x, torch.tensor(math.exp(u), dtype=torch.float64))

    for a, b in zip(u[:-1], u[1:]):
        h = b - a
        k1 = f(x, a)
        k2 = f(x + h / 2 * k1, a + h / 2)
        k3 = f(x + h / 2 * k2, a + h / 2)
        k4 = f(x + h * k3, b)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return D(x, torch.tensor(SIGMA_MIN, dtype=torch.float64))


# sampler -> (options, karras steps) for the distribution tests: enough steps for a bias
# in the std of <= 1.5% on the Gaussian (first-order and ancestral samplers converge as 1/N;
# an ancestral step with the posterior *mean* of x0 underestimates the variance).
DISTRIBUTION_RUNS = {
    "ddpm": ({}, 400),  # +0.7% ("large" variance overshoots)
    "ddim": ({"eta": 1.0}, 400),  # -1.5% (= euler-a)
    "euler": ({}, 200),  # -1.2%
    "euler-a": ({}, 400),  # -1.5%
    "heun": ({}, 50),  # +0.8%
    "heun-churn": ({"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}, 200),  # +0.3%
    "dpmpp-2m": ({}, 50),  # +0.8%
    "dpmpp-2m-sde": ({}, 50),  # +0.8% (+11% at 20 steps)
    "dpmpp-3m": ({}, 30),  # +0.3%
}


def _run(name, D, x, steps, generator):
    opts, _ = DISTRIBUTION_RUNS[name]
    fn = get_sampler(name.removesuffix("-churn"))
    return fn(D, x, karras_sigmas(SIGMA_MIN, SIGMA_MAX, steps), generator=generator, **opts)


@pytest.mark.parametrize("name", list(DISTRIBUTION_RUNS))
def test_gaussian_data_gives_std_sd(name):
    # 1-D N(0, 0.5^2) data, 40000 samples: the std's standard error is 0.35%; the
    # tolerance is 4 of those plus the step-count bias above.
    sd, n = 0.5, 40_000
    g = torch.Generator().manual_seed(1)
    x = SIGMA_MAX * math.sqrt(1 + (sd / SIGMA_MAX) ** 2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    out = _run(name, gaussian_denoiser(sd), x, DISTRIBUTION_RUNS[name][1], g)
    assert out.std().item() == pytest.approx(sd, rel=0.03)
    assert abs(out.mean().item()) < 0.01  # 4 standard errors


@pytest.mark.parametrize("name", list(DISTRIBUTION_RUNS))
def test_mixture_moments_and_weights(name):
    D, n = mixture(), 10_000
    g = torch.Generator().manual_seed(2)
    out = _run(name, D, D.sample(n, SIGMA_MAX, g), DISTRIBUTION_RUNS[name][1], g)
    # standard errors at n = 10^4: mean ~0.018, covariance entries ~0.05, weights ~0.005
    assert torch.allclose(out.mean(0), D.mean(), atol=0.08, rtol=0)
    assert torch.allclose(torch.cov(out.T), D.cov(), atol=0.2, rtol=0)
    weights = torch.bincount(D.nearest(out), minlength=3).double() / n
    assert torch.allclose(weights, D.w, atol=0.025, rtol=0)
    # and each mode is as tight as the data's (not smeared by the sampler)
    for k in range(3):
        mode = out[D.nearest(out) == k]
        assert mode.std(0).mean().item() == pytest.approx(D.sd[k].item(), rel=0.07)  # 4 SE at 2000


# sampler, karras steps, tolerances on the median and on the RMS of the per-path error
# |x - x_ref| (measured median, RMS in the comment; the RMS varies from 1x to 2x over
# seeds, the median by 5%). Mixture ODEs are ill-conditioned near the boundaries between
# modes, where a few paths may switch mode and dominate the RMS; the median measures the
# bulk: a sampler falling back to a lower order fails its median bound.
ODE_RUNS = [
    ("euler", 80, 0.06, 0.25),  # 0.030, 0.11
    ("ddim", 80, 0.06, 0.25),  # = euler
    ("heun", 40, 0.015, 0.025),  # 0.0070, 0.010 (79 denoiser calls)
    ("dpmpp-2m", 40, 0.02, 0.06),  # 0.0092, 0.025
    ("dpmpp-3m", 40, 0.003, 0.04),  # 0.0014, 0.010
    ("dpmpp-3m", 80, 0.0007, 0.005),  # 0.00031, 0.0023
]


@pytest.fixture(scope="module")
def ode_problem():
    D = mixture()
    x = D.sample(2000, SIGMA_MAX, torch.Generator().manual_seed(3))
    return D, x, rk4_reference(D, x)


@pytest.mark.parametrize("name, steps, median_tol, rms_tol", ODE_RUNS)
def test_deterministic_samplers_follow_the_ode(ode_problem, name, steps, median_tol, rms_tol):
    D, x, ref = ode_problem
    out = get_sampler(name)(D, x.clone(), karras_sigmas(SIGMA_MIN, SIGMA_MAX, steps))
    err = (out - ref).norm(dim=1)
    assert err.median().item() < median_tol
    assert err.pow(2).mean().sqrt().item() < rms_tol


# sampler, minimum error ratio from 20 to 40 log-SNR-uniform steps, error bound at 40
# (measured ratio, error in the comment); the order p shows as a ratio of about 2^p.
ORDERS = [
    ("euler", 1.8, 0.1),  # 1.98, 0.066
    ("ddim", 1.8, 0.1),  # = euler
    ("heun", 3.5, 0.02),  # 4.55, 0.0099
    ("dpmpp-2m", 3.2, 0.01),  # 3.80, 0.0045
    ("dpmpp-3m", 5.0, 0.004),  # 6.0, 0.0019
]


@pytest.mark.parametrize("name, min_ratio, tol", ORDERS)
def test_convergence_order_on_gaussian_ode(name, min_ratio, tol):
    sd = 0.5
    x_T = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    # exact ODE solution down to SIGMA_MIN, then the common last step D(x, SIGMA_MIN)
    exact = x_T * math.sqrt((sd**2 + SIGMA_MIN**2) / (sd**2 + SIGMA_MAX**2)) * sd**2 / (sd**2 + SIGMA_MIN**2)
    errs = []
    for steps in (20, 40):
        out = get_sampler(name)(gaussian_denoiser(sd), x_T.clone(), log_snr_sigmas(SIGMA_MIN, SIGMA_MAX, steps))
        errs.append(((out - exact) / exact).abs().max().item())
    assert errs[1] < tol
    assert errs[0] / errs[1] > min_ratio


def test_dpmpp_2m_sde_with_eta0_is_dpmpp_2m():
    D, sigmas = mixture(), karras_sigmas(SIGMA_MIN, SIGMA_MAX, 12)
    x = D.sample(50, SIGMA_MAX, torch.Generator().manual_seed(5))
    ref = SAMPLERS["dpmpp-2m"](D, x, sigmas)
    assert torch.allclose(SAMPLERS["dpmpp-2m-sde"](D, x, sigmas, eta=0.0), ref, atol=1e-12, rtol=0)


def test_ddim_eta0_is_euler_and_euler_a_eta0_is_euler():
    D, sigmas = mixture(), karras_sigmas(SIGMA_MIN, SIGMA_MAX, 12)
    x = D.sample(50, SIGMA_MAX, torch.Generator().manual_seed(4))
    ref = sample_euler(D, x, sigmas)
    assert torch.allclose(sample_ddim(D, x, sigmas), ref, atol=1e-10, rtol=0)
    assert torch.allclose(SAMPLERS["euler-a"](D, x, sigmas, eta=0.0), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name, calls", [("euler", 10), ("euler-a", 10), ("heun", 19), ("dpmpp-2m", 10),
                                         ("dpmpp-3m", 10), ("dpmpp-2m-sde", 10), ("ddim", 10), ("ddpm", 10)])
def test_denoiser_calls_and_one_callback_per_step(name, calls):
    D, sigmas = mixture(), karras_sigmas(SIGMA_MIN, SIGMA_MAX, 10)
    seen = []
    get_sampler(name)(D, D.sample(4, SIGMA_MAX, torch.Generator().manual_seed(0)), sigmas,
                      generator=torch.Generator().manual_seed(0), callback=seen.append)
    assert D.calls == calls
    assert [d["i"] for d in seen] == list(range(10))
    assert set(seen[0]) == {"i", "x", "sigma", "sigma_next", "denoised"}
    assert [float(d["sigma_next"]) for d in seen] == sigmas[1:].tolist()


def test_dpmpp_step_orders():
    # warm-up, lower order at the end on short grids, first order into sigma = 0
    assert [_step_order(3, i, 10, 1.0 if i < 9 else 0.0, True) for i in range(10)] == [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
    assert [_step_order(3, i, 20, 1.0 if i < 19 else 0.0, True) for i in range(20)] == [1, 2] + [3] * 17 + [1]
    assert [_step_order(2, i, 5, 1.0 if i < 4 else 0.0, False) for i in range(5)] == [1, 2, 2, 2, 1]
    assert [_step_order(3, i, 5, 0.5, True) for i in range(5)] == [1, 2, 3, 2, 1]  # ends above 0


@pytest.mark.parametrize("name, opts", [("euler-a", {}), ("euler-a", {"eta": 0.5}),
                                        ("heun", {"s_churn": 5.0}), ("ddpm", {}),
                                        ("dpmpp-2m-sde", {})])
def test_same_seed_same_image_whatever_the_batch(name, opts):
    sd, seeds = 0.5, [11, 12, 13, 14, 15]
    D, sigmas = gaussian_denoiser(sd), karras_sigmas(SIGMA_MIN, SIGMA_MAX, 8)

    def run(seeds):
        gens = per_sample_generators(seeds)
        x = SIGMA_MAX * randn_like(torch.empty(len(seeds), 1, 3, 3, dtype=torch.float64), gens)
        return get_sampler(name)(D, x, sigmas, generator=gens, **opts)

    full = run(seeds)
    assert torch.equal(run(seeds[2:4]), full[2:4])
    assert torch.equal(run(seeds[4:]), full[4:])
    assert not torch.equal(full[0], full[1])


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown sampler 'plms'; expected one of \['ddim', 'ddpm', 'dpmpp-2m', "):
        get_sampler("plms")


@pytest.mark.parametrize("name, opts, message", [("euler-a", {"eta": -1}, "eta must be >= 0"),
                                                ("heun", {"s_churn": -1}, "s_churn and s_noise must be >= 0"),
                                                ("dpmpp-2m-sde", {"eta": -0.5}, "eta must be >= 0")])
def test_bad_options(name, opts, message):
    D = gaussian_denoiser(1.0)
    with pytest.raises(ValueError, match=message):
        get_sampler(name)(D, torch.zeros(1, 1), karras_sigmas(0.1, 1.0, 2), **opts)
