"""Content and perceptual hashes: DCT parity with scipy, invariances, exact pair search."""

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from difforge.data.folder import decode_image
from difforge.data.hashing import content_hash, dct_matrix, hamming, near_pairs, pair_work, phash


def test_dct_matrix_orthonormal_and_matches_scipy():
    fft = pytest.importorskip("scipy.fft")
    c = dct_matrix(32)
    np.testing.assert_allclose(c @ c.T, np.eye(32), atol=1e-12)
    x = np.random.default_rng(0).normal(size=(32, 32))
    np.testing.assert_allclose(c @ x @ c.T, fft.dctn(x, type=2, norm="ortho"), atol=1e-10)


def test_phash_reference_and_invariances():
    fft = pytest.importorskip("scipy.fft")
    rng = np.random.default_rng(1)
    grid = rng.integers(40, 200, (8, 8), dtype=np.uint8)  # no clipping when brightened
    smooth = np.asarray(Image.fromarray(grid).resize((32, 32), Image.BILINEAR))
    # independent reference: scipy's DCT, bits above the AC median, most significant first
    low = fft.dctn(smooth.astype(float), type=2, norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low[1:])
    assert int(phash(smooth[None])[0]) == int("".join("1" if b else "0" for b in bits), 2)
    brighter = np.clip(smooth.astype(int) + 10, 0, 255)
    noisy = np.clip(smooth + rng.normal(0, 3, smooth.shape), 0, 255)
    other = rng.integers(0, 256, (32, 32))
    h = phash(np.stack([smooth, brighter, noisy, other]))
    assert hamming(h[0], h[1]) <= 2 and hamming(h[0], h[2]) <= 6
    assert hamming(h[0], h[3]) >= 16
    flat = phash(np.full((1, 32, 32), 77))
    assert int(flat[0]) == 1 << 63  # only the DC bit: AC coefficients are exactly 0


def test_hamming_matches_python_popcount():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2**63, 50, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 50, dtype=np.uint64)
    b = rng.integers(0, 2**63, 50, dtype=np.uint64)
    expect = [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b)]
    assert hamming(a, b).tolist() == expect


def test_near_pairs_equals_brute_force():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, 60, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (60, 3)).astype(np.uint64)
    near = base ^ flips[:, 0] ^ flips[:, 1]  # at most 2 bits away from its base
    hashes = np.concatenate([base, near, base[:5]])  # plus 5 exact repeats
    work = []
    got = near_pairs(hashes, 3, chunk=17, on_work=work.append)  # a chunk size that does not divide N
    assert sum(work) == pair_work(len(hashes), 17) == sum(len(hashes) - i for i in range(0, len(hashes), 17)
                                                         for _ in range(min(17, len(hashes) - i)))
    expect = [(i, j, bin(int(hashes[i]) ^ int(hashes[j])).count("1"))
              for i, j in itertools.combinations(range(len(hashes)), 2)
              if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 3]
    assert [tuple(p) for p in got.tolist()] == expect
    assert len(expect) >= 65


def test_content_hash_ignores_encoding_and_redundant_channels():
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)

    def via(fmt, array):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format=fmt)
        buf.seek(0)
        return np.asarray(decode_image(buf)[0])

    assert content_hash(via("PNG", rgb)) == content_hash(via("BMP", rgb)) == content_hash(rgb)
    assert content_hash(np.repeat(gray[..., None], 3, 2)) == content_hash(gray)
    changed = rgb.copy()
    changed[0, 0, 0] ^= 1
    assert content_hash(changed) != content_hash(rgb)
    assert content_hash(gray) != content_hash(gray.T.copy())  # same bytes count, other shape
