"""Video evaluation: PSNR / SSIM closed forms and parity, identity consistency, the tracker's
motion statistics, and `difforge evaluate-video` end to end on a tiny run."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cli_runner import run
from difforge.data.moving import render
from difforge.eval import metrics as M
from difforge.eval import video_metrics as V
from video_helpers import train_tiny_video

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


# ---------------------------------------------------------------- PSNR, SSIM


def _frames(seed: int, n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)


def test_psnr_closed_forms():
    x = _frames(0).double()
    assert np.isinf(V.psnr(x, x)).all()
    np.testing.assert_allclose(V.psnr(x, x + 5), 10 * math.log10(255**2 / 25), rtol=1e-12)
    y = x.clone()
    y[:, :, :16] += 10  # half the pixels off by 10: MSE 50
    np.testing.assert_allclose(V.psnr(x, y), 10 * math.log10(255**2 / 50), rtol=1e-12)


def test_ssim_closed_forms():
    x = _frames(1)
    np.testing.assert_allclose(V.ssim(x, x), 1.0, atol=1e-12)
    for a, b in ((100.0, 100.0), (100.0, 140.0), (0.0, 255.0)):  # constant frames: the luminance term alone
        fa, fb = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
        np.testing.assert_allclose(V.ssim(fa, fb), (2 * a * b + C1) / (a * a + b * b + C1), rtol=1e-12)
    # a constant shift keeps the contrast and structure terms at 1: only the local means' term is left
    flat = torch.full((1, 1, 20, 20), 60.0)
    flat[..., ::2, :] += 30  # stripes: every window's mean is the same up to the parity of its centre row
    shifted = V.ssim(flat, flat + 20)[0]
    assert 0 < shifted < 1
    mu_lo, mu_hi = _striped_means()
    lo = (2 * mu_lo * (mu_lo + 20) + C1) / (mu_lo**2 + (mu_lo + 20) ** 2 + C1)
    hi = (2 * mu_hi * (mu_hi + 20) + C1) / (mu_hi**2 + (mu_hi + 20) ** 2 + C1)
    np.testing.assert_allclose(shifted, (lo + hi) / 2, rtol=1e-12)  # 10 x 10 valid positions, half of each parity
    assert V.ssim(x, _frames(2))[0] < 0.1 and np.allclose(V.ssim(x, _frames(2)), V.ssim(_frames(2), x))


def _striped_means() -> tuple[float, float]:
    """Local means of 60 + 30 [row even] under the 11-tap window: centre on an odd row / an even row."""
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    g /= g.sum()
    even_on_odd_centre = g[r % 2 != 0].sum()  # the window's rows at odd offsets are even rows
    return 60 + 30 * even_on_odd_centre, 60 + 30 * (1 - even_on_odd_centre)


def test_ssim_matches_the_scipy_filter_recipe():
    """Parity with the recipe of scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False): scipy's separable Gaussian filter (truncate 3.5: 11 taps), the map
    cropped by 5 pixels on every side."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _frames(3, n=2).double()
    y = (x * 0.7 + _frames(4, n=2).double() * 0.3).round()
    for i in range(2):
        a, b = x[i, 0].numpy(), y[i, 0].numpy()

        def blur(t):
            return ndimage.gaussian_filter(t, sigma=1.5, truncate=3.5, mode="reflect")

        ma, mb = blur(a), blur(b)
        va, vb, cab = blur(a * a) - ma**2, blur(b * b) - mb**2, blur(a * b) - ma * mb
        s = ((2 * ma * mb + C1) * (2 * cab + C2)) / ((ma**2 + mb**2 + C1) * (va + vb + C2))
        np.testing.assert_allclose(V.ssim(x[i : i + 1], y[i : i + 1])[0], s[5:-5, 5:-5].mean(), rtol=1e-10)


def test_ssim_refuses_small_or_mismatched_frames():
    with pytest.raises(ValueError, match="at least 11x11"):
        V.ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="differ in shape"):
        V.ssim(torch.zeros(1, 1, 16, 16), torch.zeros(2, 1, 16, 16))


