"""The tasks take the image kinds `Pipeline.generate` returns (uint8 tensors, numpy arrays,
PIL images) besides float tensors, and return the kind they were given: the same pixels
as the float path, rounded to uint8."""

import numpy as np
import pytest
import torch
from PIL import Image

from difforge import tasks
from difforge.io.formats import as_float, given_back
from difforge.io.space import from_uint8, to_uint8


def _pixels(n=2, size=8, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _pil(pixels: torch.Tensor) -> list:
    return [Image.fromarray(p[0].numpy()) for p in pixels]


def _as_array(images: list) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])[:, None]  # (N, 1, H, W)


TASKS = {
    "inpaint": lambda pipe, x: tasks.inpaint(pipe, x, tasks.make_mask("center", 8, 1), steps=4, jump_length=2,
                                             resample=2, seed=3),
    "restore": lambda pipe, x: tasks.restore(pipe, x, 0.5, steps=6, seed=3),
    "denoise": lambda pipe, x: tasks.denoise(pipe, x, 0.1, seed=3),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_pil_in_pil_out_with_the_float_paths_pixels(tiny_pipe, name):
    pixels = _pixels()
    run = TASKS[name]
    by_float = run(tiny_pipe, from_uint8(pixels))
    by_pil = run(tiny_pipe, _pil(pixels))
    assert isinstance(by_pil, list) and all(isinstance(im, Image.Image) and im.mode == "L" for im in by_pil)
    assert np.array_equal(_as_array(by_pil), to_uint8(by_float).numpy())
    by_uint8 = run(tiny_pipe, pixels)
    assert by_uint8.dtype == torch.uint8 and torch.equal(by_uint8, to_uint8(by_float))
    by_np = run(tiny_pipe, pixels.permute(0, 2, 3, 1).numpy())
    assert by_np.dtype == np.uint8 and np.array_equal(by_np, to_uint8(by_float).permute(0, 2, 3, 1).numpy())
    one = run(tiny_pipe, _pil(pixels)[0])  # one image in, one image out
    assert isinstance(one, Image.Image) and np.array_equal(np.asarray(one), _as_array(by_pil)[0, 0])


def test_upscale_and_interpolate_return_the_kind_given(tiny_pipe):
    low = _pixels(2, 4, seed=1)
    up_float = tasks.upscale(tiny_pipe, from_uint8(low), 2, steps=4, seed=1)
    up_pil = tasks.upscale(tiny_pipe, _pil(low), 2, steps=4, seed=1)
    assert np.array_equal(_as_array(up_pil), to_uint8(up_float).numpy())
    a, b = _pixels(1, seed=2), _pixels(1, seed=3)
    frames = tasks.interpolate(tiny_pipe, from_uint8(a), from_uint8(b), frames=3, steps=4)
    as_pil = tasks.interpolate(tiny_pipe, _pil(a)[0], _pil(b)[0], frames=3, steps=4)
    assert len(as_pil) == 3 and all(isinstance(f, Image.Image) for f in as_pil)
    assert np.array_equal(np.stack([np.asarray(f) for f in as_pil]), to_uint8(frames[:, 0, 0]).numpy())
    as_pt = tasks.interpolate(tiny_pipe, a, b, frames=3, steps=4)
    assert as_pt.shape == frames.shape and torch.equal(as_pt, to_uint8(frames.flatten(0, 1)).view(frames.shape))
    with pytest.raises(ValueError, match="different kinds"):
        tasks.interpolate(tiny_pipe, a, from_uint8(b), frames=3, steps=4)


def test_conversions_round_trip_exactly():
    pixels = torch.randint(0, 256, (3, 3, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    nhwc = pixels.permute(0, 2, 3, 1).numpy()
    rgb = [Image.fromarray(a) for a in nhwc]
    for given, n in ((pixels, 3), (nhwc, 3), (nhwc[0], 1), (rgb, 3), (rgb[0], 1)):
        x, kind = as_float(given)
        assert torch.equal(to_uint8(x), pixels[:n])
        back = given_back(x, kind)
        if kind.kind == "pil":
            assert all(im.mode == "RGB" for im in (back if isinstance(back, list) else [back]))
            back, given = (np.stack([np.asarray(im) for im in b]) if isinstance(b, list) else np.asarray(b)
                           for b in (back, given))
        assert np.array_equal(np.asarray(back), np.asarray(given))
    gray = as_float(rgb[0], channels=1)[0]  # RGB to a one-channel model: Pillow's luma
    assert np.array_equal(to_uint8(gray)[0, 0].numpy(), np.asarray(rgb[0].convert("L")))


def test_bad_kinds_are_one_line_errors(tiny_pipe):
    for bad, match in [(np.zeros((1, 8, 8, 1), np.float32), "must be uint8"), ("x.png", "got str"),
                       (torch.zeros(8, 8, dtype=torch.uint8), "uint8 batch")]:
        with pytest.raises(ValueError, match=match) as e:
            tasks.restore(tiny_pipe, bad, 0.5, steps=2)
        assert "\n" not in str(e.value)
