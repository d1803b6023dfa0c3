"""The space-time UNet: shapes, the invariants of its spatial and temporal layers, and
every framework and sampler on clips."""

import pytest
import torch

from difforge.diffusion.frameworks import FrameworkSpec
from difforge.models import build_model
from difforge.models.card import Architecture, ModelCard
from difforge.models.conditioning import VideoFrames
from difforge.models.frames import FrameCond
from difforge.models.stunet import (
    Downsample3D,
    SpatialAttention,
    SpatialResBlock,
    TemporalAttention,
    TemporalConv,
    Upsample3D,
    patchify,
    unpatchify,
)
from difforge.sampling import SAMPLERS, CFGDenoiser, KeepGivenDenoiser


def _net(preset="stunet-tiny", classes=3, cond=2, patch_size=1, head_channels=0):
    torch.manual_seed(0)
    from difforge.models.registry import architecture_kwargs

    net = build_model(preset, in_channels=1, num_classes=classes, cond_channels=cond,
                      kwargs=architecture_kwargs(preset, {"patch_size": patch_size, "head_channels": head_channels}))
    for p in net.parameters():  # the output conv starts at zero and the position biases too: make them act
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.3)
    return net.eval()


@pytest.mark.parametrize("preset, t_low", [("stunet-tiny", 8), ("stunet", 4), ("stunet-space-down", 16)])
def test_output_shape_and_time_downsampling(preset, t_low):
    net = build_model(preset, in_channels=1, num_classes=3, cond_channels=2)
    seen = []
    net.mid[0].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    x = torch.randn(2, 1, 16, 16 if preset == "stunet-tiny" else 32, 16 if preset == "stunet-tiny" else 32)
    with torch.no_grad():
        out = net(x, torch.rand(2), torch.tensor([0, 2]))
    assert out.shape == x.shape
    assert seen[0][2] == t_low  # frames at the lowest level: halved per level with time_down, else all


def test_bad_clip_shapes_are_refused():
    net = build_model("stunet-tiny", in_channels=1, num_classes=None)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        net(torch.randn(2, 1, 16, 16), torch.rand(2))
    with pytest.raises(ValueError, match="a multiple of 2"):
        net(torch.randn(1, 1, 5, 16, 16), torch.rand(1))
    with pytest.raises(ValueError, match="at most 16 frames"):
        net(torch.randn(1, 1, 18, 16, 16), torch.rand(1))


@pytest.mark.parametrize("patch_size, head", [(1, 0), (2, 0), (2, 4)])
def test_identical_frames_give_identical_frames(patch_size, head):
    net = _net(patch_size=patch_size, head_channels=head)
    frame = torch.randn(2, 1, 1, 16, 16)
    x = frame.expand(2, 1, 8, 16, 16).contiguous()
    cond = FrameCond.given(x, torch.zeros(2, 8, dtype=torch.bool), torch.tensor([1, 2]))
    with torch.no_grad():
        out = net(x, torch.tensor([3.0, 50.0]), cond)
    assert out.abs().mean() > 1e-3
    torch.testing.assert_close(out, out[:, :, :1].expand_as(out), atol=1e-5, rtol=1e-5)


def test_patches_fold_pixels_into_channels_and_back():
    x = torch.randn(10, 3, 8, 12)  # frames
    p = patchify(x, 2)
    assert p.shape == (10, 12, 4, 6)
    c, i, j, y, w = 1, 1, 0, 3, 4  # channel c p^2 + i p + j at (y, w) is pixel (y p + i, w p + j) of channel c
    torch.testing.assert_close(p[:, c * 4 + i * 2 + j, y, w], x[:, c, y * 2 + i, w * 2 + j])
    torch.testing.assert_close(unpatchify(p, 2), x)
    assert patchify(x, 1) is x and unpatchify(x, 1) is x


def test_patch_size_shrinks_every_level_and_keeps_the_clip_shape():
    net, plain = _net(patch_size=2), _net()
    seen = {}
    net.mid[0].register_forward_hook(lambda m, i, o: seen.update(patch=tuple(o.shape)))
    plain.mid[0].register_forward_hook(lambda m, i, o: seen.update(plain=tuple(o.shape)))
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        assert net(x, torch.rand(2), torch.tensor([0, 2])).shape == x.shape
        plain(x, torch.rand(2), torch.tensor([0, 2]))
    assert seen["patch"][-2:] == (4, 4) and seen["plain"][-2:] == (8, 8)
    assert net.size_multiple == 2 * plain.size_multiple
    assert net.frame_multiple == plain.frame_multiple == 2  # patches are in space: 6 frames still go
    with torch.no_grad():
        assert net(torch.randn(1, 1, 6, 16, 16), torch.rand(1)).shape == (1, 1, 6, 16, 16)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 8, 18, 18), torch.rand(1))
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        _net(patch_size=0)
    with pytest.raises(ValueError, match="head_channels .* needs patch_size > 1"):
        _net(head_channels=4)


def test_a_full_size_head_convolves_the_unfolded_features():
    net = _net(patch_size=2, head_channels=4)
    seen = []
    net.out_conv.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        out = net(x, torch.rand(2), torch.tensor([0, 1]))
        feats = seen[0]  # (B T, 4 p^2, 8, 8): every frame's head input, folded
        assert feats.shape == (16, 16, 8, 8)
        full = torch.nn.functional.pixel_shuffle(feats, 2)  # (B T, 4, 16, 16)
        expected = torch.nn.functional.conv2d(torch.nn.functional.silu(full), net.head.weight, net.head.bias,
                                              padding=1)
    torch.testing.assert_close(out, expected.view(2, 8, 1, 16, 16).transpose(1, 2))


