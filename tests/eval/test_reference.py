"""Reference statistics (eval/reference.py) and difforge's Frechet distance against an
independent implementation."""

import numpy as np
import pytest
import torch
from scipy import linalg

from difforge.eval import metrics as M
from difforge.eval.reference import ReferenceStats, check_matches, load_reference, weights_digest


def textbook_fd(x: np.ndarray, y: np.ndarray) -> float:
    """The Frechet distance of Heusel et al. (2017), eq. (6), written out in float64 with
    scipy.linalg.sqrtm: ||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x S_y)^{1/2}).

    An independent reference: clean-fid and torch-fidelity, which hold the same formula,
    both need torchvision (clean-fid imports it in cleanfid.utils, torch-fidelity at its
    top level; both list it as a requirement), which the test extra does not install."""
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(sx @ sy).real
    return float(((mx - my) ** 2).sum() + np.trace(sx) + np.trace(sy) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,d,shift", [(500, 16, 0.3), (200, 64, 1.0), (1000, 8, 0.0)])
def test_frechet_distance_equals_the_textbook_formula(n, d, shift):
    rng = np.random.default_rng(d)
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)
    b = rng.standard_normal((n + 37, d)) * 1.3 + shift
    expected = textbook_fd(a, b)
    assert M.frechet_distance_features(a, b) == pytest.approx(expected, abs=1e-6, rel=0)
    assert ReferenceStats.of(a).frechet_distance(b) == pytest.approx(expected, abs=1e-6, rel=0)


def test_statistics_round_trip_through_the_file(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 6))
    stats = ReferenceStats.of(x, dataset="digits", classifier="abc", split="val")
    back = load_reference(stats.save(tmp_path / "r.npz"))
    assert np.array_equal(back.mu, stats.mu) and np.array_equal(back.sigma, stats.sigma)
    assert (back.n, back.dataset, back.classifier, back.split) == (50, "digits", "abc", "val")
    np.savez(tmp_path / "plain.npz", mu=stats.mu, sigma=stats.sigma)  # another tool's file: only mu and sigma
    plain = load_reference(tmp_path / "plain.npz")
    assert plain.n is None and plain.frechet_distance(x) == back.frechet_distance(x)


def test_bad_reference_files_are_one_line_errors(tmp_path):
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name, match in [("shape.npz", r"'mu' must be \(D,\)"), ("junk.npz", "not a readable .npz")]:
        with pytest.raises(ValueError, match=match) as e:
            load_reference(tmp_path / name)
        assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_reference(tmp_path / "missing.npz")
    stats = ReferenceStats(np.zeros(3), np.eye(3), classifier="aaa")
    with pytest.raises(ValueError, match="another domain classifier"):
        check_matches(stats, 3, "bbb", "--reference r.npz")


def test_weights_digest_tells_weights_apart():
    a = {"w": torch.zeros(2, 2), "b": torch.ones(2)}
    assert weights_digest(a) == weights_digest({"b": torch.ones(2), "w": torch.zeros(2, 2)})
    assert weights_digest(a) != weights_digest({"w": torch.zeros(2, 2), "b": torch.tensor([1.0, 1.5])})
