"""Sample-quality metrics on feature vectors and class probabilities.

Frechet distance (FID when the features are Inception-v3's), kernel inception distance,
improved precision and recall, the classifier (inception) score, conditional accuracy.
Everything is numpy float64; scipy is needed only for `frechet_distance(method="sqrtm")`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FD_METHODS = ("eigh", "sqrtm")


def _as_features(x: np.ndarray, name: str = "features") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), N >= 2."""
    x = _as_features(x)
    if len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(x)}")
    return x.mean(0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, method: str) -> float:
    """tr (S1 S2)^{1/2} for PSD S1, S2."""
    if method == "eigh":
        # S1 S2 and S1^{1/2} S2 S1^{1/2} share their eigenvalues; the latter is symmetric
        # PSD, so its eigenvalues are real and >= 0 (round-off clipped): no complex parts.
        r = _sym_sqrt(s1)
        w = np.linalg.eigvalsh(r @ s2 @ r)
        return float(np.sqrt(np.clip(w, 0, None)).sum())
    from scipy import linalg  # the recipe of pytorch-fid (Seitzer 2020)

    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: offset the diagonals
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.abs(covmean.imag).max():.3g} in sqrtm(S1 S2)")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, method: str = "eigh"
) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982):

        ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})   # FID: Heusel et al. 2017, eq. (6)

    `method` "eigh" (default) computes tr (S1 S2)^{1/2} from a symmetric eigen-decomposition;
    "sqrtm" uses scipy.linalg.sqrtm as pytorch-fid does (tiny imaginary parts dropped).
    """
    if method not in FD_METHODS:
        raise ValueError(f"unknown Frechet distance method {method!r}; expected one of {list(FD_METHODS)}")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product(s1, s2, method)
    return float(max(fd, 0.0))  # >= 0 in exact arithmetic


def frechet_distance_features(x: np.ndarray, y: np.ndarray, method: str = "eigh") -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D)."""
    return frechet_distance(*feature_stats(x), *feature_stats(y), method=method)


# ---------------------------------------------------------------- KID


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (x.y / D + coef0)^degree, the KID kernel (Binkowski et al. 2018)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, kernel=polynomial_kernel) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3): the within-set means leave out i == j."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


@dataclass(frozen=True)
class KID:
    """Kernel inception distance over random subsets: their mean, spread and standard error.

    The subsets overlap (each is drawn from the same sets), so `sem` = std / sqrt(subsets)
    is optimistic; `std` is the spread reported by Binkowski et al. and torch-fidelity."""

    mean: float
    std: float
    sem: float
    subsets: int
    subset_size: int


def kernel_inception_distance(
    x: np.ndarray, y: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> KID:
    """Unbiased MMD^2 with the cubic polynomial kernel, over `subsets` random subsets of
    min(subset_size, N, M) vectors of each set, drawn without replacement within a subset."""
    x, y = _as_features(x, "first features"), _as_features(y, "second features")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} and {y.shape[1]}")
    if subsets < 1:
        raise ValueError(f"KID needs at least 1 subset, got {subsets}")
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = np.array([
        mmd2_unbiased(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
        for _ in range(subsets)
    ])
    std = float(values.std(ddof=1)) if subsets > 1 else 0.0
    return KID(float(values.mean()), std, std / np.sqrt(subsets), subsets, size)


# ---------------------------------------------------------------- precision / recall


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.clip(d, 0, None)


def knn_radii(x: np.ndarray, k: int = 3, batch: int = 1024) -> np.ndarray:
    """Distance from each vector to its k-th nearest neighbour among the others, (N,)."""
    x = _as_features(x)
    if not 1 <= k < len(x):
        raise ValueError(f"k-NN radii need 1 <= k < number of samples, got k={k} for {len(x)} samples")
    out = np.empty(len(x))
    for s in range(0, len(x), batch):
        d = _sq_distances(x[s : s + batch], x)
        out[s : s + batch] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return np.sqrt(out)


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, batch: int) -> float:
    """Fraction of `points` inside at least one ball (centre, radius)."""
    inside = 0
    r2 = radii**2
    for s in range(0, len(points), batch):
        inside += int((_sq_distances(points[s : s + batch], centres) <= r2[None, :]).any(1).sum())
    return inside / len(points)


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float  # share of generated samples inside the real manifold
    recall: float  # share of real samples inside the generated manifold
    k: int


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, batch: int = 1024) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the
    union of balls around its vectors with radius = distance to the k-th nearest neighbour."""
    real, fake = _as_features(real, "real features"), _as_features(fake, "generated features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} and {fake.shape[1]}")
    precision = _coverage(fake, real, knn_radii(real, k, batch), batch)
    recall = _coverage(real, fake, knn_radii(fake, k, batch), batch)
    return PrecisionRecall(precision, recall, k)


# ---------------------------------------------------------------- class probabilities


def classifier_score(probs: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """exp E_x[KL(p(y|x) || p(y))] (the Inception Score of Salimans et al. 2016 with any
    classifier), p(y) the mean over each split; returns (mean, std) over `splits`."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < 1:
        raise ValueError(f"probabilities must be a non-empty (N, K) array, got shape {p.shape}")
    if (p < 0).any() or not np.allclose(p.sum(1), 1, atol=1e-4):
        raise ValueError("each row of probabilities must be >= 0 and sum to 1")
    if not 1 <= splits <= len(p):
        raise ValueError(f"splits must be in 1..{len(p)}, got {splits}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0).sum(1)  # 0 log 0 = 0
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def conditional_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of images the classifier puts in the class they were asked for."""
    labels = np.asarray(labels)
    if np.shape(logits)[0] != len(labels):
        raise ValueError(f"{np.shape(logits)[0]} predictions but {len(labels)} labels")
    return float((np.argmax(logits, 1) == labels).mean())


def per_class_fd(
    real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray, num_classes: int
) -> list[float | None]:
    """Frechet distance per class between real and generated features of that class;
    None for a class with fewer than 2 vectors on either side."""
    out: list[float | None] = []
    for c in range(num_classes):
        a, b = real[np.asarray(real_labels) == c], fake[np.asarray(fake_labels) == c]
        out.append(frechet_distance_features(a, b) if len(a) >= 2 and len(b) >= 2 else None)
    return out
