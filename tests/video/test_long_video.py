"""Videos longer than the model's clips: the schemes' plans, their runner, the CLI."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cli_runner import run
from difforge.tasks.long_video import SCHEMES, Stage, check_plan, keyframes, plan, run_plan, sample_long_video
from video_helpers import train_tiny_video

CASES = [(64, 16, 8, ()), (64, 16, 4, ()), (16, 16, 8, ()), (17, 16, 15, ()), (40, 8, 1, ()), (300, 16, 8, ()),
         (33, 4, 3, ()), (64, 16, 8, (0, 1, 2, 3)), (64, 16, 4, (60, 61, 62, 63)), (50, 16, 8, (0, 10, 20, 49))]


def assert_invariants(stages, length, window, given):
    """Checked here independently of check_plan: every frame not given is generated once,
    stages condition only on frames made before them, windows are `window` distinct frames."""
    made = set(given)
    counts = np.zeros(length, int)
    for s in stages:
        assert len(s.window) == window == len(set(s.window))
        assert list(s.generate) == sorted(s.generate) and list(s.condition) == sorted(s.condition)
        assert set(s.condition) <= made and not set(s.generate) & made
        for f in s.generate:
            counts[f] += 1
        made |= set(s.generate)
    assert all(counts[g] == 0 for g in given)
    assert all(counts[f] == 1 for f in range(length) if f not in given)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("length, window, context, given", CASES)
def test_plans_make_every_frame_once_from_frames_made(scheme, length, window, context, given):
    stages = plan(scheme, length, window, context, given)
    assert_invariants(stages, length, window, set(given))
    check_plan(stages, length, window, given)


def test_autoregressive_conditions_on_the_last_k_frames():
    stages = plan("autoregressive", 64, 16, 4)
    assert [(s.generate[0], s.generate[-1], s.condition) for s in stages] == [
        (0, 15, ()), (16, 27, (12, 13, 14, 15)), (28, 39, (24, 25, 26, 27)), (40, 51, (36, 37, 38, 39)),
        (52, 63, (48, 49, 50, 51))]
    # the last window ends at the last frame and conditions on more than K frames
    last = plan("autoregressive", 20, 16, 8)[-1]
    assert last.generate == (16, 17, 18, 19) and last.condition == tuple(range(4, 16))


def test_hierarchical_makes_keyframes_first_then_fills_consecutive_windows():
    length, window, context = 64, 16, 8
    keys = keyframes(length, window, context)
    assert keys[0] == 0 and keys[-1] == length - 1 and len(keys) == window
    assert max(np.diff(keys)) <= window - context
    stages = plan("hierarchical", length, window, context)
    assert stages[0] == Stage(tuple(keys), ())
    for s in stages[1:]:  # every filling window is consecutive frames
        assert s.window == tuple(range(s.window[0], s.window[0] + window))
        assert s.window[0] == 0 or s.window[-1] in keys  # ends on a keyframe (the first may not)
    # longer: several keyframe windows, each after the first conditioning on the last K keyframes
    keys = keyframes(300, 16, 8)
    assert len(keys) > 16 and max(np.diff(keys)) <= 8
    stages = plan("hierarchical", 300, 16, 8)
    assert stages[1].condition == tuple(keys[8:16]) and stages[1].generate == tuple(keys[16:24])


def test_check_plan_rejects_broken_plans():
    with pytest.raises(ValueError, match="conditions on frames not made yet"):
        check_plan([Stage(tuple(range(1, 5)), (0,))], 5, 5)
    with pytest.raises(ValueError, match="made already"):
        check_plan([Stage(tuple(range(4)), ()), Stage((3, 4), (0, 1))], 5, 4)
    with pytest.raises(ValueError, match="never made"):
        check_plan([Stage(tuple(range(4)), ())], 5, 4)
    with pytest.raises(ValueError, match="window of 3 frames"):
        check_plan([Stage((0, 1, 2), ())], 3, 4)


@pytest.mark.parametrize("args, message", [
    (("autoregressive", 64, 16, 16), "context 16: must be in 1..15"),
    (("hierarchical", 64, 16, 0), "context 0: must be in 1..15"),
    (("autoregressive", 8, 16, 4), "a video of 8 frames is shorter than the model's 16-frame window"),
    (("spiral", 64, 16, 4), "unknown scheme 'spiral': expected one of autoregressive, hierarchical"),
])
def test_plan_errors(args, message):
    with pytest.raises(ValueError) as e:
        plan(*args)
    assert message in str(e.value) and "\n" not in str(e.value)


class FakeVideoModel:
    """Stands in for a Pipeline: records every call; generated frame f of a call holds the
    value 10 * call + slot, so the video shows which call made each frame."""

    def __init__(self, frames=8, channels=1, size=4):
        self.card = SimpleNamespace(frames=frames, channels=channels, native_size=size)
        self.takes_clips = True
        self.calls = []

    def sample_video(self, n, labels=None, *, given=None, mask=None, seeds=None, **options):
        t, c, s = self.card.frames, self.card.channels, self.card.native_size
        self.calls.append(dict(given=None if given is None else given.clone(), mask=mask, seeds=seeds,
                               labels=labels, options=options))
        out = torch.arange(t, dtype=torch.float).view(1, 1, t, 1, 1).expand(n, c, t, s, s) + 10 * len(self.calls)
        out = out / 1000
        if given is not None:
            out = torch.where(mask[None, None, :, None, None], given, out)
        return out


@pytest.mark.parametrize("scheme", SCHEMES)
def test_runner_hands_the_model_the_frames_made_and_writes_each_new_frame(scheme):
    model = FakeVideoModel(frames=8)
    length, n = 30, 2
    g = torch.Generator().manual_seed(0)
    given = torch.rand(1, 1, length, 4, 4, generator=g) * 2 - 1
    mask = torch.zeros(length, dtype=torch.bool)
    mask[[0, 1, 29]] = True
    video = sample_long_video(model, length, n, torch.tensor([3]), scheme=scheme, context=3, given=given,
                              mask=mask, seed=5, steps=2, cfg=1.5)
    stages = plan(scheme, length, 8, 3, [0, 1, 29])
    assert len(model.calls) == len(stages)
    assert torch.equal(video[:, :, mask], given[:, :, mask].expand(n, -1, -1, -1, -1))  # given: exact
    expected = torch.zeros(length)
    for j, (s, call) in enumerate(zip(stages, model.calls)):
        cond = torch.tensor([f in s.condition for f in s.window])
        if s.condition:
            assert torch.equal(call["mask"], cond)
            # the observed slots hold the frames made before (given or generated), in order
            assert torch.equal(call["given"][:, :, cond], video[:, :, list(s.condition)])
        else:
            assert call["mask"] is None and call["given"] is None
        assert call["seeds"] == [5 + i + j * 2**32 for i in range(n)]
        assert call["options"]["steps"] == 2 and call["options"]["cfg"] == 1.5 and call["labels"].tolist() == [3]
        for slot, f in enumerate(s.window):
            if f in s.generate:
                expected[f] = (10 * (j + 1) + slot) / 1000
    made = ~mask
    assert torch.equal(video[0, 0, made, 0, 0], expected[made])


def test_run_plan_takes_any_stages():
    calls = []

    def sample(n, given=None, mask=None, seeds=None):
        calls.append(mask)
        return torch.full((n, 1, 3, 2, 2), float(len(calls)))

    video = run_plan(sample, [Stage((0, 2, 4), ()), Stage((1, 3), (0,))], torch.zeros(1, 1, 5, 2, 2))
    assert video[0, 0, :, 0, 0].tolist() == [1, 2, 1, 2, 1]
    assert calls[0] is None and calls[1].tolist() == [True, False, False]


def test_runner_errors():
    model = FakeVideoModel(frames=8)
    with pytest.raises(ValueError, match=r"the frame mask must be \(20,\)"):
        sample_long_video(model, 20, 1, given=torch.zeros(1, 1, 20, 4, 4), mask=torch.zeros(16, dtype=torch.bool))
    with pytest.raises(ValueError, match="every frame is given"):
        sample_long_video(model, 20, 1, given=torch.zeros(1, 1, 20, 4, 4), mask=torch.ones(20, dtype=torch.bool))
    model.takes_clips = False
    with pytest.raises(ValueError, match="not a video model"):
        sample_long_video(model, 20, 1)


def test_cli_schemes_match_the_module():
    from difforge.cli.video import SCHEMES as CLI_SCHEMES

    assert CLI_SCHEMES == SCHEMES


@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    out, _ = train_tiny_video(tmp_path_factory.mktemp("long"), steps=1, batch=2, sample_every=0, timesteps=20,
                              n_train=8, n_test=4)
    return out


def test_long_video_from_a_trained_model_keeps_given_frames(video_model):
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(video_model)
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(1, 1, 24, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(24, dtype=torch.bool)
    mask[[0, 1, 23]] = True
    video = sample_long_video(pipe, 24, 1, scheme="hierarchical", context=8, given=truth, mask=mask, steps=1,
                              cfg=1)
    assert video.shape == (1, 1, 24, 32, 32) and torch.equal(video[:, :, mask], truth[:, :, mask])
    assert video.abs().max() <= 1


def test_cli_samples_a_long_video(video_model, tmp_path, capsys):
    from difforge.io.video import read_video

    dest = tmp_path / "long.gif"
    code = run(["sample-video", str(video_model), "--out", str(dest), "--frames", "20", "--steps", "1",
                "--scheme", "hierarchical", "--context", "4", "--given", "first:2", "--no-progress"])
    assert code == 0
    assert "20 frames, frames [0, 1] given; hierarchical, 3 window(s) of 16" in capsys.readouterr().out
    assert read_video(dest).shape[0] == 20
    code = run(["sample-video", str(video_model), "--out", str(dest), "--frames", "24", "--steps", "1",
                "--no-progress"])
    assert code == 0 and "autoregressive, 2 window(s) of 16" in capsys.readouterr().out
    assert read_video(dest).shape[0] == 24


@pytest.mark.parametrize("args, message", [
    (["--frames", "8"], "makes clips of 16 frames"),
    (["--frames", "32", "--context", "16"], "context 16: must be in 1..15"),
    (["--frames", "32", "--given", "frames:3,20"], "the built-in held-out clips have 16 frames"),
])
def test_cli_long_video_errors(video_model, tmp_path, capsys, args, message):
    code = run(["sample-video", str(video_model), "--out", str(tmp_path / "c.gif"), "--steps", "1",
                "--no-progress"] + args)
    err = capsys.readouterr().err
    assert code != 0 and message in err and not (tmp_path / "c.gif").exists()
