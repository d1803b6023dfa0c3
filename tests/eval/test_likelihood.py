"""Bits/dim against closed forms: Gaussian data under its exact denoiser / exact eps."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from difforge.diffusion import make_schedule
from difforge.diffusion.frameworks import DDPMProcess
from difforge.eval.likelihood import (
    BIN,
    bits_per_dim,
    ddpm_vlb,
    dequantize,
    discretized_gaussian_log_prob,
    pf_ode_log_likelihood,
)
from difforge.models.denoiser import Denoiser


def gaussian_bpd(x: torch.Tensor, sd: float) -> torch.Tensor:
    """Exact -log2 N(x; 0, sd^2 I) per dimension, per row."""
    nats = (0.5 * (x / sd) ** 2 + math.log(sd) + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    return bits_per_dim(nats, x[0].numel())


class GaussianDenoiser:
    """The exact denoiser of N(0, sd^2 I) data in the VE frame: D = x sd^2 / (sigma^2 + sd^2)."""

    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, sd: float):
        self.sd = sd

    def __call__(self, x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=x.dtype)
        return x * self.sd**2 / (s**2 + self.sd**2)


class FullCovDenoiser:
    """Exact denoiser of N(0, S): D = S (S + sigma^2 I)^{-1} x (a non-diagonal Jacobian)."""

    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, cov: torch.Tensor):
        self.cov = cov

    def __call__(self, x, sigma, cond=None):
        eye = torch.eye(len(self.cov), dtype=torch.float64)
        m = self.cov @ torch.linalg.inv(self.cov + float(sigma) ** 2 * eye)
        return x @ m.T.to(x.dtype)


class GaussianEps(nn.Module):
    """The exact eps of a discrete DDPM on N(0, sd^2 I) data: E[eps | x_t] =
    sqrt(1 - ab) x_t / (ab sd^2 + 1 - ab), for integer timesteps."""

    def __init__(self, schedule, sd: float):
        super().__init__()
        self.ab, self.sd = schedule.alphas_cumprod, sd

    def forward(self, x, t, cond=None):
        ab = self.ab[t.round().long()].view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return (1 - ab).sqrt() * x / (ab * self.sd**2 + 1 - ab)


def g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("trace", ["rademacher", "exact"])
@pytest.mark.parametrize("solver", ["rk4", "rk45"])
def test_ode_gaussian_matches_analytic(trace, solver):
    sd = 0.5
    x = torch.randn(16, 3, 4, 4, generator=g(), dtype=torch.float64) * sd
    r = pf_ode_log_likelihood(GaussianDenoiser(sd), x, trace=trace, solver=solver, generator=g(1))
    assert r.dims == 48 and r.nfe >= 4
    # per image, not only on average: the isotropic Jacobian makes a Rademacher probe exact
    assert (r.bits_per_dim() - gaussian_bpd(x, sd)).abs().max() < 1e-2


def test_ode_full_covariance_exact_trace_and_unbiased_hutchinson():
    a = torch.randn(6, 6, generator=g(2), dtype=torch.float64)
    cov = a @ a.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    x = torch.randn(300, 6, generator=g(3), dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    exact = bits_per_dim(
        -torch.distributions.MultivariateNormal(torch.zeros(6, dtype=torch.float64), cov).log_prob(x), 6)
    den = FullCovDenoiser(cov)
    r = pf_ode_log_likelihood(den, x, trace="exact")
    assert (r.bits_per_dim() - exact).abs().max() < 1e-2
    for trace in ("rademacher", "gaussian"):  # noisy per image, unbiased on average
        diff = (pf_ode_log_likelihood(den, x, trace=trace, generator=g(4)).bits_per_dim() - exact).numpy()
        assert np.abs(diff).max() > 1e-2  # really a stochastic estimate here
        assert abs(diff.mean()) < 3.5 * diff.std() / math.sqrt(len(diff))


def test_ode_variance_preserving_frame():
    """A DDPM eps model seen through its Denoiser: its prior is N(0, (1 + sigma_max^2) I) in
    the VE frame (taken from the denoiser), and the ODE gives the Gaussian's likelihood."""
    sched = make_schedule("linear", 1000)
    den = Denoiser(GaussianEps(sched, 1.0).double(), DDPMProcess(sched), "eps")
    assert den.prior_std() == pytest.approx(math.sqrt(1 + sched.sigma_max**2))
    x = torch.randn(8, 32, generator=g(5), dtype=torch.float64)
    r = pf_ode_log_likelihood(den, x, trace="rademacher", generator=g(6), steps=48)
    sd_eff = math.sqrt(1 + sched.sigma_min**2)  # the data end is sigma_min, not 0
    assert (r.bits_per_dim() - gaussian_bpd(x, sd_eff)).abs().max() < 1e-2
    # the VP prior N(0, I) taken without the frame's scaling is badly wrong: the frame matters
    wrong = pf_ode_log_likelihood(den, x, prior_std=1.0, generator=g(6), steps=48)
    assert (wrong.bits_per_dim() - r.bits_per_dim()).abs().min() > 1.0


