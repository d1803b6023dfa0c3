import pytest
import torch

from difforge import tasks
from difforge.tasks.restore import strength_sigma


def _images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 8, 8, generator=g) * 2 - 1) * 0.5


def test_denoise_one_step_is_the_exact_posterior_mean(gaussian_pipe):
    # For x0 ~ N(0, sd^2) and y = x0 + s n, E[x0 | y] = y sd^2 / (s^2 + sd^2), s = 2 sigma.
    y = _images(3) * 0.6
    for sigma in (0.05, 0.1, 0.2):
        s, sd = 2 * sigma, gaussian_pipe.net.sd
        out = tasks.denoise(gaussian_pipe, y, sigma)
        torch.testing.assert_close(out, y * sd**2 / (s**2 + sd**2), atol=2e-5, rtol=0)


def test_denoise_starts_at_the_matching_level(tiny_pipe):
    seen = []
    x = _images()
    out = tasks.denoise(tiny_pipe, x, 0.2, steps=50, callback=lambda d: seen.append(float(d["sigma"])))
    assert out.shape == x.shape
    assert seen[0] == pytest.approx(0.4)
    assert all(a > b for a, b in zip(seen, seen[1:]))
    assert 1 < len(seen) < 50


def test_restore_grid_and_determinism(tiny_pipe):
    x = _images(3)
    seen = []
    a = tasks.restore(tiny_pipe, x, 0.5, steps=20, seed=3, callback=lambda d: seen.append(float(d["sigma"])))
    b = tasks.restore(tiny_pipe, x, 0.5, steps=20, seed=3)
    c = tasks.restore(tiny_pipe, x, 0.5, steps=20, seed=4)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert seen[0] == pytest.approx(strength_sigma(tiny_pipe, 0.5))
    assert 8 <= len(seen) <= 11  # about half of the 20-step grid
    # the sigma at strength s is the schedule's at timestep s * (T - 1)
    assert strength_sigma(tiny_pipe, 1.0) == pytest.approx(tiny_pipe.process.sigma_max)


def test_restore_low_strength_stays_close_with_the_exact_denoiser(gaussian_pipe):
    x = _images(4)
    dev = [float((tasks.restore(gaussian_pipe, x, s, steps=50) - x).abs().mean()) for s in (0.02, 0.3, 0.9)]
    # the added noise at strength 0.02 is sigma ~ 0.065; the change stays about that size
    assert dev[0] < 0.08 and dev[0] < dev[1] < dev[2]


@pytest.mark.parametrize("call,message", [
    (lambda p, x: tasks.restore(p, x, 0.0), "strength must be in \\(0, 1\\]"),
    (lambda p, x: tasks.restore(p, x, 1.5), "strength must be in \\(0, 1\\]"),
    (lambda p, x: tasks.denoise(p, x, -0.1), "noise sigma must be > 0"),
    (lambda p, x: tasks.denoise(p, x, 1000.0), "above this model's largest"),
    (lambda p, x: tasks.restore(p, x[:, :, :4], 0.5), "4x8; this model works at 8x8"),
    (lambda p, x: tasks.denoise(p, x.repeat(1, 3, 1, 1), 0.1), "3 channels"),
    (lambda p, x: tasks.restore(p, x, 0.5, sampler="nope"), "unknown sampler"),
])
def test_clear_errors(tiny_pipe, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_pipe, _images())
