"""Sigma grids: closed forms, shapes, the one entry point and its errors."""

import math

import pytest
import torch

from difforge.diffusion import make_schedule
from difforge.diffusion.grids import GRIDS, discrete_sigmas, karras_sigmas, log_snr_sigmas, sigma_grid


def test_karras_closed_form():
    # Karras et al. (2022), Eq. 5 with rho = 7
    s = karras_sigmas(0.002, 80.0, 5)
    rho = 7
    for i in range(5):
        expect = (80.0 ** (1 / rho) + i / 4 * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
        assert s[i].item() == pytest.approx(expect, rel=1e-12)
    assert s[0] == 80.0 and s[-2] == 0.002 and s[-1] == 0 and s.dtype == torch.float64


def test_log_snr_is_uniform_in_log_sigma():
    s = log_snr_sigmas(0.01, 100.0, 9)
    steps = (s[:-2].log() - s[1:-1].log()).tolist()
    assert steps == pytest.approx([math.log(1e4) / 8] * 8, rel=1e-12)
    assert s[0] == 100.0 and s[-2] == 0.01 and s[-1] == 0


@pytest.mark.parametrize("name", GRIDS)
@pytest.mark.parametrize("steps", [1, 2, 10])
def test_every_grid_is_float64_decreasing_and_ends_in_zero(name, steps):
    sched = make_schedule("cosine", 1000)
    s = sigma_grid(sched, steps, name)
    assert s.dtype == torch.float64 and len(s) == steps + 1
    assert s[-1] == 0 and torch.all(s[:-1] > s[1:])
    assert s[0] <= sched.sigma_max and s[-2] >= sched.sigma_min


def test_ode_grids_span_the_schedule():
    sched = make_schedule("linear", 1000)
    for name in ("karras", "log-snr"):
        s = sigma_grid(sched, 20, name)
        assert s[0] == sched.sigma_max and s[-2] == sched.sigma_min


def test_discrete_names_are_the_timestep_subsets():
    sched = make_schedule("linear", 1000)
    for name in ("leading", "trailing", "linspace"):
        assert torch.equal(sigma_grid(sched, 7, name), discrete_sigmas(sched, 7, name))
    assert torch.equal(sigma_grid(sched, None, "trailing"), discrete_sigmas(sched))


def test_unknown_grid_lists_the_choices():
    sched = make_schedule("linear", 100)
    with pytest.raises(ValueError, match=r"unknown sigma grid 'cosine'; expected one of "
                                         r"\['karras', 'leading', 'linspace', 'log-snr', 'trailing'\]"):
        sigma_grid(sched, 10, "cosine")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sigma_grid(sched, 0, "karras")
    with pytest.raises(ValueError, match="needs a number of steps"):
        sigma_grid(sched, None, "log-snr")
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        karras_sigmas(1.0, 0.5, 4)