def test_ode_dequantized_8bit_gaussian_matches_discrete_probability():
    sd = 0.3
    levels = torch.round((torch.randn(32, 256, generator=g(7), dtype=torch.float64) * sd + 1) * 127.5).clamp(0, 255)
    x = levels / 127.5 - 1  # 8-bit data in model space
    # exact discrete probability of each level under the binned Gaussian (end bins open)
    p = discretized_gaussian_log_prob(x, torch.zeros(()), torch.tensor(sd))
    exact = bits_per_dim(-p.sum(1), 256)
    y = dequantize(x, g(8))
    assert ((y - x).abs() <= BIN / 2).all() and not torch.equal(y, x)
    r = pf_ode_log_likelihood(GaussianDenoiser(sd), y, generator=g(9))
    assert abs(float(r.bits_per_dim(BIN).mean() - exact.mean())) < 1e-2


def test_discretized_decoder_is_a_distribution():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, std in ((0.0, 0.1), (0.93, 0.01), (-1.2, 0.5), (0.5, 1e-4)):
        p = discretized_gaussian_log_prob(levels, torch.tensor(mean), torch.tensor(std)).exp()
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)


def test_vlb_equals_gaussian_nll_when_reverse_process_is_exact():
    """For x0 ~ N(0, I) the reverse variance beta_t is exact and so is the eps, so the bound
    is tight (Ho et al. 2020, Sec. 3.2): its expectation is the exact NLL, for any T (and
    q(x_T) = N(0, I) exactly, so a short schedule keeps the test fast)."""
    sched = make_schedule("linear", 100)
    den = Denoiser(GaussianEps(sched, 1.0), DDPMProcess(sched), "eps")
    x = torch.randn(64, 4096, generator=g(10), dtype=torch.float64)  # standard error ~0.003 bits/dim
    vlb = ddpm_vlb(den, x, generator=g(11), decoder="gaussian")
    assert vlb.dims == 4096
    assert abs(float(vlb.bits_per_dim("large").mean() - gaussian_bpd(x, 1.0).mean())) < 1e-2
    # the posterior variance gives a looser, still valid, bound
    assert float(vlb.bits_per_dim("small").mean()) > float(vlb.bits_per_dim("large").mean()) + 0.1


def test_vlb_near_nll_for_other_variances_and_subsampling_is_unbiased():
    sched = make_schedule("linear", 250)
    sd = 0.5
    den = Denoiser(GaussianEps(sched, sd), DDPMProcess(sched), "eps")
    x = torch.randn(8, 2048, generator=g(12), dtype=torch.float64) * sd
    nll = float(gaussian_bpd(x, sd).mean())
    full = float(ddpm_vlb(den, x, generator=g(13), decoder="gaussian").bits_per_dim().mean())
    assert abs(full - nll) < 0.03  # beta_t is not exact here, but over 250 small steps the gap is tiny
    sub = [float(ddpm_vlb(den, x, generator=g(s), decoder="gaussian", timesteps=60).bits_per_dim().mean())
           for s in range(6)]
    assert abs(np.mean(sub) - full) < 0.03 and np.std(sub) > 0


def test_vlb_discretized_on_8bit_data_is_a_probability():
    sched = make_schedule("linear", 100)
    den = Denoiser(GaussianEps(sched, 0.5), DDPMProcess(sched), "eps")
    x = torch.randint(0, 256, (4, 64), generator=g(14)).double() / 127.5 - 1
    bpd = ddpm_vlb(den, x, generator=g(15)).bits_per_dim()
    assert torch.isfinite(bpd).all() and (bpd > 0).all()  # -log2 of a probability


def test_bad_options_are_named():
    den = GaussianDenoiser(1.0)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown trace estimator 'hutch'"):
        pf_ode_log_likelihood(den, x, trace="hutch")
    with pytest.raises(ValueError, match="unknown ODE solver"):
        pf_ode_log_likelihood(den, x, solver="euler")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        pf_ode_log_likelihood(den, x, sigma_min=1.0, sigma_max=0.5)
    sched = make_schedule("linear", 10)
    with pytest.raises(ValueError, match="unknown decoder"):
        ddpm_vlb(Denoiser(GaussianEps(sched, 1.0), DDPMProcess(sched), "eps"), x, decoder="laplace")


def test_real_network_exact_trace_is_per_image_and_hutchinson_is_unbiased():
    """A (randomly perturbed) UNet through its DDPM Denoiser: the exact trace of a batch equals each
    image alone, and Hutchinson's estimate over many probes agrees with it."""
    from difforge.models import build_model

    torch.manual_seed(0)
    net = build_model("tiny", in_channels=1, num_classes=None).eval()
    with torch.no_grad():
        for p in net.parameters():  # the output layer starts at zero: D would be the identity
            p.add_(torch.randn_like(p) * 0.05)
    den = Denoiser(net, DDPMProcess(make_schedule("linear", 1000)), "eps")
    x = torch.rand(2, 1, 8, 8, generator=g(20), dtype=torch.float64) * 2 - 1
    both = pf_ode_log_likelihood(den, x, trace="exact", steps=3).log_prob
    alone = pf_ode_log_likelihood(den, x[:1], trace="exact", steps=3).log_prob
    assert float(both[0]) == pytest.approx(float(alone[0]), rel=1e-6)
    h = pf_ode_log_likelihood(den, x[:1].expand(32, -1, -1, -1), trace="rademacher", steps=3, generator=g(21)).log_prob
    sem = float(h.std()) / math.sqrt(len(h))
    assert sem > 0 and abs(float(h.mean()) - float(alone[0])) < 3.5 * sem