# ---------------------------------------------------------------- identity


def test_identity_consistency():
    constant = np.array([[3] * 16, [7] * 16])
    assert V.identity_consistency(constant, 10) == {"constant": 1.0, "modal_share": 1.0}
    mixed = np.array([[0, 0, 0, 1], [2, 2, 2, 2], [0, 1, 2, 3]])
    r = V.identity_consistency(mixed, 10)
    assert r["constant"] == pytest.approx(1 / 3) and r["modal_share"] == pytest.approx((0.75 + 1 + 0.25) / 3)


def test_fd_of_identical_features_is_zero():
    x = np.random.default_rng(0).normal(size=(64, 8))
    assert M.frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- the garment and its motion


def _sprite(seed: int = 0, narrow: bool = False) -> torch.Tensor:
    s = torch.randint(40, 256, (16, 16), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)
    if narrow:  # a garment narrower than its box, centred in it
        s[:, :4] = 0
        s[:, 12:] = 0
    return s


def _clip(positions, sprite: torch.Tensor) -> torch.Tensor:
    """A clip (1, 1, T, 32, 32) of one sprite at integer top-left `positions` (T, 2)."""
    pos = torch.as_tensor(positions, dtype=torch.long)[None, None]
    return render(sprite[None, None], pos)


def test_garment_window_finds_the_box_and_crops_it():
    for narrow in (False, True):
        sprite = _sprite(1, narrow)
        clip = _clip([[3, 9], [16, 0], [0, 16]], sprite)
        frames = clip[0].transpose(0, 1)  # (T, 1, 32, 32)
        assert V.garment_windows(frames, 16).tolist() == [[3, 9], [16, 0], [0, 16]]
        crops = V.garment_crops(frames, 16, 16)
        assert torch.equal(crops, sprite.expand(3, 1, 16, 16))
        assert V.garment_crops(frames, 16, 28).shape == (3, 1, 28, 28)


def test_motion_of_static_linear_and_jittery_clips():
    sprite = _sprite(2)
    t = torch.arange(8)
    static = _clip(torch.tensor([[5, 7]]).expand(8, 2), sprite)
    linear = _clip(torch.stack([2 + t, 1 + 2 * t], 1), sprite)  # (1, 2) pixels per frame
    jitter = _clip(torch.stack([5 + t % 2, torch.full_like(t, 7)], 1), sprite)  # rows 5, 6, 5, 6, ...
    tracks = {name: V.centroids(c) for name, c in (("static", static), ("linear", linear), ("jitter", jitter))}
    offset = tracks["static"][0, 0] - np.array([5, 7])  # the sprite's own centroid
    np.testing.assert_allclose(tracks["linear"][0], np.stack([2 + t, 1 + 2 * t], 1) + offset, atol=1e-12)
    s = {name: V.motion_stats(tr) for name, tr in tracks.items()}
    assert s["static"] == {"mean_speed": 0.0, "mean_abs_acceleration": 0.0, "speed_quartiles": [0.0] * 3,
                           "static": 1.0}
    assert s["linear"]["mean_speed"] == pytest.approx(math.sqrt(5)) and s["linear"]["static"] == 0.0
    assert s["linear"]["mean_abs_acceleration"] == pytest.approx(0.0, abs=1e-12)
    assert s["jitter"]["mean_speed"] == pytest.approx(1.0) and s["jitter"]["mean_abs_acceleration"] == pytest.approx(2)
    # against a linear mover, the static clip is sqrt(5) away in speed; a clip of itself is 0 away
    assert V.motion_distances(tracks["static"], tracks["linear"])["speed_w1"] == pytest.approx(math.sqrt(5))
    assert V.motion_distances(tracks["linear"], tracks["linear"]) == {"speed_w1": 0.0, "acceleration_w1": 0.0}