def _permuted(layer, x, perm):
    with torch.no_grad():
        return layer(x[:, :, perm]), layer(x)[:, :, perm]


def test_spatial_layers_commute_with_reordering_frames():
    torch.manual_seed(1)
    x, perm, emb = torch.randn(2, 8, 6, 8, 8), torch.tensor([3, 0, 5, 1, 4, 2]), torch.randn(2, 16)
    a, b = _permuted(SpatialAttention(8, 2), x, perm)
    torch.testing.assert_close(a, b)
    res = SpatialResBlock(8, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(res(x[:, :, perm], emb), res(x, emb)[:, :, perm])


def test_temporal_layers_see_frame_order():
    torch.manual_seed(2)
    x, perm = torch.randn(2, 8, 6, 4, 4), torch.tensor([3, 0, 5, 1, 4, 2])
    a, b = _permuted(TemporalConv(8), x, perm)
    assert (a - b).abs().max() > 1e-3
    attn = TemporalAttention(8, 2, max_frames=16)
    a, b = _permuted(attn, x, perm)  # no position bias: attention over a set, order-equivariant
    torch.testing.assert_close(a, b)
    with torch.no_grad():
        attn.rel.normal_()  # relative positions: the order matters
    a, b = _permuted(attn, x, perm)
    assert (a - b).abs().max() > 1e-3


def test_temporal_attention_bias_is_relative():
    attn = TemporalAttention(4, 1, max_frames=4)
    with torch.no_grad():
        attn.rel.copy_(torch.arange(7.0)[None])
    bias = attn.bias(3)[0]
    assert bias.tolist() == [[3, 4, 5], [2, 3, 4], [1, 2, 3]]  # rel[j - i + 3]


def test_time_resampling_keeps_constant_clips():
    torch.manual_seed(3)
    x = torch.randn(1, 4, 1, 8, 8).expand(1, 4, 8, 8, 8)
    with torch.no_grad():
        down = Downsample3D(4, True)(x)
        up = Upsample3D(4, True)(down, 8)
    assert down.shape == (1, 4, 4, 4, 4) and up.shape == (1, 4, 8, 8, 8)
    torch.testing.assert_close(up, up[:, :, :1].expand_as(up))


def _card(framework, prediction=None):
    spec = FrameworkSpec(framework=framework, timesteps=50)
    return ModelCard(Architecture.of_preset("stunet-tiny"), 16, 16, 1, spec, prediction, VideoFrames(8, 3),
                     ("a", "b", "c"))


@pytest.mark.parametrize("framework", ["ddpm", "edm", "ve-sde", "vp-sde"])
def test_every_framework_trains_and_samples_clips(framework):
    card = _card(framework)
    torch.manual_seed(0)
    den = card.denoiser()
    x0 = torch.rand(2, 1, 8, 16, 16) * 2 - 1
    cond = card.conditioning.training_cond(torch.tensor([0, 1]), 2, 0.5, torch.Generator().manual_seed(0))
    loss = den.loss(x0, cond.observe(x0), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    mask = torch.tensor([[True, True] + [False] * 6] * 2)
    given = FrameCond.given(x0, mask, torch.tensor([0, 2]))
    d = KeepGivenDenoiser(CFGDenoiser(den.eval(), 2.0, null=card.conditioning.null(1)))
    from difforge.diffusion.grids import sigma_grid

    sigmas = sigma_grid(den.process, 3, "trailing" if framework == "ddpm" else "karras")
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    for name in ("ddim", "euler-a", "heun", "dpmpp-2m", "ddpm"):
        x = torch.randn(2, 1, 8, 16, 16) * den.prior_std(float(sigmas[0]))
        with torch.no_grad():
            out = SAMPLERS[name](d, x, sigmas, generator=gens, callback=None, cond=given)
        assert out.shape == x0.shape and torch.isfinite(out).all()
        if name in ("ddim", "heun", "dpmpp-2m"):  # deterministic: the last step is D's estimate
            torch.testing.assert_close(out[:, :, :2], x0[:, :, :2])


def test_latent_frames_mean_is_the_mean_over_unobserved_frames():
    from difforge.models.denoiser import latent_frames_mean

    err = torch.arange(2 * 1 * 4 * 2 * 2, dtype=torch.float32).view(2, 1, 4, 2, 2)
    mask = torch.tensor([[True, False, False, True], [False, False, False, False]])
    cond = FrameCond(mask, None, None)
    got = latent_frames_mean(err, cond)
    frame_means = err.mean(dim=(1, 3, 4))  # (2, 4)
    torch.testing.assert_close(got, torch.stack([frame_means[0, 1:3].mean(), frame_means[1].mean()]))
    torch.testing.assert_close(latent_frames_mean(err, None), err.flatten(1).mean(1))  # images / nothing given
    torch.testing.assert_close(latent_frames_mean(err, torch.tensor([0, 1])), err.flatten(1).mean(1))  # labels


def test_the_loss_ignores_observed_frames():
    card = _card("edm")
    torch.manual_seed(0)
    den = card.denoiser()
    x0 = torch.rand(2, 1, 8, 16, 16) * 2 - 1
    mask = torch.tensor([[True] * 4 + [False] * 4, [False] * 8])
    cond = FrameCond.given(x0, mask, torch.tensor([0, 1]))
    calls = {}

    def keep(module, args, out):  # the network's output: only its latent frames may reach the loss
        out.retain_grad()
        calls["out"] = out

    handle = den.net.register_forward_hook(keep)
    den.loss(x0, cond, generator=torch.Generator().manual_seed(0)).backward()
    handle.remove()
    grad = calls["out"].grad
    assert grad[0, :, :4].abs().max() == 0 and grad[0, :, 4:].abs().max() > 0 and grad[1].abs().max() > 0
