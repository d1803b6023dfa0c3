"""Guidance rescale and dynamic thresholding against hand-computed values (and diffusers')."""

import math

import pytest
import torch
from torch import nn

from difforge.sampling import CFGDenoiser, ClampDenoiser, DynamicThresholdDenoiser
from difforge.sampling.euler import ancestral_step
from difforge.sampling.guidance import dynamic_threshold, rescale_guidance


class TwoHeads(nn.Module):
    """D(x, sigma, label) = x - (label + 1) * w: label 0 is 'conditional', label 1 the null one."""

    def __init__(self, w_cond, w_null):
        super().__init__()
        self.w = {0: torch.as_tensor(w_cond, dtype=torch.float64), 1: torch.as_tensor(w_null, dtype=torch.float64)}

    def forward(self, x, sigma, cond):
        return torch.stack([x[i] - self.w[int(c)] for i, c in enumerate(cond)])


def test_guidance_rescale_hand_computed():
    # x = 0, x - D_cond = e_c = [1, 2, 3, 4] (std 1.2910), x - D_null = e_n = [0, 0, 0, 0].
    # scale 3: e_cfg = e_n + 3 (e_c - e_n) = [3, 6, 9, 12] (std 3.8730), ratio = 1/3.
    # phi = 0.5: factor = 0.5 / 3 + 0.5 = 2/3, e_final = [2, 4, 6, 8], D = x - e_final.
    x = torch.zeros(1, 4, dtype=torch.float64)
    inner = TwoHeads([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0])
    d = CFGDenoiser(inner, scale=3.0, null_label=1, rescale=0.5)
    out = d(x, 1.0, torch.tensor([0]))
    assert torch.allclose(out, torch.tensor([[-2.0, -4.0, -6.0, -8.0]], dtype=torch.float64), atol=1e-12)
    # phi = 1: the guided eps gets the conditional eps's std exactly
    full = CFGDenoiser(inner, scale=3.0, null_label=1, rescale=1.0)(x, 1.0, torch.tensor([0]))
    assert torch.allclose(full, -torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64), atol=1e-12)
    # phi = 0: plain CFG
    plain = CFGDenoiser(inner, scale=3.0, null_label=1)(x, 1.0, torch.tensor([0]))
    assert torch.allclose(plain, -torch.tensor([[3.0, 6.0, 9.0, 12.0]], dtype=torch.float64), atol=1e-12)


def test_guidance_rescale_per_sample_and_nonzero_x():
    # sample 0: x = 1, e_c = [1, -1] (std sqrt 2), e_n = [0, 0]; scale 2: e_cfg = [2, -2] (std 2 sqrt 2);
    # phi = 1: e_final = [1, -1], D = [0, 2]. sample 1: e_c = e_n = [2, 4]: guidance does nothing.
    x = torch.ones(2, 2, dtype=torch.float64)
    d_cond = x - torch.tensor([[1.0, -1.0], [2.0, 4.0]], dtype=torch.float64)
    d_null = x - torch.tensor([[0.0, 0.0], [2.0, 4.0]], dtype=torch.float64)
    guided = d_null + 2.0 * (d_cond - d_null)
    out = rescale_guidance(x, guided, d_cond, 1.0)
    assert torch.allclose(out, torch.tensor([[0.0, 2.0], [-1.0, -3.0]], dtype=torch.float64), atol=1e-12)


def test_guidance_rescale_matches_diffusers_on_eps():
    diffusers_utils = pytest.importorskip("diffusers.guiders.guider_utils")  # its rescale_noise_cfg
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64).view(-1, 1, 1, 1)
    eps_c, eps_n = torch.randn(2, 3, 2, 5, 5, generator=g, dtype=torch.float64)
    scale, phi = 4.0, 0.7
    eps_cfg = eps_n + scale * (eps_c - eps_n)
    expect = diffusers_utils.rescale_noise_cfg(eps_cfg, eps_c, guidance_rescale=phi)
    d_cond, d_cfg = x - sigma * eps_c, x - sigma * eps_cfg
    out = rescale_guidance(x, d_cfg, d_cond, phi)
    assert torch.allclose((x - out) / sigma, expect, atol=1e-12)