def test_wasserstein_1d_closed_forms():
    assert V.wasserstein_1d([0.0], [3.0]) == 3.0
    a = np.random.default_rng(0).normal(size=50)
    assert V.wasserstein_1d(a, a + 0.25) == pytest.approx(0.25)
    assert V.wasserstein_1d([0, 1], [0, 0, 1, 1]) == 0.0
    assert V.wasserstein_1d([0, 2], [1]) == pytest.approx(1.0)


def test_a_blank_frame_tracks_the_centre():
    assert V.centroids(torch.zeros(1, 1, 3, 32, 32, dtype=torch.uint8))[0].tolist() == [[15.5, 15.5]] * 3


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    """A 3-step stunet-tiny run on a stand-in Fashion-MNIST, a one-epoch frame classifier and a
    2-step video classifier of the same data."""
    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.eval.classifier import ClassifierConfig, train_classifier
    from difforge.eval.video_classifier import VideoClassifierConfig, train_video_classifier

    tmp = tmp_path_factory.mktemp("video-eval")
    out, root = train_tiny_video(tmp, sample_every=0, n_train=48, n_test=16)
    images = load_dataset(DataConfig(dataset="fashion-mnist", path=str(root)))
    train_classifier(images, ClassifierConfig(epochs=1, batch_size=16)).save(tmp / "clf")
    clips = load_dataset(DataConfig(dataset="moving-fashion-mnist", path=str(root)))
    train_video_classifier(clips, VideoClassifierConfig(steps=2, batch_size=4)).save(tmp / "vclf")
    return out, tmp


def _args(tmp: Path) -> list[str]:
    return ["--classifier", str(tmp / "clf"), "--video-classifier", str(tmp / "vclf"), "--steps", "2",
            "--no-progress"]


def test_evaluate_video_writes_the_report(tiny_video, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFORGE_CACHE", str(tmp_path / "cache"))
    run_dir, tmp = tiny_video
    dest = tmp_path / "report"
    code = run(["evaluate-video", str(run_dir), "--out", str(dest), "--n", "3", "--given", "first:4",
                "--given", "every:2", *_args(tmp)])
    assert code == 0
    r = json.loads((dest / "report.json").read_text())
    assert r["format"] == "difforge-video-eval" and r["n"] == 3 and r["frames"] == 16
    for name in ("generated", "floor"):
        assert r["frame_fd"][name]["fd"] >= 0 and 0 <= r["frame_fd"][name]["precision"] <= 1
        assert r["video_fd"][name]["fd"] >= 0
        assert set(r["identity"][name]) == {"constant", "modal_share", "class_match"}
        assert {"mean_speed", "mean_abs_acceleration", "static", "speed_w1", "acceleration_w1"} <= set(
            r["motion"][name])
    assert r["frame_fd"]["frames"] == 48 and r["video_fd"]["reference_clips"] == 16
    assert r["motion"]["tracker_check"]["max_velocity_error"] == pytest.approx(0.0, abs=1e-9)
    assert r["motion"]["true_trajectories"]["static"] == 0.0
    for spec, given in (("first:4", [0, 1, 2, 3]), ("every:2", list(range(0, 16, 2)))):
        task = r["given"][spec]
        assert task["mask"] == given and task["clips"] == 3
        assert 0 < task["model"]["psnr"] < 100 and -1 <= task["model"]["ssim"] <= 1
        assert all((v is None) == (f in given) for f, v in enumerate(task["model"]["psnr_by_frame"]))
        for name in ("model", "nearest_given_frame"):
            m = task[name]
            assert m["frame_fd"] >= 0 and 0 <= m["class_match"] <= 1 and m["speed_w1"] >= 0
        assert 0 <= task["true_class_match"] <= 1
        assert (dest / f"given-{spec.replace(':', '-')}.png").is_file()
    assert "## Motion" in (dest / "report.md").read_text() and (dest / "samples.png").is_file()
    assert not (tmp_path / "cache").exists()  # both classifiers were given: nothing trained or cached
    # the same folder again needs --overwrite; then it is replaced
    assert run(["evaluate-video", str(run_dir), "--out", str(dest), "--n", "2", *_args(tmp)]) != 0
    assert run(["evaluate-video", str(run_dir), "--out", str(dest), "--n", "2", "--overwrite", *_args(tmp)]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--n", "1"], "at least 2 clips"),
    (["--given", "first:16"], "K must be in 1..15"),
    (["--given", "first:2", "--n", "17"], "more than the 16 there"),
    (["--per-frame"], "needs a stunet without temporal down-sampling"),
    (["--per-frame", "--given", "first:2"], "scores no --given task"),
])
def test_evaluate_video_refuses_bad_options(tiny_video, tmp_path, capsys, extra, message):
    run_dir, tmp = tiny_video
    assert run(["evaluate-video", str(run_dir), "--out", str(tmp_path / "r"), *_args(tmp), *extra]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "r").exists()


