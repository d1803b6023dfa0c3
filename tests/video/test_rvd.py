"""Residual video diffusion: the residual parameterisation, the predictor, the rollout, and a
tiny model trained, checkpointed and sampled through the CLI."""

import json

import pytest
import torch

from cli_runner import run
from difforge.models.frames import parse_given
from difforge.models.rvd import (
    SCALE_FLOOR,
    RVDNet,
    context_and_target,
    from_residual,
    given_prefix,
    stack_context,
    to_residual,
)
from video_helpers import tiny_fashion, train_tiny_video


def test_residual_round_trip_both_ways():
    g = torch.Generator().manual_seed(0)
    x, mu, r = (torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    scale = torch.tensor(0.137, dtype=torch.float64)
    assert torch.allclose(from_residual(to_residual(x, mu, scale), mu, scale), x, atol=1e-14, rtol=0)
    assert torch.allclose(to_residual(from_residual(r, mu, scale), mu, scale), r, atol=1e-13, rtol=0)
    # a power-of-two scale makes both maps exact in floating point
    half = torch.tensor(0.5, dtype=torch.float64)
    assert torch.equal(to_residual(x, mu, half), (x - mu) * 2)
    assert torch.equal(from_residual(r, mu, half), mu + r / 2)


def test_context_and_target_pick_the_frames_before_each_position():
    clips = torch.arange(6.0).view(1, 1, 6, 1, 1).repeat(2, 2, 1, 3, 3)  # every pixel of frame i is i
    clips[:, 1] += 100  # the second channel: i + 100
    context, target = context_and_target(clips, torch.tensor([2, 5]), 2)
    assert context.shape == (2, 4, 3, 3) and target.shape == (2, 2, 3, 3)
    assert context[:, :, 0, 0].tolist() == [[0, 100, 1, 101], [3, 103, 4, 104]]  # frames oldest first, C each
    assert target[:, :, 0, 0].tolist() == [[2, 102], [5, 105]]
    assert torch.equal(stack_context([clips[:, :, 0], clips[:, :, 1]]), context_and_target(clips, torch.tensor(
        [2, 2]), 2)[0])
    with pytest.raises(ValueError, match="positions must be in 2..5"):
        context_and_target(clips, torch.tensor([1, 2]), 2)


def _tiny_net(**kw):
    torch.manual_seed(0)
    return RVDNet(1, 1, 10, context=2, predictor_width=8, predictor_dilations=(1,), base_channels=8,
                  channel_mults=(1, 2), attention_levels=(), num_heads=2, **kw)


def test_an_exact_predictor_gives_a_zero_residual_target():
    net = _tiny_net()
    static = torch.rand(3, 1, 1, 8, 8).expand(3, 1, 5, 8, 8) * 2 - 1  # nothing moves: the last frame is exact
    context, target = context_and_target(static, torch.tensor([2, 3, 4]), 2)
    mu = net.predict(context)
    assert torch.equal(mu, target)  # untrained, the predictor copies the last frame
    assert torch.equal(to_residual(target, mu, net.scale), torch.zeros_like(target))
    net.observe_residuals(target - mu)
    assert net.scale.item() == pytest.approx(SCALE_FLOOR)  # zero residuals: the floor, never a division by zero


def test_the_scale_is_a_running_rms_of_the_residuals():
    net = _tiny_net(scale_momentum=0.75)
    net.observe_residuals(torch.full((4,), 2.0))
    assert net.scale.item() == pytest.approx(2.0)  # the first batch sets it
    net.observe_residuals(torch.full((4,), 4.0))
    assert net.scale.item() == pytest.approx((0.75 * 4 + 0.25 * 16) ** 0.5)
    assert "scale" in net.state_dict()  # checkpoints, the EMA copy and exports carry it


@pytest.mark.parametrize("preset", ["rvd", "rvd-tiny"])
def test_presets_map_a_residual_frame_to_one_of_its_shape(preset):
    from difforge.models import build_model, size_multiple
    from difforge.models.rvd import ResidualCond

    torch.manual_seed(0)
    net = build_model(preset, in_channels=1, num_classes=10, cond_channels=2)  # a video card's channels: unused
    k = net.context
    cond = ResidualCond(torch.randn(2, k, 16, 16), torch.randn(2, 1, 16, 16), torch.tensor([3, 10]))
    assert net(torch.randn(2, 1, 16, 16), torch.zeros(2), cond).shape == (2, 1, 16, 16)
    assert net.predict(cond.context).shape == (2, 1, 16, 16) and net.size_multiple == size_multiple(preset)
    with pytest.raises(ValueError, match=f"a context must be \\(B, {k}, H, W\\)"):
        net.predict(torch.randn(2, k + 1, 16, 16))


def test_given_prefix_errors():
    assert given_prefix(parse_given("first:3", 16), 2) == (3, 16)
    for mask, message in [(parse_given("every:2", 16), "must be the first ones"),
                          (parse_given("first:1", 16), "give at least the first 2"),
                          (torch.ones(5, dtype=torch.bool), "nothing is left to make"),
                          (torch.stack([parse_given("first:2", 8), parse_given("first:3", 8)]), "every clip")]:
        with pytest.raises(ValueError, match=message):
            given_prefix(mask, 2)


@pytest.fixture(scope="module")
def rvd_run(tmp_path_factory):
    return train_tiny_video(tmp_path_factory.mktemp("rvd"), "rvd-tiny")


def test_training_writes_an_rvd_card_checkpoint_and_previews(rvd_run):
    import json

    from difforge.pipeline import load_pipeline

    out, _ = rvd_run
    card = json.loads((out / "model.json").read_text())
    assert card["architecture"]["preset"] == "rvd-tiny"
    assert card["conditioning"] == {"kind": "video-frames", "frames": 16, "num_classes": 10}
    assert (out / "checkpoints" / "step-3").is_dir()
    assert (out / "samples" / "step-0000002.gif").is_file()
    pipe = load_pipeline(out)
    assert pipe.residual_video
    scale = pipe.model.core.scale.item()
    assert SCALE_FLOOR < scale < 2 and scale != 1.0  # measured in training, loaded with the weights


def test_rollout_keeps_the_given_frames_and_is_seeded(rvd_run):
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(rvd_run[0])
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 1, 16, 32, 32, generator=g) * 2 - 1
    mask = parse_given("first:3", 16)
    kw = dict(given=truth, mask=mask, steps=2, sampler="ddpm")
    a = pipe.sample_video(2, torch.tensor([1, 2]), seed=5, **kw)
    assert a.shape == (2, 1, 16, 32, 32)
    assert torch.equal(a[:, :, :3], truth[:, :, :3]) and not torch.equal(a[:, :, 3:], truth[:, :, 3:])
    assert torch.equal(pipe.sample_video(2, torch.tensor([1, 2]), seed=5, **kw), a)
    alone = pipe.sample_video(1, torch.tensor([2]), seeds=[6], **{**kw, "given": truth[1:]})[0]
    assert torch.allclose(alone, a[1], atol=1e-5)  # clip i's noise is seed + i's, whatever the batch
    assert not torch.equal(pipe.sample_video(2, torch.tensor([1, 2]), seed=6, **kw), a)
    longer = pipe.sample_video(1, given=truth[:1, :, :3], mask=parse_given("first:3", 20), steps=1)
    assert longer.shape == (1, 1, 20, 32, 32)  # frame by frame: longer than the training clips


