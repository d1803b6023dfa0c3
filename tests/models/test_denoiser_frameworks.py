"""Every framework's denoiser adapter, and the exact likelihood through it.

`ExactNet` is the ideal network of a framework for Gaussian data N(0, sd^2 I): it reads
sigma back from the network's noise input (c_noise) and x from its scaled input (c_in x),
and returns its prediction target for the exact posterior mean D* = x sd^2 / (sd^2 + sigma^2).
Wrapped by `Denoiser`, every framework and prediction must then give D* back: this pins
c_in, c_noise, c_skip and c_out of each framework together. Through the same adapters, the
probability-flow ODE likelihood (eval/likelihood.py) must equal the analytic log-density of
N(0, (sd^2 + sigma_min^2) I) within 0.01 bits/dim.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from difforge.diffusion.frameworks import ALLOWED_PREDICTIONS, FRAMEWORKS, FrameworkSpec, make_process
from difforge.diffusion.parameterization import skip_out
from difforge.models.denoiser import Denoiser

SD = 0.5
CASES = [(fw, p) for fw in FRAMEWORKS for p in ALLOWED_PREDICTIONS[fw]]


class ExactNet(nn.Module):
    def __init__(self, noise, prediction: str, sd: float = SD):
        super().__init__()
        self.noise, self.prediction, self.sd = noise, prediction, sd
        self.dtype_anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))  # the network runs in float64

    def sigma_of(self, c_noise: torch.Tensor) -> torch.Tensor:
        c = c_noise.double()
        if self.noise.name == "ddpm":
            return self.noise.t_to_sigma(c)
        if self.noise.name == "edm":
            return torch.exp(4 * c / 1000)  # c_noise = 1000 ln(sigma) / 4
        return self.noise.sigma(c / 999)  # c_noise = 999 t

    def forward(self, x_in, c_noise, cond=None):
        sigma = self.sigma_of(c_noise)
        shape = (-1,) + (1,) * (x_in.ndim - 1)
        x = x_in / self.noise.c_in(sigma).view(shape)
        d = x * (self.sd**2 / (self.sd**2 + sigma**2)).view(shape)
        c_skip, c_out = skip_out(self.prediction, sigma)
        return (d - c_skip.view(shape) * x) / c_out.view(shape)


@pytest.mark.parametrize("framework, prediction", CASES)
def test_adapter_recovers_the_exact_denoiser(framework, prediction):
    noise = make_process(FrameworkSpec(framework))
    den = Denoiser(ExactNet(noise, prediction), noise, prediction)
    sigmas = torch.exp(torch.linspace(math.log(noise.sigma_min), math.log(noise.sigma_max), 9, dtype=torch.float64))
    x = torch.randn(9, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * torch.sqrt(SD**2 + sigmas**2).view(-1, 1, 1, 1)
    expected = x * (SD**2 / (SD**2 + sigmas**2)).view(-1, 1, 1, 1)
    # c_noise reaches the network in float32: sigma comes back to ~1e-6 relative
    assert torch.allclose(den(x, sigmas), expected, rtol=2e-4, atol=1e-6)
    assert torch.allclose(den(x[:1], float(sigmas[0])), expected[:1], rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("framework, prior", [("ddpm", "vp"), ("vp-sde", "vp"), ("subvp-sde", "subvp"),
                                              ("ve-sde", "ve"), ("ncsn", "ve"), ("edm", "ve")])
def test_prior_std_and_ranges(framework, prior):
    noise = make_process(FrameworkSpec(framework))
    den = Denoiser(ExactNet(noise, ALLOWED_PREDICTIONS[framework][0]), noise, ALLOWED_PREDICTIONS[framework][0])
    s = den.sigma_max
    expected = {"vp": math.sqrt(1 + s * s), "ve": s, "subvp": s + 2 / (s + math.sqrt(s * s + 4))}[prior]
    assert den.prior_std() == pytest.approx(expected, rel=1e-12)
    assert 0 < den.sigma_min < 0.05 and den.sigma_max > 40


def test_ddpm_eps_denoiser_is_x_minus_sigma_eps_of_the_vp_input():
    """Ho et al. (2020) through the preconditioning: D = x - sigma eps(x / sqrt(1 + sigma^2), t(sigma))."""
    noise = make_process(FrameworkSpec("ddpm"))
    net = ExactNet(noise, "eps")
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sig = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    s = sig.view(-1, 1, 1, 1)
    eps = net(1.0 / torch.sqrt(1.0 + s**2) * x, noise.discrete.sigma_to_t(sig).float())
    assert torch.equal(Denoiser(net, noise, "eps")(x, sig), x - s * eps)
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        Denoiser(net, noise, "score")
    with pytest.raises(ValueError, match="framework 'ncsn' trains prediction \\['eps'\\], not 'v'"):
        Denoiser(net, make_process(FrameworkSpec("ncsn")), "v")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_pf_ode_likelihood_of_gaussian_data_is_analytic(framework):
    from difforge.eval.likelihood import pf_ode_log_likelihood

    noise = make_process(FrameworkSpec(framework))
    prediction = ALLOWED_PREDICTIONS[framework][-1]  # x0 / v where there is a choice, else the only one
    den = Denoiser(ExactNet(noise, prediction), noise, prediction)
    dims = 8
    x = SD * torch.randn(4, dims, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = pf_ode_log_likelihood(den, x, trace="exact", steps=48)
    var = SD**2 + den.sigma_min**2
    exact = -0.5 * (x**2).sum(1) / var - 0.5 * dims * math.log(2 * math.pi * var)
    bpd = r.bits_per_dim()
    exact_bpd = -exact / (dims * math.log(2))
    assert torch.allclose(bpd, exact_bpd, atol=0.01), (bpd, exact_bpd)