def test_dynamic_threshold_hand_computed():
    x0 = torch.tensor([[-3.0, 0.5, 2.0, 1.0], [0.2, -0.4, 0.1, 0.3]], dtype=torch.float64).view(2, 1, 2, 2)
    out = dynamic_threshold(x0, p=0.5)
    # sample 0: |x0| sorted [0.5, 1, 2, 3]; the 0.5-quantile sits at 1.5 -> s = 1 + 0.5 (2 - 1) = 1.5;
    # clamp to [-1.5, 1.5] and divide: [-1, 1/3, 1, 2/3]. sample 1: s = 0.25 < 1 -> s = 1, unchanged.
    assert torch.allclose(out[0].flatten(), torch.tensor([-1.0, 1 / 3, 1.0, 2 / 3], dtype=torch.float64))
    assert torch.equal(out[1], x0[1])
    # s capped by max_value: s = 1.2, clamp to [-1.2, 1.2], divide
    capped = dynamic_threshold(x0[:1], p=0.5, max_value=1.2)
    assert torch.allclose(capped.flatten(), torch.tensor([-1.0, 0.5 / 1.2, 1.0, 1 / 1.2], dtype=torch.float64))
    # p = 1: s = max |x0|, everything scaled into [-1, 1] without clipping
    assert torch.allclose(dynamic_threshold(x0[:1], p=1.0).flatten(), x0[0].flatten() / 3)


def test_dynamic_threshold_matches_torch_quantile_and_diffusers():
    g = torch.Generator().manual_seed(1)
    x0 = 2.5 * torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    s = torch.quantile(x0.reshape(4, -1).abs(), 0.995, dim=1).clamp(min=1).view(-1, 1, 1, 1)
    assert torch.allclose(dynamic_threshold(x0, 0.995), x0.clamp(-s, s) / s, atol=1e-12)
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=4.0)
    expect = sched._threshold_sample(x0.clone())
    assert torch.allclose(dynamic_threshold(x0, 0.995, max_value=4.0), expect, atol=1e-12)


def test_threshold_denoiser_wraps_like_clamp():
    inner = lambda x, sigma, cond=None: 3 * x  # noqa: E731
    x = torch.linspace(-1, 1, 8, dtype=torch.float64).view(2, 1, 2, 2)
    assert DynamicThresholdDenoiser(inner, p=1.0)(x, 1.0).abs().max() == 1.0
    assert ClampDenoiser(inner)(x, 1.0).abs().max() == 1.0


@pytest.mark.parametrize("make, message", [
    (lambda: CFGDenoiser(nn.Identity(), 3.0, 10, rescale=1.5), r"guidance rescale must be in \[0, 1\], got 1.5"),
    (lambda: DynamicThresholdDenoiser(nn.Identity(), p=99.5), r"percentile must be in \(0, 1\], got 99.5"),
    (lambda: CFGDenoiser(nn.Identity(), 3.0, 10, interval=(5.0, 1.0)), r"needs 0 <= lo <= hi .*got 5.0, 1.0"),
])
def test_bad_guidance_options(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_ancestral_step_keeps_the_marginal():
    # eta = 1: sigma_up is the VE posterior std sigma' sqrt(sigma^2 - sigma'^2) / sigma
    down, up = ancestral_step(2.0, 1.0, 1.0)
    assert up == pytest.approx(1.0 * (4.0 - 1.0) ** 0.5 / 2.0)
    assert down**2 + up**2 == pytest.approx(1.0)
    assert ancestral_step(2.0, 1.0, 0.0) == (1.0, 0.0)
    assert ancestral_step(2.0, 0.0, 1.0) == (0.0, 0.0)


class Affine(nn.Module):
    """D(x, sigma, label) = x * (label + 1) + sigma; records the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, sigma, cond):
        self.batches.append(len(x))
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)
        return x * (cond.to(x.dtype) + 1).view(-1, 1) + sigma


def test_guidance_interval_guides_inside_and_runs_one_pass_outside():
    """Null label 9: D_null = 10 x + s, D_cond = x + s, guided = D_null + 2 (D_cond - D_null) = -8 x + s."""
    x = torch.tensor([[1.0], [2.0]])
    cond = torch.zeros(2, dtype=torch.long)
    inner = Affine()
    den = CFGDenoiser(inner, 2.0, 9, interval=(0.5, 2.0))
    assert torch.allclose(den(x, torch.tensor(1.0), cond), -8 * x + 1)  # inside: both passes, one batch of 4
    assert torch.allclose(den(x, torch.tensor(3.0), cond), x + 3)  # above: the conditional model alone
    assert torch.allclose(den(x, torch.tensor(0.1), cond), x + 0.1)  # below
    assert inner.batches == [4, 2, 2]
    per_sample = den(x, torch.tensor([1.0, 3.0]), cond)  # levels per sample, one inside, one outside
    assert torch.allclose(per_sample, torch.tensor([[-8 * 1.0 + 1], [2.0 + 3]]))
    plain = CFGDenoiser(Affine(), 2.0, 9)
    assert torch.allclose(plain(x, torch.tensor(3.0), cond), -8 * x + 3)  # no interval: guided everywhere
    everywhere = CFGDenoiser(Affine(), 2.0, 9, interval=(0.0, math.inf))  # `--cfg-interval all`
    assert everywhere.interval is None
    assert torch.allclose(everywhere(x, torch.tensor(300.0), cond), -8 * x + 300)
