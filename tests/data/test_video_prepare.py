"""`difforge prepare --clip-frames`: videos and frame folders -> a store of clips."""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difforge.data.folder import fit_square
from difforge.data.prepare import PrepareConfig, split_of
from difforge.data.store import load_store, read_manifest
from difforge.data.video_prepare import ClipConfig, prepare_clips, resample
from difforge.io.video import TimedFrame

av = pytest.importorskip("av")  # the `video` extra, in `test`

SIZE = 16


def square_frames(t: int, *, side: int = 24, box: int = 8, value: int = 200, step: int = 1, row: int = 4
                  ) -> np.ndarray:
    """uint8 (t, side, side): a bright square on black moving `step` pixels right per frame."""
    f = np.zeros((t, side, side), np.uint8)
    for i in range(t):
        c = (i * step) % (side - box)
        f[i, row : row + box, c : c + box] = value
    return f


def write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    ims = [Image.fromarray(a, "L") for a in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=round(1000 / fps), loop=0)


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Lossless H.264 (crf 0) in yuv420p: the only loss is the RGB <-> limited-range YUV
    rounding (256 gray levels on 219 luma codes)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "0"})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for a in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.repeat(a[..., None], 3, 2), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


GIF_A = square_frames(20)  # a/one.gif, 20 fps
FOLDER_A = square_frames(12, row=10, step=2)  # a/frames/, 12 PNGs
MP4_B = square_frames(20, value=150, step=2)  # b/two.mp4, 20 fps
GIF_B = square_frames(16, row=12, value=90)  # b/three.gif, 10 fps


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    (root / "a" / "frames").mkdir(parents=True)
    (root / "b").mkdir()
    write_gif(root / "a" / "one.gif", GIF_A, 20)
    for i, a in enumerate(FOLDER_A):  # names sort naturally: f2 before f10
        Image.fromarray(a).save(root / "a" / "frames" / f"f{i}.png")
    write_mp4(root / "b" / "two.mp4", MP4_B, 20)
    write_gif(root / "b" / "three.gif", GIF_B, 10)
    write_gif(root / "b" / "short.gif", square_frames(3), 20)
    (root / "b" / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    good = (root / "b" / "two.mp4").read_bytes()
    (root / "b" / "trunc.mp4").write_bytes(good[: len(good) // 2])
    (root / "b" / "empty.gif").write_bytes(b"")
    (root / "b" / "notes.txt").write_text("not a video")
    return root


def _fitted(frames: np.ndarray) -> np.ndarray:
    return np.stack([fit_square(Image.fromarray(a), SIZE, 1) for a in frames])


def _clips_of(p, key: str) -> dict[int, np.ndarray]:
    """start -> clip frames (T, S, S) of the source `key`, over every split."""
    out = {}
    for split, cols in p.items.items():
        for i, (k, s) in enumerate(zip(cols["source"], cols["start"])):
            if k == key:
                out[s] = p.arrays[split][i, 0]
    return out


@pytest.fixture(scope="module")
def every_frame(source):
    return prepare_clips(source, PrepareConfig(size=SIZE), ClipConfig(4), progress=False, log=lambda s: None)


def test_exact_formats_round_trip(every_frame):
    """GIF and PNG frame folders decode exactly: the stored clips are the source frames,
    fitted as images are, cut every 4 frames (the rest dropped)."""
    p = every_frame
    assert p.settings["channels"] == 1 and p.clips == {"frames": 4, "fps": None, "stride": 4}
    for key, frames in (("a/one.gif", GIF_A), ("a/frames/", FOLDER_A), ("b/three.gif", GIF_B)):
        clips = _clips_of(p, key)
        want = _fitted(frames)
        assert sorted(clips) == list(range(0, len(frames) - 3, 4))
        for s, c in clips.items():
            assert np.array_equal(c, want[s : s + 4]), (key, s)


def test_mp4_round_trip_within_yuv_rounding(every_frame):
    clips = _clips_of(every_frame, "b/two.mp4")
    want = _fitted(MP4_B).astype(int)
    assert sorted(clips) == [0, 4, 8, 12, 16]
    # lossless H.264 in limited-range yuv420p: 256 gray levels on 219 codes and back, at most 1 level per
    # pixel, plus 1 for the Lanczos fit of those pixels
    for s, c in clips.items():
        assert np.abs(c.astype(int) - want[s : s + 4]).max() <= 2


def test_frame_rate_resampling_closed_form(source):
    """A 20 fps GIF at 10 fps keeps frames 0, 2, 4, ...; a 10 fps GIF at 20 fps shows every
    frame twice; a frame folder has no times and is kept one for one."""
    p = prepare_clips(source, PrepareConfig(size=SIZE), ClipConfig(4, fps=10), progress=False, log=lambda s: None)
    clips = _clips_of(p, "a/one.gif")
    want = _fitted(GIF_A[::2])  # 10 output frames
    assert sorted(clips) == [0, 4]
    assert all(np.array_equal(c, want[s : s + 4]) for s, c in clips.items())
    p = prepare_clips(source, PrepareConfig(size=SIZE), ClipConfig(8, fps=20), progress=False, log=lambda s: None)
    clips = _clips_of(p, "b/three.gif")
    want = _fitted(GIF_B[np.arange(32) // 2])
    assert sorted(clips) == [0, 8, 16, 24]
    assert all(np.array_equal(c, want[s : s + 8]) for s, c in clips.items())
    assert sorted(_clips_of(p, "a/frames/")) == [0]  # 12 frames, as they are


@pytest.mark.parametrize("rate,fps,n", [(30, 12, 25), (20, 10, 9), (24, 25, 10), (Fraction(30000, 1001), 10, 40)])
def test_resample_rule(rate, fps, n):
    """Output frame k shows source frame floor(k rate / fps); ceil(n fps / rate) frames."""
    frames = [TimedFrame(Fraction(i) / rate, 1 / Fraction(rate), i) for i in range(n)]
    got = [i for i, _ in resample(iter(frames), Fraction(fps))]
    count = -(-n * Fraction(fps) // Fraction(rate))
    assert got == [int(k * Fraction(rate) / fps) for k in range(count)]


def test_clip_stride_counts(source):
    p = prepare_clips(source, PrepareConfig(size=SIZE), ClipConfig(4, stride=2), progress=False, log=lambda s: None)
    assert sorted(_clips_of(p, "a/one.gif")) == list(range(0, 17, 2))  # (20 - 4) // 2 + 1 = 9 clips
    assert sorted(_clips_of(p, "a/frames/")) == [0, 2, 4, 6, 8]
    assert p.report["kept"] == 9 + 5 + 9 + 7


def test_splits_are_by_video(source):
    """Every video's clips are in one split, the split of its content hash."""
    seen = set()
    for seed in range(4):
        cfg = PrepareConfig(size=SIZE, val_fraction=0.3, test_fraction=0.3, split_seed=seed)
        p = prepare_clips(source, cfg, ClipConfig(2), progress=False, log=lambda s: None)
        where: dict[str, set] = {}
        for split, cols in p.items.items():
            for key, sha in zip(cols["source"], cols["sha256"]):
                where.setdefault(key, set()).add(split)
                assert split == split_of(sha, 0.3, 0.3, seed)
        assert len(where) == 5 and all(len(s) == 1 for s in where.values())  # short.gif has 3 frames
        seen |= {next(iter(s)) for s in where.values()}
    assert len(seen) > 1  # the check has several splits to tell apart


def test_bad_and_short_videos_are_reported_and_skipped(source, every_frame):
    before = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in source.rglob("*") if f.is_file()}
    r = every_frame.report
    reasons = {q["source"]: q["reason"] for q in r["quarantined"]}
    assert set(reasons) == {"b/bad.mp4", "b/trunc.mp4", "b/empty.gif", "b/notes.txt"}
    assert reasons["b/empty.gif"] == "empty file"
    assert all("\n" not in why and why for why in reasons.values())
    assert r["too_short"] == [{"source": "b/short.gif", "frames": 3, "needed": 4}]
    assert r["videos_kept"] == 4 and r["decoded"] == 5
    after = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in source.rglob("*") if f.is_file()}
    assert after == before


def test_options_are_checked(source, tmp_path):
    with pytest.raises(ValueError, match="--clip-frames must be"):
        ClipConfig(0)
    with pytest.raises(ValueError, match="do not apply with --clip-frames"):
        prepare_clips(source, PrepareConfig(drop_outliers=True), ClipConfig(4), progress=False)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="x.txt: not a video file"):
        prepare_clips(tmp_path / "x.txt", PrepareConfig(), ClipConfig(4), progress=False)
    with pytest.raises(ValueError, match="no candidate videos .1 files skipped; first skipped: x.txt"):
        prepare_clips(tmp_path, PrepareConfig(), ClipConfig(4), progress=False)


def _held_out_seed(source) -> int:
    """A split seed that puts some but not all of the videos in test (no val)."""
    for seed in range(50):
        cfg = PrepareConfig(size=SIZE, val_fraction=0.0, test_fraction=0.5, split_seed=seed)
        p = prepare_clips(source, cfg, ClipConfig(4, fps=10), progress=False, log=lambda s: None)
        if len(p.arrays["test"]) and len(p.arrays["train"]) >= 2:
            return seed
    raise AssertionError("no seed splits the videos")


def test_cli_store_trains_and_samples(source, tmp_path, capsys):
    """prepare -> a clip store that loads as VideoDatasets -> one tiny training step ->
    sample-video continuing a held-out clip of the store."""
    from cli_runner import run

    store, out = tmp_path / "store", tmp_path / "run"
    seed = _held_out_seed(source)
    assert run(["prepare", str(source), str(store), "--clip-frames", "4", "--fps", "10", "--size", str(SIZE),
                "--val", "0", "--test", "0.5", "--split-seed", str(seed), "--no-progress"]) == 0
    assert "quarantined 4" in capsys.readouterr().out
    manifest, splits = load_store(store)
    assert manifest["version"] == 3 and read_manifest(store)["clips"]["frames"] == 4
    assert splits["train"].frames == 4 and splits["train"].images.shape[1:] == (1, 4, SIZE, SIZE)
    assert type(splits["test"]).__name__ == "VideoDataset"
    assert run(["inspect", str(store), "--sheets", str(tmp_path / "sheets")]) == 0
    report = capsys.readouterr().out
    # short.gif: 3 frames at 20 fps make ceil(3 * 10 / 20) = 2 at 10 fps
    assert "clips of 4 frames at 10 fps" in report and "b/short.gif: 2 frames, clips need 4" in report

    assert run(["train", "--data", str(store), "--model", "tiny", "--out", str(tmp_path / "r0"),
                "--max-steps", "1", "--no-progress"]) != 0
    assert "is clips: train it with a video model" in capsys.readouterr().err
    assert run(["train", "--data", str(store), "--model", "stunet-tiny", "--out", str(out), "--max-steps", "1",
                "--batch-size", "2", "--set", "train.sample_every=0", "--set", "train.final_grid=false",
                "--set", "diffusion.timesteps=20", "--no-progress"]) == 0
    capsys.readouterr()
    clip = tmp_path / "clip.gif"
    assert run(["sample-video", str(out), "--out", str(clip), "--given", "first:2", "--steps", "2",
                "--no-progress"]) == 0
    from difforge.io.video import read_video

    given = splits["test"].images[0, 0, :2].numpy()
    back = read_video(clip)[:2, ::2, ::2, 0]  # written at twice the size (pixels repeated)
    assert back.shape == given.shape and np.array_equal(back, given)  # the given frames come back exactly


def test_cli_refuses_video_options_without_clip_frames(source, tmp_path, capsys):
    from cli_runner import run

    assert run(["prepare", str(source), str(tmp_path / "s"), "--fps", "10", "--no-progress"]) != 0
    assert "give --clip-frames N as well" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
