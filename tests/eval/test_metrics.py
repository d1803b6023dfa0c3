"""The metrics against closed forms: Gaussians for FD and KID, point clouds with known
overlap for precision/recall, hand-made probability tables for the classifier score."""

import itertools

import numpy as np
import pytest

from difforge.eval import metrics as M


def _random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


# ---------------------------------------------------------------- Frechet distance


def test_fd_closed_form_for_commuting_covariances():
    # diagonal covariances commute: FD = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    for method in M.FD_METHODS:
        assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method) == pytest.approx(exact, rel=1e-10)


def test_fd_one_dimensional_and_identity():
    assert M.frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(4 + (2 - 1) ** 2)
    rng = np.random.default_rng(0)
    s = _random_cov(rng, 6)
    assert M.frechet_distance(np.ones(6), s, np.ones(6), s) == pytest.approx(0, abs=1e-9)


def test_fd_eigh_matches_scipy_sqrtm_also_when_singular():
    rng = np.random.default_rng(1)
    for rank in (8, 3):  # full rank, then rank-deficient (N < D in practice)
        s1, s2 = _random_cov(rng, 8, rank), _random_cov(rng, 8, rank)
        mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
        a = M.frechet_distance(mu1, s1, mu2, s2, "eigh")
        b = M.frechet_distance(mu1, s1, mu2, s2, "sqrtm")
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
        assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(M.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_fd_of_large_gaussian_samples_approaches_the_exact_value():
    rng = np.random.default_rng(2)
    d = 4
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d) + 0.1 * np.eye(d), _random_cov(rng, d) + 0.1 * np.eye(d)
    exact = M.frechet_distance(mu1, s1, mu2, s2)
    x = rng.multivariate_normal(mu1, s1, size=200_000)
    y = rng.multivariate_normal(mu2, s2, size=200_000)
    assert M.frechet_distance_features(x, y) == pytest.approx(exact, rel=0.02)
    mu, s = M.feature_stats(x)
    np.testing.assert_allclose(mu, mu1, atol=0.02)
    np.testing.assert_allclose(s, s1, atol=0.03)


def test_fd_input_errors():
    with pytest.raises(ValueError, match="at least 2"):
        M.feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="shape mismatch"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="unknown Frechet distance method"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


# ---------------------------------------------------------------- KID / MMD


def test_unbiased_mmd_matches_brute_force_on_small_inputs():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(3, 2)), rng.normal(size=(4, 2)) + 1
    k = M.polynomial_kernel
    kxx = np.mean([k(x[i : i + 1], x[j : j + 1])[0, 0] for i, j in itertools.permutations(range(3), 2)])
    kyy = np.mean([k(y[i : i + 1], y[j : j + 1])[0, 0] for i, j in itertools.permutations(range(4), 2)])
    kxy = np.mean([k(x[i : i + 1], y[j : j + 1])[0, 0] for i in range(3) for j in range(4)])
    assert M.mmd2_unbiased(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)
    # the linear kernel: unbiased MMD^2 = |mean x|^2 + |mean y|^2 - 2 mean x . mean y minus the diagonals
    lin = lambda a, b: a @ b.T  # noqa: E731
    sx, sy = x.sum(0), y.sum(0)
    expect = (sx @ sx - (x * x).sum()) / 6 + (sy @ sy - (y * y).sum()) / 12 - 2 * x.mean(0) @ y.mean(0)
    assert M.mmd2_unbiased(x, y, kernel=lin) == pytest.approx(expect, rel=1e-12)


def _cubic_kernel_mean(a, s2, b, t2):
    """E (x y + 1)^3 for independent x ~ N(a, s2), y ~ N(b, t2) (D = 1)."""
    m1, m2, m3 = a * b, (a * a + s2) * (b * b + t2), (a**3 + 3 * a * s2) * (b**3 + 3 * b * t2)
    return m3 + 3 * m2 + 3 * m1 + 1


def test_kid_matches_the_closed_form_mmd_of_two_gaussians():
    a, s2, b, t2 = 0.0, 1.0, 0.6, 0.5
    exact = _cubic_kernel_mean(a, s2, a, s2) + _cubic_kernel_mean(b, t2, b, t2) - 2 * _cubic_kernel_mean(a, s2, b, t2)
    rng = np.random.default_rng(4)
    x = rng.normal(a, np.sqrt(s2), size=(20_000, 1))
    y = rng.normal(b, np.sqrt(t2), size=(20_000, 1))
    kid = M.kernel_inception_distance(x, y, subsets=20, subset_size=2000, seed=0)
    assert kid.mean == pytest.approx(exact, rel=0.1)
    assert kid.subset_size == 2000 and kid.sem == pytest.approx(kid.std / np.sqrt(20))


