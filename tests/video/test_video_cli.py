"""End to end: train a tiny video model, sample clips with frames given, write GIF and MP4."""

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import run
from difforge.io.video import read_video, write_video
from difforge.models.frames import parse_given
from video_helpers import tiny_fashion, train_tiny_video


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    return train_tiny_video(tmp_path_factory.mktemp("video"))


def test_train_writes_a_video_card_and_previews(video_run):
    import json

    out, _ = video_run
    card = json.loads((out / "model.json").read_text())
    assert card["conditioning"] == {"kind": "video-frames", "frames": 16, "num_classes": 10}
    assert (out / "samples" / "step-0000002.gif").is_file()
    grid = Image.open(out / "samples" / "step-0000002.png")
    assert grid.size[0] > grid.size[1]  # a row of 16 frames per clip


def test_resume_continues_the_run(video_run):
    out, root = video_run
    code = run(["train", "--resume", "--out", str(out), "--max-steps", "4", "--no-progress"])
    assert code == 0 and (out / "checkpoints" / "step-4").is_dir()


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_sample_video_with_given_frames(video_run, tmp_path, suffix):
    out, _ = video_run
    frames = []
    for i in range(4):
        a = np.zeros((32, 32), np.uint8)
        a[i * 4 : i * 4 + 10, 3:13] = 200
        Image.fromarray(a).save(tmp_path / f"f{i}.png")
        frames.append(str(tmp_path / f"f{i}.png"))
    dest = tmp_path / f"clip{suffix}"
    png = tmp_path / "frames.png"
    code = run(["sample-video", str(out), "--out", str(dest), "--given-frames", ",".join(frames), "--n", "2",
                "--steps", "2", "--class", "3", "--frames-png", str(png), "--no-progress"])
    assert code == 0
    video = read_video(dest)
    assert video.shape[0] == 16
    if suffix == ".gif":  # lossless: the given frames come back exactly (the first clip's: 2 px in, pixels x2)
        for i in range(4):
            given = np.asarray(Image.open(frames[i]))
            assert np.array_equal(video[i, 4:68:2, 4:68:2, 0], given)


def test_pipeline_returns_given_frames_exactly(video_run):
    from difforge.pipeline import load_pipeline

    out, _ = video_run
    pipe = load_pipeline(out)
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 1, 16, 32, 32, generator=g) * 2 - 1
    for text in ("first:4", "every:2", "frames:0,7,15"):
        mask = parse_given(text, 16)
        clips = pipe.sample_video(2, torch.tensor([1, 2]), given=truth, mask=mask, steps=2, sampler="euler-a")
        assert torch.equal(clips[:, :, mask], truth[:, :, mask]) and not torch.equal(clips, truth)


@pytest.mark.parametrize("args, message", [
    (["--out", "clip.avi"], "must end in .gif or .mp4"),
    (["--given", "first:16"], "K must be in 1..15"),
    (["--given", "sometimes"], "expected first:K"),
    (["--frames", "8"], "makes clips of 16 frames"),
    (["--given", "first:2", "--given-frames", "a.png"], "1 file(s) for the 2 given frame(s)"),
])
def test_sample_video_errors(video_run, tmp_path, capsys, args, message):
    out, _ = video_run
    full = ["sample-video", str(out), "--no-progress", "--steps", "1"]
    if "--out" not in args:
        full += ["--out", str(tmp_path / "c.gif")]
    code = run(full + args)
    assert code != 0 and message in capsys.readouterr().err


def test_image_model_flags_are_refused_for_clips(tmp_path, capsys):
    root = tiny_fashion(tmp_path / "fm", n_train=8, n_test=4)
    code = run(["train", "--dataset", "moving-fashion-mnist", "--data", str(root), "--model", "tiny",
                "--out", str(tmp_path / "r"), "--max-steps", "1"])
    assert code != 0 and "train it with a video model" in capsys.readouterr().err


def test_write_video_round_trip(tmp_path):
    clips = torch.randint(0, 256, (2, 1, 5, 8, 8), dtype=torch.uint8)
    path = write_video(clips, tmp_path / "a.gif")
    back = read_video(path)
    assert back.shape == (5, 12, 22, 3)  # two clips side by side, 2 px around and between
    assert np.array_equal(back[:, 2:10, 2:10, 0], clips[0, 0].numpy())
    assert np.array_equal(back[:, 2:10, 12:20, 0], clips[1, 0].numpy())
    with pytest.raises(ValueError, match="cannot read video"):
        (tmp_path / "bad.mp4").write_bytes(b"not a video")
        read_video(tmp_path / "bad.mp4")
