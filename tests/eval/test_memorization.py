"""The memorization audit: exact nearest neighbours, and a copying 'model' is caught."""

import numpy as np
import pytest
import torch
from PIL import Image

from difforge.data.digits import load_digits
from difforge.eval.memorization import memorization_audit, nearest_distances, pixels


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(37, 9)), rng.normal(size=(501, 9))
    d, i = nearest_distances(q, k, chunk=10)
    full = np.sqrt(((q[:, None] - k[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(i, full.argmin(1))
    np.testing.assert_allclose(d, full.min(1), rtol=1e-6)
    d0, _ = nearest_distances(k[:5], k)  # a key is its own nearest neighbour, at distance 0
    assert np.all(d0 == 0)


def test_pixel_distance_is_rms_over_unit_pixels():
    a = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    b = torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)
    d, _ = nearest_distances(pixels(a), pixels(b))
    assert d[0] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def digits():
    ds = load_digits()
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    return ds.images[perm[:1200]], ds.images[perm[1200:1500]], ds.images[perm[1500:]]


def test_a_copying_model_is_caught_and_fresh_data_is_not(digits, tmp_path):
    train, heldout, fresh = digits
    noise = torch.randint(-3, 4, train[:100].shape, generator=torch.Generator().manual_seed(1))
    copies = (train[:100].int() + noise).clamp(0, 255).to(torch.uint8)  # slightly perturbed copies
    r = memorization_audit(copies, train, heldout, out=tmp_path)
    pix = r["pixel"]
    assert pix["near_copy_fraction"] == 1.0 and pix["n_generated"] == 100 and pix["n_heldout"] == 300
    assert pix["heldout_fraction"] == pytest.approx(0.01, abs=0.005)  # by construction of the threshold
    assert pix["median_generated"] < 0.2 * pix["median_heldout"]
    fresh_r = memorization_audit(fresh, train, heldout)["pixel"]  # new real images: like the baseline
    assert fresh_r["near_copy_fraction"] < 0.05
    assert 0.8 < fresh_r["median_ratio"] < 1.25
    png = Image.open(tmp_path / r["pairs_png"])
    assert png.size[0] > png.size[1]  # 4 pairs per row, 4 rows


def test_feature_space_is_reported_when_given(digits):
    train, heldout, _ = digits
    feats = lambda im: im.reshape(len(im), -1).float().numpy()[:, ::2]  # noqa: E731 (any embedding)
    r = memorization_audit(train[:20], train, heldout, features=feats)
    assert r["classifier"]["near_copy_fraction"] == 1.0 and "distance" in r["classifier"]


def test_bad_inputs_are_named(digits):
    train, heldout, _ = digits
    with pytest.raises(ValueError, match="image shapes differ"):
        memorization_audit(torch.zeros(2, 1, 9, 9, dtype=torch.uint8), train, heldout)
    with pytest.raises(ValueError, match="generated images must be a non-empty uint8"):
        memorization_audit(torch.zeros(2, 1, 8, 8), train, heldout)
