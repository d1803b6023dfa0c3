"""Measurements of clips: PSNR and SSIM of frames against the truth, the garment window of a
frame (what the Fashion-MNIST classifier is shown), identity consistency, and a tracker with
the smoothness statistics of its trajectories.

Everything takes uint8 clips (N, C, T, H, W) or frames (M, C, H, W) as `VideoDataset` and
`Pipeline.generate_video` give them, and returns numpy float64 (or torch for the crops).

- SSIM (Wang et al. 2004): an 11 x 11 Gaussian window of std 1.5 (normalised to sum 1),
  K1 = 0.01, K2 = 0.03, L = 255, population (not sample) variances, the map over the
  positions where the window fits ("valid"), averaged over positions and channels;
  the same choices as scikit-image's `structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255)`.
- PSNR: 10 log10(L^2 / MSE), infinite for identical frames.
- The tracker: the intensity-weighted centroid of a frame's pixels above `BACKGROUND`
  (pixels below it count as black, so faint noise does not pull the centroid towards the
  frame's centre); a rigid translation of the content moves it by exactly the translation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
BACKGROUND = 32  # pixel values below this are background for the tracker and the garment window
STATIC_SPEED = 0.5  # a clip whose mean speed (pixels per frame) is below this does not move


# ---------------------------------------------------------------- PSNR, SSIM


def _as_frames(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 4:
        raise ValueError(f"{name} must be frames (M, C, H, W), got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def psnr(x, y, data_range: float = 255.0) -> np.ndarray:
    """PSNR (dB) of each frame of `x` against the same frame of `y`, both (M, C, H, W):
    10 log10(data_range^2 / MSE); inf where a frame is identical."""
    x, y = _as_frames(x, "frames"), _as_frames(y, "reference frames")
    if x.shape != y.shape:
        raise ValueError(f"frames {tuple(x.shape)} and reference frames {tuple(y.shape)} differ in shape")
    mse = ((x - y) ** 2).flatten(1).mean(1).numpy()
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size, size) float64 Gaussian weights of std `sigma` centred in the window, summing to 1."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    return w / w.sum()


def ssim(x, y, data_range: float = 255.0, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
         k1: float = SSIM_K1, k2: float = SSIM_K2) -> np.ndarray:
    """Mean SSIM (Wang et al. 2004, eq. 13) of each frame of `x` against the same frame of
    `y`, both (M, C, H, W) with H, W >= `window` (module docstring): 1 for identical frames."""
    x, y = _as_frames(x, "frames"), _as_frames(y, "reference frames")
    if x.shape != y.shape:
        raise ValueError(f"frames {tuple(x.shape)} and reference frames {tuple(y.shape)} differ in shape")
    m, c, h, w = x.shape
    if min(h, w) < window:
        raise ValueError(f"SSIM needs frames of at least {window}x{window}, got {h}x{w}")
    kernel = gaussian_window(window, sigma)[None, None]
    x, y = x.reshape(m * c, 1, h, w), y.reshape(m * c, 1, h, w)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.reshape(m, -1).mean(1).numpy()


# ---------------------------------------------------------------- the garment in a frame


def _weights(frames: torch.Tensor, background: int) -> torch.Tensor:
    """(M, H, W) float64 tracker weights: the channels' sum of max(pixel - background + 1, 0)
    over pixels >= background."""
    f = frames.to(torch.float64)
    return torch.where(f >= background, f - (background - 1), 0.0).sum(1)


def garment_windows(frames: torch.Tensor, side: int, background: int = BACKGROUND) -> torch.Tensor:
    """Top-left corners (M, 2) long (row, column) of the `side` x `side` window holding the
    most content (tracker weights) of each frame (M, C, H, W). Of windows that tie (a garment
    narrower than the window), the one that centres it (the greatest content weighted by a
    tent peaking at the window's centre); then the first in raster order."""
    f = _weights(frames, background)[:, None]
    if min(f.shape[-2:]) < side:
        raise ValueError(f"frames of {f.shape[-2]}x{f.shape[-1]} are smaller than a {side}x{side} window")
    mass = F.conv2d(f, torch.ones(1, 1, side, side, dtype=torch.float64))[:, 0]  # exact: sums of integers
    ramp = torch.minimum(torch.arange(side), torch.arange(side).flip(0)).to(torch.float64) + 1
    tent = F.conv2d(f, torch.outer(ramp, ramp)[None, None])[:, 0]
    best = mass.flatten(1).amax(1).view(-1, 1, 1)
    score = torch.where(mass == best, tent, -1.0).flatten(1)
    k = score.argmax(1)
    cols = mass.shape[-1]
    return torch.stack([k // cols, k % cols], dim=1)


def garment_crops(frames: torch.Tensor, side: int, size: int, background: int = BACKGROUND) -> torch.Tensor:
    """Each frame's garment window (`garment_windows`) cut out and resized to `size` x `size`
    (bilinear), uint8 (M, C, size, size): what the image classifier of the garments sees."""
    corners = garment_windows(frames, side, background)
    r = corners[:, 0, None] + torch.arange(side)  # (M, side)
    c = corners[:, 1, None] + torch.arange(side)
    m = torch.arange(len(frames))[:, None, None]
    crops = frames.permute(0, 2, 3, 1)[m, r[:, :, None], c[:, None, :]].permute(0, 3, 1, 2)  # (M, C, side, side)
    if size == side:
        return crops.contiguous()
    up = F.interpolate(crops.to(torch.float64), size=(size, size), mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8)


def frame_classes(logits: np.ndarray, n: int, t: int) -> np.ndarray:
    """(N, T) class of every frame from the logits of N * T frames in clip order."""
    return np.asarray(logits).argmax(1).reshape(n, t)


def identity_consistency(classes: np.ndarray, num_classes: int | None = None) -> dict:
    """Of clips' per-frame classes (N, T): `constant` the share of clips whose class is the
    same in every frame; `modal_share` the mean over clips of the share of frames in the
    clip's most frequent class (1 / T at worst for distinct classes, 1 for constant)."""
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.shape[1] < 1 or len(classes) < 1:
        raise ValueError(f"frame classes must be (N, T) with N, T >= 1, got shape {classes.shape}")
    k = int(classes.max()) + 1 if num_classes is None else num_classes
    counts = np.stack([(classes == c).sum(1) for c in range(k)], axis=1)  # (N, K)
    modal = counts.max(1) / classes.shape[1]
    return {"constant": float((modal == 1).mean()), "modal_share": float(modal.mean())}


# ---------------------------------------------------------------- motion


def centroids(clips: torch.Tensor, background: int = BACKGROUND) -> np.ndarray:
    """(N, T, 2) (row, column) intensity-weighted centroid of every frame of uint8 clips
    (N, C, T, H, W), pixels below `background` ignored; a frame with no content gets the
    frame's centre."""
    clips = torch.as_tensor(clips)
    if clips.ndim != 5:
        raise ValueError(f"clips must be (N, C, T, H, W), got shape {tuple(clips.shape)}")
    n, c, t, h, w = clips.shape
    wts = _weights(clips.transpose(1, 2).reshape(n * t, c, h, w), background)  # (N T, H, W)
    total = wts.sum((1, 2))
    rows = (wts.sum(2) * torch.arange(h, dtype=torch.float64)).sum(1)
    cols = (wts.sum(1) * torch.arange(w, dtype=torch.float64)).sum(1)
    empty = total == 0
    safe = torch.where(empty, 1.0, total)
    r = torch.where(empty, (h - 1) / 2, rows / safe)
    q = torch.where(empty, (w - 1) / 2, cols / safe)
    return torch.stack([r, q], dim=1).view(n, t, 2).numpy()


def speeds(tracks: np.ndarray) -> np.ndarray:
    """(N, T - 1) distance moved per frame along trajectories (N, T, 2)."""
    tracks = np.asarray(tracks, np.float64)
    return np.linalg.norm(np.diff(tracks, axis=1), axis=2)


def accelerations(tracks: np.ndarray) -> np.ndarray:
    """(N, T - 2) |p[t+1] - 2 p[t] + p[t-1]| along trajectories (N, T, 2)."""
    tracks = np.asarray(tracks, np.float64)
    return np.linalg.norm(np.diff(tracks, n=2, axis=1), axis=2)


def motion_stats(tracks: np.ndarray) -> dict:
    """Smoothness and speed of trajectories (N, T, 2), T >= 3: mean speed and mean |acceleration|
    (pixels per frame, per frame^2, over every step of every clip), the speed's quartiles, and
    `static` the share of clips whose mean speed is below STATIC_SPEED."""
    tracks = np.asarray(tracks, np.float64)
    if tracks.ndim != 3 or tracks.shape[2] != 2 or tracks.shape[1] < 3 or len(tracks) < 1:
        raise ValueError(f"trajectories must be (N, T, 2) with T >= 3, got shape {tracks.shape}")
    v, a = speeds(tracks), accelerations(tracks)
    q = np.quantile(v, [0.25, 0.5, 0.75])
    return {"mean_speed": float(v.mean()), "mean_abs_acceleration": float(a.mean()),
            "speed_quartiles": [float(x) for x in q], "static": float((v.mean(1) < STATIC_SPEED).mean())}


def wasserstein_1d(a, b) -> float:
    """The 1-Wasserstein distance between the empirical distributions of samples `a` and `b`:
    the integral of |F_a - F_b| over the real line (exact, any sample sizes)."""
    a, b = np.sort(np.ravel(np.asarray(a, np.float64))), np.sort(np.ravel(np.asarray(b, np.float64)))
    if len(a) == 0 or len(b) == 0:
        raise ValueError("the Wasserstein distance needs two non-empty samples")
    xs = np.concatenate([a, b])
    xs.sort()
    fa = np.searchsorted(a, xs[:-1], side="right") / len(a)
    fb = np.searchsorted(b, xs[:-1], side="right") / len(b)
    return float((np.abs(fa - fb) * np.diff(xs)).sum())


def motion_distances(tracks: np.ndarray, reference: np.ndarray) -> dict:
    """How far trajectories' motion is from the reference's: the 1-Wasserstein distances
    between their per-step speeds and between their |accelerations| (0 for the same motion)."""
    return {"speed_w1": wasserstein_1d(speeds(tracks), speeds(reference)),
            "acceleration_w1": wasserstein_1d(accelerations(tracks), accelerations(reference))}
