import pytest
import torch

from difforge import tasks
from difforge.tasks.ilvr import downsample, low_pass, upsample


def test_low_pass_is_a_projection_that_keeps_block_means():
    v = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(downsample(upsample(v, 2), 2), v)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(low_pass(low_pass(x, 2), 2), low_pass(x, 2))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_ilvr_output_matches_the_low_resolution_input(tiny_pipe, sampler):
    g = torch.Generator().manual_seed(0)
    low = torch.rand(3, 1, 4, 4, generator=g) - 0.5  # well inside [-1, 1], so no clamping
    out = tasks.superres_ilvr(tiny_pipe, low, 2, sampler=sampler, steps=8, seed=1)
    assert out.shape == (3, 1, 8, 8)
    torch.testing.assert_close(downsample(out, 2), low, atol=1e-5, rtol=0)
    again = tasks.superres_ilvr(tiny_pipe, low, 2, sampler=sampler, steps=8, seed=1)
    assert torch.equal(out, again)


def test_ilvr_errors(tiny_pipe):
    with pytest.raises(ValueError, match="needs 4x4"):
        tasks.superres_ilvr(tiny_pipe, torch.zeros(1, 1, 3, 3), 2)
    with pytest.raises(ValueError, match="divide the model's size 8"):
        tasks.superres_ilvr(tiny_pipe, torch.zeros(1, 1, 3, 3), 3)
    with pytest.raises(ValueError, match="channels"):
        tasks.superres_ilvr(tiny_pipe, torch.zeros(1, 3, 4, 4), 2)


def test_slerp_ends_and_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    torch.testing.assert_close(tasks.slerp(a, b, 0.0), a)
    torch.testing.assert_close(tasks.slerp(a, b, 1.0), b)
    mid = tasks.slerp(a, b, 0.5)
    # equal angles to both ends; the norm is the mean of the two norms
    fa, fb, fm = a.flatten(1), b.flatten(1), mid.flatten(1)
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cos(fm, fa), cos(fm, fb))
    torch.testing.assert_close(fm.norm(dim=1), (fa.norm(dim=1) + fb.norm(dim=1)) / 2)
    torch.testing.assert_close(tasks.slerp(a, a, 0.3), a)  # parallel: no division by zero


def test_inversion_round_trip_with_the_exact_denoiser(gaussian_pipe):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g) * 0.3
    errs = []
    for steps in (50, 200):
        z = tasks.invert(gaussian_pipe, x, steps=steps)
        assert z.std() > 50  # at sigma_max the latent is on the noise's scale
        errs.append(float((tasks.decode(gaussian_pipe, z, steps=steps) - x).abs().max()))
    # DDIM is first order: 4x the steps, about 1/4 of the round-trip error
    assert errs[1] < 0.05 and errs[1] < 0.4 * errs[0]


def test_interpolate_shape_and_ends(gaussian_pipe, tiny_pipe):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 1, 8, 8, generator=g) * 0.3, torch.randn(2, 1, 8, 8, generator=g) * 0.3
    seq = tasks.interpolate(gaussian_pipe, a, b, 5, steps=100)
    assert seq.shape == (5, 2, 1, 8, 8)
    gap = (a - b).abs().mean()
    assert (seq[0] - a).abs().mean() < 0.1 * gap and (seq[-1] - b).abs().mean() < 0.1 * gap
    d = [float((f - a).abs().mean()) for f in seq]
    assert d == sorted(d)  # moving away from a, frame by frame
    with pytest.raises(ValueError, match="differ in shape"):
        tasks.interpolate(tiny_pipe, a, b[:1], 3)
    with pytest.raises(ValueError, match="frames must be >= 2"):
        tasks.interpolate(tiny_pipe, a, b, 1)
