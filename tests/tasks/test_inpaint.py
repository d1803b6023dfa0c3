import pytest
import torch

from difforge import tasks
from difforge.tasks.inpaint import repaint_path
from difforge.tasks.masks import check_mask, mask_from_array


def _images(n=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("method,sampler", [("repaint", "ddpm"), ("blend", "ddim"), ("blend", "heun"),
                                            ("repaint", "euler-a"), ("blend", "dpmpp-2m")])
def test_known_region_kept_exactly(tiny_pipe, method, sampler):
    x = _images()
    m = tasks.make_mask("center", 8, 3)
    out = tasks.inpaint(tiny_pipe, x, m, method=method, sampler=sampler, steps=6, jump_length=2, resample=2)
    assert out.shape == x.shape
    assert torch.equal(out[m.expand_as(x) == 0], x[m.expand_as(x) == 0])
    assert out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out[m.expand_as(x) == 1], x[m.expand_as(x) == 1])


def test_padded_model_keeps_native_size_and_known_pixels(padded_pipe):
    x = _images(2, 7)
    m = tasks.make_mask("left", 7, 2)
    out = tasks.inpaint(padded_pipe, x, m, steps=5)
    assert out.shape == (2, 1, 7, 7)
    assert torch.equal(out[..., 4:], x[..., 4:])


def test_deterministic_per_image_seed(tiny_pipe):
    x = _images(3)
    m = tasks.make_mask("strokes", 8, 3, seed=4)
    a = tasks.inpaint(tiny_pipe, x, m, steps=6, seed=5)
    b = tasks.inpaint(tiny_pipe, x, m, steps=6, seed=5)
    c = tasks.inpaint(tiny_pipe, x, m, steps=6, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # image i uses seed + i whatever the batch: image 1 alone with seed 6 == image 1 of the batch
    alone = tasks.inpaint(tiny_pipe, x[1:2], m[1:2], steps=6, seed=6)
    torch.testing.assert_close(alone, a[1:2], atol=1e-5, rtol=0)


def test_class_conditional_with_labels_and_cfg(steered_cond_pipe):
    tiny_cond_pipe = steered_cond_pipe
    x = _images(2)
    m = tasks.make_mask("right", 8, 2)
    out = tasks.inpaint(tiny_cond_pipe, x, m, labels=torch.tensor([0, 2]), cfg=2.0, steps=4, method="blend")
    assert out.shape == x.shape
    torch.testing.assert_close(out * (1 - m), x * (1 - m), atol=0, rtol=0)  # the known half kept exactly
    swapped = tasks.inpaint(tiny_cond_pipe, x, m, labels=torch.tensor([2, 0]), cfg=2.0, steps=4, method="blend")
    assert not torch.equal(out * m, swapped * m)  # the label steers the filled half
    plain = tasks.inpaint(tiny_cond_pipe, x, m, labels=torch.tensor([0, 2]), cfg=1.0, steps=4, method="blend")
    assert not torch.equal(plain * m, out * m)  # the guidance scale reaches the sampler


def test_repaint_path_closed_form():
    n, j, r = 20, 5, 3
    path = repaint_path(n, j, r)
    downs = [p for p in path if p[1] == p[0] + 1]
    ups = [p for p in path if p[1] < p[0]]
    # jumps at 5, 10, 15 (not at the clean end), each r - 1 times, each j levels up
    assert ups == [(5, 0), (5, 0), (10, 5), (10, 5), (15, 10), (15, 10)]
    assert len(downs) == n + len(ups) * j
    pos = 0
    for a, b in path:  # a connected walk from 0 to n
        assert a == pos
        pos = b
    assert pos == n
    assert repaint_path(n, j, 1) == [(i, i + 1) for i in range(n)]
    with pytest.raises(ValueError, match="resample"):
        repaint_path(n, j, 0)


@pytest.mark.parametrize("name", tasks.MASK_PRESETS)
def test_mask_presets(name):
    m = tasks.make_mask(name, 28, 2, seed=3)
    assert m.shape == (2, 1, 28, 28) and set(m.unique().tolist()) <= {0.0, 1.0}
    expected = {"center": 14 * 14 / 784, "left": 0.5, "right": 0.5, "top": 0.5, "bottom": 0.5, "lines": 0.5}
    if name in expected:
        assert float(m.mean()) == pytest.approx(expected[name])
    else:  # strokes: seeded, different per image
        assert 0.2 < float(m[0].mean()) < 0.6
        assert torch.equal(m, tasks.make_mask(name, 28, 2, seed=3))
        assert not torch.equal(m[0], m[1])


def test_mask_from_array_white_is_fill():
    arr = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    arr[..., :2, :] = 255
    assert torch.equal(mask_from_array(arr)[0, 0, :, 0], torch.tensor([1.0, 1, 0, 0]))
    with pytest.raises(ValueError, match="4x4; the image is 8x8"):
        mask_from_array(arr, 8)


@pytest.mark.parametrize("image,mask,message", [
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 6, 6), "mask is 6x6; the image is 8x8"),
    (torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8), "3 channels; this model takes 1"),
    (torch.zeros(2, 1, 6, 6), torch.zeros(2, 1, 6, 6), "works at 8x8"),
    (torch.zeros(2, 1, 8, 8), torch.zeros(3, 1, 8, 8), "3 masks for 2 images"),
    (torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.5), "0 \\(keep\\) or 1 \\(fill\\)"),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 2, 8, 8), "mask must be \\(N, 1, H, W\\)"),
    (torch.zeros(8, 8), torch.zeros(1, 1, 8, 8), "batch \\(N, C, H, W\\)"),
])
def test_clear_errors(tiny_pipe, image, mask, message):
    with pytest.raises(ValueError, match=message):
        tasks.inpaint(tiny_pipe, image, mask, steps=2)


def test_option_errors(tiny_pipe, tiny_cond_pipe):
    x, m = _images(1), tasks.make_mask("center", 8)
    with pytest.raises(ValueError, match="unknown inpainting method"):
        tasks.inpaint(tiny_pipe, x, m, method="magic")
    with pytest.raises(ValueError, match="takes no option 'eta'"):
        tasks.inpaint(tiny_pipe, x, m, sampler="ddpm", eta=1.0)
    with pytest.raises(ValueError, match="unconditional"):
        tasks.inpaint(tiny_pipe, x, m, labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="labels must be in 0..2 "):  # 3, the null class, is unconditional
        tasks.inpaint(tiny_cond_pipe, x, m, labels=torch.tensor([4]))


def test_single_mask_broadcasts():
    x = torch.zeros(3, 1, 8, 8)
    assert check_mask(torch.ones(8, 8), x).shape == (3, 1, 8, 8)
