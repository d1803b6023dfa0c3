"""`models.layers.attention`: scaled dot-product attention, in float32 when it trains on the CPU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from difforge.models.layers import attention


def reference(q, k, v, bias=None, keep=None):
    """softmax(q k^T / sqrt(d) + bias) v in float64, keys where keep is False left out."""
    q, k, v = (t.double() for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.double()
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    return scores.softmax(-1) @ v


def leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, requires_grad=True) for s in shapes]


def test_training_under_bf16_autocast_matches_float64_in_value_and_gradient():
    q0, k0, v0 = leaves((2, 4, 64, 8), (2, 4, 16, 8), (2, 4, 16, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = (t.to(torch.bfloat16) for t in (q0, k0, v0))  # as a bf16 Linear hands them over
        out = attention(q, k, v)
    assert out.dtype == torch.bfloat16  # cast back: the layers after it see what they saw before
    want = reference(q0, k0, v0)
    assert (out.double() - want).abs().max() < 0.03  # inputs and output rounded to bf16 (8 bits of mantissa)
    out.float().square().sum().backward()
    got = [t.grad.clone() for t in (q0, k0, v0)]
    for t in (q0, k0, v0):
        t.grad = None
    want.square().sum().backward()
    for g, t in zip(got, (q0, k0, v0)):
        assert torch.allclose(g, t.grad, rtol=0.05, atol=0.05 * t.grad.abs().max().item())


def test_the_training_path_computes_in_float32():
    # with the inputs already exactly representable in bf16, the bf16 result is float32's rounded once
    q0, k0, v0 = (t.detach().to(torch.bfloat16).float().requires_grad_() for t in leaves((1, 2, 64, 8), (1, 2, 64, 8),
                                                                                       (1, 2, 64, 8), seed=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q0.to(torch.bfloat16), k0.to(torch.bfloat16), v0.to(torch.bfloat16))
    assert torch.equal(out, F.scaled_dot_product_attention(q0, k0, v0).to(torch.bfloat16))


def test_masks_bool_and_float():
    q, k, v = (t.detach() for t in leaves((2, 2, 5, 4), (2, 2, 7, 4), (2, 2, 7, 4), seed=2))
    keep = torch.tensor([[True] * 4 + [False] * 3, [True] * 7])[:, None, None, :]
    bias = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(3))[None]
    for grad in (False, True):
        qq, kk, vv = (t.clone().requires_grad_(grad) for t in (q, k, v))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got_keep = attention(*(t.to(torch.bfloat16) for t in (qq, kk, vv)), keep)
            got_bias = attention(*(t.to(torch.bfloat16) for t in (qq, kk, vv)), bias.to(torch.bfloat16))
        assert (got_keep.double() - reference(q, k, v, keep=keep)).abs().max() < 0.03
        assert (got_bias.double() - reference(q, k, v, bias=bias)).abs().max() < 0.05
    # a masked key's value never reaches the output
    v2 = v.clone()
    v2[0, :, 4:] = 1e3
    assert torch.equal(attention(q, k, v, keep), attention(q, k, v2, keep))


def test_float32_and_inference_are_the_plain_call():
    q, k, v = (t.detach() for t in leaves((2, 2, 9, 4), (2, 2, 9, 4), (2, 2, 9, 4), seed=4))
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    assert torch.equal(attention(qb, kb, vb), F.scaled_dot_product_attention(qb, kb, vb))
