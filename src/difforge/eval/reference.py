"""Reference statistics: the mean `mu` and covariance `sigma` of the real images' features,
what a Frechet distance needs from the real side.

`evaluate` writes those of the domain classifier's features as an .npz (`mu`, `sigma`, and
`n`, `dataset`, `classifier`, `split` describing them) into `$DIFFORGE_CACHE/references/`,
keyed by the dataset, the reference split and the classifier's weights (and to
`--save-reference FILE`), and measures FD against `--reference FILE` when given: that file,
or any .npz holding `mu` (D,) and `sigma` (D, D), as other FID tools write them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difforge.eval import metrics as M


@dataclass(frozen=True)
class ReferenceStats:
    """Feature statistics of a reference set; `dataset` and `classifier` (the weights'
    digest) say what they were computed on, when known."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None
    dataset: str | None = None
    classifier: str | None = None
    split: str | None = None

    @classmethod
    def of(cls, features: np.ndarray, **about) -> ReferenceStats:
        mu, sigma = M.feature_stats(features)
        return cls(mu, sigma, len(features), **about)

    def frechet_distance(self, features: np.ndarray) -> float:
        """FD between these statistics and those of `features` (N, D)."""
        return M.frechet_distance(self.mu, self.sigma, *M.feature_stats(features))

    def save(self, path: str | Path) -> Path:
        """Write the .npz (to a temporary name first, then renamed: never half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        about = {k: np.array(v) for k, v in (("n", self.n), ("dataset", self.dataset),
                                             ("classifier", self.classifier), ("split", self.split)) if v is not None}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".npz", dir=path.parent)
        os.close(fd)
        try:
            np.savez(tmp, mu=self.mu, sigma=self.sigma, **about)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path


def load_reference(path: str | Path) -> ReferenceStats:
    """Read `mu` (D,) and `sigma` (D, D) (and what describes them) from an .npz; one-line
    ValueErrors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--reference {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz ({str(e).splitlines()[0]})") from None
    if "mu" not in data or "sigma" not in data:
        raise ValueError(f"{path}: expected arrays 'mu' and 'sigma' (feature statistics); found {sorted(data)}")
    mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path}: 'mu' must be (D,) and 'sigma' (D, D), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: 'mu' or 'sigma' has NaN or infinite values")

    def about(key: str):
        return data[key].item() if key in data else None

    n = about("n")
    return ReferenceStats(mu, sigma, None if n is None else int(n), about("dataset"), about("classifier"),
                          about("split"))


def weights_digest(state_dict: dict) -> str:
    """A short digest of a network's weights (names, shapes, values): which classifier."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def cache_path(root: Path, dataset: str, classifier: str, split: str) -> Path:
    """Where the statistics of `dataset`'s `split` under classifier `classifier` are cached."""
    return root / "references" / f"{dataset}-{split}-{classifier}.npz"


def check_matches(stats: ReferenceStats, dim: int, classifier: str, what: str) -> ReferenceStats:
    """Refuse statistics of another feature size or (when they say) another classifier."""
    if len(stats.mu) != dim:
        raise ValueError(f"{what} holds {len(stats.mu)}-dimensional statistics; the classifier's features have {dim}")
    if stats.classifier is not None and stats.classifier != classifier:
        raise ValueError(f"{what} was computed with another domain classifier ({stats.classifier}, this one is "
                         f"{classifier}): its statistics do not apply")
    return stats


def reference_stats(features: np.ndarray, *, dataset: str, classifier: str, split: str, root: Path,
                    given: str | Path | None = None, save: str | Path | None = None,
                    log=None) -> tuple[ReferenceStats, str]:
    """The statistics FD compares with, and where they came from: `given` (a file), else
    those of `features` (the reference split's), which are also cached under `root`
    (refreshed every time: never stale) and written to `save` when asked."""
    computed = ReferenceStats.of(features, dataset=dataset, classifier=classifier, split=split)
    cached = computed.save(cache_path(root, dataset, classifier, split))
    if log:
        log(f"reference statistics of {dataset} ({split}, {len(features)} images) cached in {cached}")
    if save is not None:
        computed.save(save)
    if given is None:
        return computed, str(cached)
    return check_matches(load_reference(given), features.shape[1], classifier, f"--reference {given}"), str(given)