def test_kid_is_about_zero_for_one_distribution():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(1500, 16)), rng.normal(size=(1500, 16))
    kid = M.kernel_inception_distance(x, y, subsets=50, subset_size=500)
    shifted = M.kernel_inception_distance(x, y + 0.5, subsets=50, subset_size=500)
    assert abs(kid.mean) < 3 * kid.std / np.sqrt(50) + 1e-3
    assert shifted.mean > 10 * kid.std
    assert M.kernel_inception_distance(x, x, subsets=3, subset_size=10_000).subset_size == 1500


# ---------------------------------------------------------------- precision / recall


def test_knn_radii_on_a_line():
    x = np.arange(5.0)[:, None]  # 0 1 2 3 4
    np.testing.assert_allclose(M.knn_radii(x, k=1), [1, 1, 1, 1, 1])
    np.testing.assert_allclose(M.knn_radii(x, k=2), [2, 1, 1, 1, 2])
    np.testing.assert_allclose(M.knn_radii(x, k=2, batch=2), [2, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="1 <= k < number of samples"):
        M.knn_radii(x, k=5)


def test_precision_recall_identical_disjoint_and_subset():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(600, 8))
    same = M.precision_recall(real, real.copy())
    assert same.precision == 1.0 and same.recall == 1.0
    far = M.precision_recall(real, real + 100.0)
    assert far.precision == 0.0 and far.recall == 0.0
    # generated = the real points near one corner: all inside the real manifold, covering little of it
    corner = real[np.linalg.norm(real - real[0], axis=1) < 3.0]
    sub = M.precision_recall(real, corner)
    assert sub.precision == 1.0 and sub.recall < 0.3
    # fresh samples of the same distribution: both high
    fresh = M.precision_recall(real, rng.normal(size=(600, 8)))
    assert fresh.precision > 0.8 and fresh.recall > 0.8


def test_precision_recall_half_overlap_in_one_dimension():
    # real uniform on [0, 1], generated uniform on [0.5, 1.5]: each covers half the other
    rng = np.random.default_rng(7)
    real, fake = rng.uniform(0, 1, (4000, 1)), rng.uniform(0.5, 1.5, (4000, 1))
    pr = M.precision_recall(real, fake, k=3)
    assert pr.precision == pytest.approx(0.5, abs=0.02) and pr.recall == pytest.approx(0.5, abs=0.02)


# ---------------------------------------------------------------- class probabilities


def test_classifier_score_on_hand_made_tables():
    assert M.classifier_score(np.eye(4))[0] == pytest.approx(4.0)  # confident and diverse: K
    assert M.classifier_score(np.tile([0.7, 0.2, 0.1], (5, 1)))[0] == pytest.approx(1.0)  # no diversity
    assert M.classifier_score(np.full((3, 3), 1 / 3))[0] == pytest.approx(1.0)  # no confidence
    p = np.array([[1.0, 0.0], [0.5, 0.5]])  # p(y) = (0.75, 0.25)
    kl = [np.log(1 / 0.75), 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)]
    assert M.classifier_score(p)[0] == pytest.approx(np.exp(np.mean(kl)))
    mean, std = M.classifier_score(np.concatenate([np.eye(2), np.eye(2)]), splits=2)
    assert (mean, std) == (pytest.approx(2.0), pytest.approx(0.0))
    with pytest.raises(ValueError, match="sum to 1"):
        M.classifier_score(np.array([[0.5, 0.2]]))


def test_conditional_accuracy_and_per_class_fd():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert M.conditional_accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)
    np.testing.assert_allclose(M.softmax(np.array([[0.0, np.log(3)]])), [[0.25, 0.75]])
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(40, 3)), rng.normal(size=(41, 3))
    rl, fl = np.repeat([0, 1], 20), np.array([0] * 40 + [1])
    fd = M.per_class_fd(real, rl, fake, fl, 3)
    assert fd[0] is not None and fd[1] is None and fd[2] is None  # class 1: one sample; class 2: none