def _frame_files(folder, count):
    import numpy as np
    from PIL import Image

    paths = []
    for i in range(count):
        a = np.zeros((32, 32), np.uint8)
        a[i * 2: i * 2 + 10, 3:13] = 200
        Image.fromarray(a).save(folder / f"f{i}.png")
        paths.append(str(folder / f"f{i}.png"))
    return ",".join(paths)


def test_sample_video_cli_rolls_out_from_given_frames(rvd_run, tmp_path):
    import numpy as np
    from PIL import Image

    from difforge.io.video import read_video

    out, _ = rvd_run
    dest = tmp_path / "clip.gif"
    files = _frame_files(tmp_path, 2)
    code = run(["sample-video", str(out), "--out", str(dest), "--given-frames", files, "--n", "2", "--steps", "2",
                "--frames", "18", "--class", "3", "--no-progress"])
    video = read_video(dest)
    assert code == 0 and video.shape[0] == 18
    for i, p in enumerate(files.split(",")):  # GIF is lossless: the given frames come back (2 px in, pixels x2)
        assert np.array_equal(video[i, 4:68:2, 4:68:2, 0], np.asarray(Image.open(p)))


@pytest.mark.parametrize("args, message", [
    ([], "an RVD model continues given frames: give the first 2 or more (--given first:2)"),
    (["--given-frames", "F1"], "predicts from its last 2 frames"),
    (["--given", "frames:0,2", "--given-frames", "F2"], "the given frames must be the first ones"),
    (["--given-frames", "F2", "--cfg", "3"], "without classifier-free guidance"),
    (["--given", "first:20", "--frames", "20"], "K must be in 1..19"),
])
def test_sample_video_errors_for_rvd(rvd_run, tmp_path, capsys, args, message):
    args = [_frame_files(tmp_path, int(a[1])) if a in ("F1", "F2") else a for a in args]
    code = run(["sample-video", str(rvd_run[0]), "--out", str(tmp_path / "c.gif"), "--steps", "1",
                "--no-progress"] + args)
    err = capsys.readouterr().err
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_given_clips_too_short_are_refused(rvd_run):
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(rvd_run[0])
    with pytest.raises(ValueError, match="at least 3 frames"):
        pipe.sample_video(1, given=torch.zeros(1, 1, 2, 32, 32), mask=parse_given("first:3", 16), steps=1)


