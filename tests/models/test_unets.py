"""Shapes, conditioning, errors, gradients and closed forms of the model package."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import difforge.models as models
from difforge.models import PRESETS, SeedUNet, UNet, build_model, size_multiple
from difforge.models.layers import SelfAttention, timestep_embedding

# (preset, resolutions to try): the big presets only at small sizes, to keep this fast.
SHAPES = {
    "tiny": [(8, 8), (16, 16), (12, 20)],
    "unet": [(8, 8), (12, 16)],
    "unet-seed": [(8, 8), (16, 16)],
    "unet-large": [(8, 8)],
    "unet-text": [(8, 8)],
    "diffusers-unet": [(8, 8), (12, 20)],
}


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move the zero-initialised output conv away from zero so outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.out_conv.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _inputs(c: int, h: int, w: int, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, h, w, generator=g)
    t = torch.rand(batch, generator=g) * 999
    return x, t


def test_every_preset_is_tested_for_shapes():
    from difforge.models.registry import takes_clips

    clips = {p for p in PRESETS if takes_clips(p)}
    assert set(SHAPES) == set(PRESETS) - clips
    # tests/video/test_stunet.py and test_rvd.py: their shapes
    assert clips == {"stunet", "stunet-tiny", "stunet-space-down", "rvd", "rvd-tiny"}


@pytest.mark.parametrize("preset", sorted(SHAPES))
def test_output_shape_channels_resolutions_and_conditioning(preset):
    torch.manual_seed(0)
    for in_ch, out_ch in [(1, None), (3, None), (3, 6)]:
        for num_classes in (None, 10):
            model = build_model(preset, in_channels=in_ch, num_classes=num_classes, out_channels=out_ch)
            assert model.num_classes == num_classes
            assert model.size_multiple == size_multiple(preset)
            for h, w in SHAPES[preset]:
                x, t = _inputs(in_ch, h, w)
                cond = torch.tensor([0, 3]) if num_classes else None
                with torch.no_grad():
                    out = model(x, t, cond)
                assert out.shape == (2, out_ch or in_ch, h, w)
                assert out.dtype == torch.float32
            if preset == "unet-large":
                return  # 38M parameters: one build is enough


def test_output_layer_is_zero_initialised():
    for preset in ("tiny", "unet-seed"):
        model = build_model(preset, in_channels=1, num_classes=10)
        x, t = _inputs(1, 8, 8)
        with torch.no_grad():
            assert torch.count_nonzero(model(x, t)) == 0


def test_size_multiples_and_model_classes():
    assert size_multiple("tiny") == 2
    assert size_multiple("unet") == 4  # 28 -> 14 -> 7
    assert size_multiple("unet-seed") == 8
    assert PRESETS["unet"].cls is UNet and PRESETS["unet-seed"].cls is SeedUNet
    assert all(p.description for p in PRESETS.values())


def test_presets_are_frozen():
    preset = PRESETS["tiny"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.cls = SeedUNet
    with pytest.raises(TypeError):
        preset.kwargs["base_channels"] = 64


@pytest.mark.parametrize("preset", ["tiny", "unet-seed"])
def test_null_label(preset):
    torch.manual_seed(0)
    model = _perturbed(build_model(preset, in_channels=1, num_classes=10)).eval()
    x, t = _inputs(1, 8, 8)
    null = torch.full((2,), 10)
    with torch.no_grad():
        out_none = model(x, t)
        out_null = model(x, t, null)
        out_real = model(x, t, torch.tensor([3, 3]))
    torch.testing.assert_close(out_none, out_null)
    assert (out_real - out_null).abs().amax() > 1e-4
    # per sample: a batch mixing labels equals the same samples run one by one
    with torch.no_grad():
        mixed = model(x, t, torch.tensor([3, 10]))
    torch.testing.assert_close(mixed[0], out_real[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], out_null[1], atol=1e-5, rtol=1e-5)


def test_conditioning_errors():
    x, t = _inputs(1, 8, 8)
    uncond = build_model("tiny", in_channels=1, num_classes=None)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, torch.tensor([0, 1]))
    cond = build_model("tiny", in_channels=1, num_classes=10)
    with pytest.raises(ValueError, match="cond must have shape"):
        cond(x, t, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("preset", ["tiny", "unet-seed"])
def test_fractional_timesteps(preset):
    torch.manual_seed(0)
    model = _perturbed(build_model(preset, in_channels=1, num_classes=None)).eval()
    x, _ = _inputs(1, 8, 8)
    with torch.no_grad():
        frac = model(x, torch.tensor([12.37, 0.5]))
        whole = model(x, torch.tensor([12.0, 0.0]))
    assert torch.isfinite(frac).all()
    assert (frac - whole).abs().amax() > 1e-6


@pytest.mark.parametrize("preset,size", [("tiny", (15, 16)), ("unet", (28, 30)), ("unet-seed", (20, 16))])
def test_size_not_divisible_raises(preset, size):
    model = build_model(preset, in_channels=1, num_classes=None)
    x = torch.zeros(1, 1, *size)
    with pytest.raises(ValueError, match=f"divisible by {size_multiple(preset)}"):
        model(x, torch.zeros(1))


def test_unknown_preset_raises():
    expected = f"unknown model 'nope'; expected one of {sorted(PRESETS)}"
    with pytest.raises(ValueError) as err:
        build_model("nope", in_channels=1, num_classes=None)
    assert str(err.value) == expected
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        size_multiple("nope")


# Sizes where every attention layer sees more than one position (else q, k get no gradient).
@pytest.mark.parametrize("preset,size", [("tiny", 8), ("unet", 8), ("unet-seed", 16)])
def test_gradient_reaches_every_parameter(preset, size):
    torch.manual_seed(0)
    model = _perturbed(build_model(preset, in_channels=2, num_classes=4))
    x, t = _inputs(2, size, size, batch=6)
    cond = torch.tensor([0, 1, 2, 3, 4, 4])  # every label row, the null one included
    out = model(x, t, cond)
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_tiny_runs_under_bf16_autocast():
    model = build_model("tiny", in_channels=1, num_classes=10)
    x, t = _inputs(1, 16, 16, batch=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, torch.tensor([0, 1, 2, 10]))
    out.float().square().mean().backward()
    assert out.shape == x.shape


@pytest.mark.parametrize("dim", [8, 7, 256])
def test_timestep_embedding_closed_form(dim):
    t = torch.tensor([0.0, 1.0, 12.37, 998.5])
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim) and emb.dtype == torch.float32
    half = dim // 2
    for b, tb in enumerate(t.tolist()):
        for i in range(half):
            w = 10000.0 ** (-i / half)
            assert emb[b, i].item() == pytest.approx(math.sin(tb * w), abs=2e-4)
            assert emb[b, half + i].item() == pytest.approx(math.cos(tb * w), abs=2e-4)
        if dim % 2:
            assert emb[b, -1].item() == 0.0
    # float32 even for half/bfloat16 timesteps
    assert timestep_embedding(t.to(torch.bfloat16), dim).dtype == torch.float32


def _naive_attention(block: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, written out, with the block's own weights."""
    B, C, H, W = x.shape
    heads, d = block.num_heads, C // block.num_heads
    tokens = x.reshape(B, C, H * W).transpose(1, 2)
    if isinstance(block.norm, nn.GroupNorm):
        h = block.norm(x).reshape(B, C, H * W).transpose(1, 2)
    else:
        h = block.norm(tokens)
    q, k, v = block.qkv(h).split(C, dim=-1)
    out = torch.zeros_like(tokens)
    for i in range(heads):
        sl = slice(i * d, (i + 1) * d)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)
        out[..., sl] = weights @ v[..., sl]
    tokens = tokens + block.proj(out)
    if block.ff is not None:
        tokens = tokens + block.ff(tokens)
    return tokens.transpose(1, 2).reshape(B, C, H, W)


@pytest.mark.parametrize("norm,mlp_ratio", [("group", 0), ("layer", 1)])
def test_attention_matches_naive_softmax(norm, mlp_ratio):
    torch.manual_seed(0)
    block = SelfAttention(32, num_heads=4, norm=norm, mlp_ratio=mlp_ratio)
    with torch.no_grad():
        for p in block.parameters():  # non-trivial norm affine parameters too
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 32, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _naive_attention(block, x), atol=1e-5, rtol=1e-5)


def test_models_import_no_training_or_serving_code():
    forbidden = ("difforge.train", "difforge.eval", "difforge.serve", "difforge.cli")
    for path in Path(models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = [n for n in names if n.startswith(forbidden)]
            assert not bad, f"{path.name} imports {bad}"