def test_image_and_video_models_are_sent_to_their_command(tiny_video, tmp_path, capsys):
    run_dir, tmp = tiny_video
    assert run(["evaluate-video", str(FIXTURES / "model-ddpm"), "--out", str(tmp_path / "a"), *_args(tmp)]) != 0
    assert "is an image model: use `difforge evaluate`" in capsys.readouterr().err
    assert run(["evaluate", str(run_dir), "--out", str(tmp_path / "b"), "--n", "2", "--no-progress"]) != 0
    assert "is a video model: use `difforge evaluate-video`" in capsys.readouterr().err


def test_given_needs_a_frame_conditioned_model(monkeypatch, tmp_path):
    import difforge.pipeline
    from difforge.eval.video import VideoEvalConfig, evaluate_video

    stub = SimpleNamespace(takes_clips=True, card=SimpleNamespace(frames=16, conditioning=SimpleNamespace(
        kind="class-labels")))
    monkeypatch.setattr(difforge.pipeline, "load_pipeline", lambda *a, **k: stub)
    with pytest.raises(ValueError, match="not conditioned on observed frames"):
        evaluate_video("some-model", tmp_path / "r", VideoEvalConfig(n=4, given=("first:4",)))


def test_a_perfect_predictor_scores_the_closed_forms(tiny_video, tmp_path):
    """A stub that returns the true clips: no pixel error (SSIM 1), a frame FD of 0, every
    garment the classifier sees kept as in the true frames, and the true motion (W1 0). The
    nearest-given-frame baseline stands still over the made frames."""
    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.eval.classifier import load_classifier
    from difforge.eval.video import VideoEvalConfig, _given_task
    from difforge.models.frames import parse_given

    _, tmp = tiny_video
    clips = load_dataset(DataConfig(dataset="moving-fashion-mnist", path=str(tmp / "fm"))).test.subset(np.arange(6))
    pipe = SimpleNamespace(num_classes=10, card=SimpleNamespace(channels=1), sigmas=lambda *a: [2.0, 1.0, 0.0],
                           generate_video=lambda n, labels, **kw: (clips.images.clone(), labels))
    mask = parse_given("first:4", 16)
    task = _given_task(pipe, VideoEvalConfig(n=6), clips, mask, "first:4", tmp_path, False,
                       load_classifier(tmp / "clf"))
    m, b = task["model"], task["nearest_given_frame"]
    assert m["psnr"] is None and m["ssim"] == pytest.approx(1.0)  # identical frames: infinite PSNR
    assert m["frame_fd"] == pytest.approx(0.0, abs=1e-6)
    assert m["class_match"] == task["true_class_match"]
    assert m["speed_w1"] == 0 and m["acceleration_w1"] == 0
    true_speeds = V.speeds(V.centroids(clips.images))
    frozen = np.concatenate([true_speeds[:, :3], np.zeros((6, 12))], axis=1)  # frames 4..15 copy frame 3
    assert b["speed_w1"] == pytest.approx(V.wasserstein_1d(frozen, true_speeds))
    assert b["speed_w1"] > 0.5  # the garments move 1 to 3 pixels per frame