def test_a_context_as_long_as_the_clips_is_refused(tmp_path, capsys):
    root = tiny_fashion(tmp_path / "fm", n_train=8, n_test=4)
    code = run(["train", "--dataset", "moving-fashion-mnist", "--data", str(root), "--model", "rvd-tiny",
                "--out", str(tmp_path / "r"), "--max-steps", "1", "--set", "model.architecture={context: 16}",
                "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "needs clips longer than 16 frames; these have 16" in err
    assert not (tmp_path / "r").exists()  # refused before the run directory is written


def test_evaluate_video_scores_an_rvd_model_on_its_given_tasks(rvd_run, tmp_path, capsys):
    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.eval.classifier import ClassifierConfig, train_classifier
    from difforge.eval.video_classifier import VideoClassifierConfig, train_video_classifier

    out, root = rvd_run
    train_classifier(load_dataset(DataConfig(dataset="fashion-mnist", path=str(root))),
                     ClassifierConfig(epochs=1, batch_size=16)).save(tmp_path / "clf")
    train_video_classifier(load_dataset(DataConfig(dataset="moving-fashion-mnist", path=str(root))),
                           VideoClassifierConfig(steps=2, batch_size=4)).save(tmp_path / "vclf")
    args = ["evaluate-video", str(out), "--n", "3", "--steps", "2", "--classifier", str(tmp_path / "clf"),
            "--video-classifier", str(tmp_path / "vclf"), "--no-progress"]
    assert run([*args, "--out", str(tmp_path / "a")]) != 0
    assert "continues given frames: score it with --given first:K (K >= 2)" in capsys.readouterr().err
    assert run([*args, "--out", str(tmp_path / "b"), "--given", "first:2"]) == 0
    r = json.loads((tmp_path / "b" / "report.json").read_text())
    assert r["frame_fd"] is None and r["motion"] is None and r["sampling"]["cfg"] == 1.0
    task = r["given"]["first:2"]
    assert task["clips"] == 3 and task["model"]["frame_fd"] >= 0 and 0 <= task["model"]["ssim"] <= 1
    assert "only its prediction tasks are scored" in (tmp_path / "b" / "report.md").read_text()
    assert not (tmp_path / "b" / "samples.png").exists()
