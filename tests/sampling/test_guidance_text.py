"""Classifier-free guidance with text conds: the empty prompt or a negative prompt as the
explicit null, batched with the prompts in one forward pass (`cat_cond`), equal to the
guidance formula computed from separate calls; TextCond through the samplers."""

from __future__ import annotations

import pytest
import torch

from difforge.diffusion.frameworks import FrameworkSpec
from difforge.models.card import Architecture, ModelCard
from difforge.models.conditioning import TextPrompts
from difforge.models.text import TextCond
from difforge.sampling import CFGDenoiser, sample_ddim, sample_heun
from difforge.sampling.guidance import broadcast_cond, cat_cond

SPEC = TextPrompts("scratch", 48, width=16, layers=1, heads=2)
PROMPTS = ["a red square", "a long prompt about a blue circle", "x"]


def _denoiser():
    torch.manual_seed(0)
    card = ModelCard(Architecture("tiny", {"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1,
                                           "attention_levels": (1,), "num_heads": 2}),
                     8, 8, 3, FrameworkSpec("edm"), None, SPEC)
    den = card.denoiser().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in den.net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return den


def _x(n: int = 3):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("scale", [0.0, 1.0, 4.0])
def test_cfg_with_text_equals_the_formula_from_separate_calls(scale):
    den, x = _denoiser(), _x()
    cond, null = SPEC.conditioner()(PROMPTS), SPEC.null(1)
    with torch.no_grad():
        d_cond, d_null = den(x, 2.0, cond), den(x, 2.0, SPEC.null(3))
        guided = CFGDenoiser(den, scale, null=null)(x, 2.0, cond)
        assert torch.allclose(guided, d_null + scale * (d_cond - d_null), atol=1e-5)
        # the null of B rows and of 1 row (broadcast) are the same guidance
        assert torch.allclose(CFGDenoiser(den, scale, null=SPEC.null(3))(x, 2.0, cond), guided, atol=1e-6)
        # no cond: the unconditional model
        assert torch.allclose(CFGDenoiser(den, scale, null=null)(x, 2.0), d_null, atol=1e-6)


def test_a_negative_prompt_replaces_the_null():
    den, x = _denoiser(), _x()
    conditioner = SPEC.conditioner()
    cond, negative = conditioner(PROMPTS), conditioner(["blurry, dark"])
    with torch.no_grad():
        d_cond, d_neg = den(x, 2.0, cond), den(x, 2.0, conditioner(["blurry, dark"] * 3))
        guided = CFGDenoiser(den, 3.0, null=negative)(x, 2.0, cond)
        assert torch.allclose(guided, d_neg + 3.0 * (d_cond - d_neg), atol=1e-5)
        assert not torch.allclose(guided, CFGDenoiser(den, 3.0, null=SPEC.null(1))(x, 2.0, cond), atol=1e-3)


def test_cat_and_broadcast_cond_for_labels_and_text():
    labels = torch.tensor([0, 2])
    assert torch.equal(cat_cond(labels, torch.tensor([5, 5])), torch.tensor([0, 2, 5, 5]))
    assert torch.equal(broadcast_cond(torch.tensor([7]), 3), torch.tensor([7, 7, 7]))
    a, b = SPEC.conditioner()(["ab"]), SPEC.conditioner()(["abcdef", ""])
    both = cat_cond(a, b)
    assert isinstance(both, TextCond) and len(both) == 3 and both.ids.shape[1] == b.ids.shape[1]
    assert len(broadcast_cond(a, 4)) == 4 and broadcast_cond(b, 2) is b
    with pytest.raises(ValueError, match="of 2 rows for a batch of 3"):
        broadcast_cond(b, 3)


def test_cfg_takes_exactly_one_null():
    den = _denoiser()
    for bad in (dict(), dict(null_label=3, null=SPEC.null(1))):
        with pytest.raises(ValueError, match="exactly one of null_label"):
            CFGDenoiser(den, 2.0, **bad)


def test_samplers_carry_a_textcond_through_guidance():
    den, x = _denoiser(), _x()
    cond = SPEC.conditioner()(PROMPTS)
    guided = CFGDenoiser(den, 3.0, null=SPEC.null(1))
    sigmas = torch.tensor([5.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    with torch.no_grad():
        for sampler in (sample_ddim, sample_heun):
            out = sampler(guided, x * 5.0, sigmas, cond=cond)
            # a batch sampled as slices with the slices of the TextCond (as the pipeline batches) is the same
            parts = torch.cat([sampler(guided, x[i : i + 2] * 5.0, sigmas, cond=cond[i : i + 2]) for i in (0, 2)])
            assert out.shape == x.shape and torch.isfinite(out).all()
            assert torch.allclose(out, parts, atol=1e-4)
