"""Annealed Langevin dynamics, reverse-SDE Euler-Maruyama and predictor-corrector driven
by exact denoisers: Gaussian data must come out with std sd, a Gaussian mixture with its
moments and weights; the Langevin corrector must keep the exact noisy marginal.

Gaussian data N(0, sd^2 I) seen at sigma: D = x sd^2 / (sd^2 + sigma^2). The Langevin rules
set their step from norms, which concentrate only in many dimensions (Song et al. 2021,
Algorithm 4), so those tests use 64-dimensional data. Tolerances: about 4 standard errors
plus the discretization bias measured when they were written (in the comments).
"""

from __future__ import annotations

import math

import pytest
import torch

from difforge.diffusion.grids import karras_sigmas, log_snr_sigmas
from difforge.sampling import get_sampler, per_sample_generators, randn_like
from difforge.sampling.langevin import langevin_corrector
from tests.sampling.test_samplers_closed_form import SIGMA_MAX, SIGMA_MIN, gaussian_denoiser, mixture


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gaussian_start(n, d, sd, sigma, g):
    return math.sqrt(sd**2 + sigma**2) * torch.randn(n, d, generator=g, dtype=torch.float64)


# sampler, options, grid, steps; measured relative std error in the comment
# Euler-Maruyama in u = sigma^2 overshoots the variance by about du^2 / V per step, and the
# corrector adds its own bias (~snr^2), so these first-order samplers need many steps;
# annealed Langevin needs enough steps per level to equilibrate near sigma ~ sd.
GAUSSIAN_RUNS = [
    ("reverse-sde", {}, "karras", 400, 0.03),  # +0.8%
    ("pc", {"snr": 0.05}, "karras", 400, 0.04),  # +1.9%
    ("langevin", {"n_steps_each": 30}, "log-snr", 60, 0.055),  # +2.9%
]


@pytest.mark.parametrize("name, opts, grid, steps, tol", GAUSSIAN_RUNS)
def test_gaussian_data_gives_std_sd(name, opts, grid, steps, tol):
    sd, n, d = 0.5, 200, 64  # 12800 numbers: the std's standard error is 0.63%
    g = torch.Generator().manual_seed(1)
    sigmas = (karras_sigmas if grid == "karras" else log_snr_sigmas)(SIGMA_MIN if grid == "karras" else 0.01,
                                                                     SIGMA_MAX, steps)
    x = gaussian_start(n, d, sd, float(sigmas[0]), g)
    out = get_sampler(name)(gaussian_denoiser(sd), x, sigmas, generator=g, **opts)
    assert out.std().item() == pytest.approx(sd, rel=tol)
    assert abs(out.mean().item()) < 0.01


@pytest.mark.parametrize("name, opts, steps", [("reverse-sde", {}, 400)])
def test_mixture_moments_and_weights(name, opts, steps):
    D, n = mixture(), 4000
    g = torch.Generator().manual_seed(2)
    out = get_sampler(name)(D, D.sample(n, SIGMA_MAX, g), karras_sigmas(SIGMA_MIN, SIGMA_MAX, steps), generator=g,
                            **opts)
    assert torch.allclose(out.mean(0), D.mean(), atol=0.1, rtol=0)
    weights = torch.bincount(D.nearest(out), minlength=3).double() / n
    assert torch.allclose(weights, D.w, atol=0.035, rtol=0)
    for k in range(3):
        mode = out[D.nearest(out) == k]
        assert mode.std(0).mean().item() == pytest.approx(D.sd[k].item(), rel=0.1)


def test_langevin_corrector_keeps_the_noisy_marginal():
    # start exactly at p_sigma = N(0, (sd^2 + sigma^2) I); 20 corrector steps at snr 0.05 keep it
    sd, sigma, n, d = 0.5, 1.0, 400, 64
    g = torch.Generator().manual_seed(3)
    x = gaussian_start(n, d, sd, sigma, g)
    y = langevin_corrector(gaussian_denoiser(sd), x, torch.tensor(sigma, dtype=torch.float64), snr=0.05, steps=20,
                           generator=g)
    assert y.std().item() == pytest.approx(math.sqrt(sd**2 + sigma**2), rel=0.02)  # measured +0.6%
    assert not torch.allclose(x, y)


@pytest.mark.parametrize("name, opts, calls", [("langevin", {"n_steps_each": 3}, 3 * 9 + 1),
                                               ("reverse-sde", {}, 10), ("pc", {}, 10 + 9)])
def test_denoiser_calls_and_one_callback_per_step(name, opts, calls):
    D, sigmas = mixture(), karras_sigmas(SIGMA_MIN, SIGMA_MAX, 10)
    seen = []
    get_sampler(name)(D, D.sample(4, SIGMA_MAX, torch.Generator().manual_seed(0)), sigmas,
                      generator=torch.Generator().manual_seed(0), callback=seen.append, **opts)
    assert D.calls == calls
    assert [d["i"] for d in seen] == list(range(10))
    assert set(seen[0]) == {"i", "x", "sigma", "sigma_next", "denoised"}


@pytest.mark.parametrize("name", ["langevin", "reverse-sde", "pc"])
def test_same_seed_same_image_whatever_the_batch(name):
    sd, seeds = 0.5, [11, 12, 13, 14, 15]
    D, sigmas = gaussian_denoiser(sd), karras_sigmas(SIGMA_MIN, SIGMA_MAX, 6)

    def run(seeds):
        gens = per_sample_generators(seeds)
        x = SIGMA_MAX * randn_like(torch.empty(len(seeds), 1, 4, 4, dtype=torch.float64), gens)
        return get_sampler(name)(D, x, sigmas, generator=gens)

    full = run(seeds)
    assert torch.equal(run(seeds[2:4]), full[2:4])
    assert not torch.equal(full[0], full[1])


@pytest.mark.parametrize("name, opts, message", [
    ("langevin", {"n_steps_each": 0}, "n_steps_each >= 1"),
    ("langevin", {"step_lr": -1.0}, "step_lr > 0"),
    ("pc", {"snr": -0.1}, "snr and corrector_steps must be >= 0"),
])
def test_bad_options(name, opts, message):
    with pytest.raises(ValueError, match=message):
        get_sampler(name)(gaussian_denoiser(1.0), torch.zeros(1, 1), karras_sigmas(0.1, 1.0, 3), **opts)
