"""Joint image-video training (train.joint_images): rows of unrelated frames pass the
space-time UNet's temporal layers untouched, the trainer fills them with frames of the row's
class, and the configuration refuses the networks and data it cannot apply to."""

import pytest
import torch

from difforge.config import ConfigError, config_from_dict
from difforge.data.batches import IndependentFrames
from difforge.io.space import to_model_input
from difforge.models import build_model
from difforge.models.frames import FrameCond
from difforge.train import distributed
from difforge.train.trainer import Trainer
from video_helpers import tiny_fashion


def _net(preset="stunet-space-down", patch_size=1):
    torch.manual_seed(0)
    net = build_model(preset, in_channels=1, num_classes=3, cond_channels=2,
                      kwargs=dict(base_channels=8, channel_mults=(1, 2), attention_levels=(1,), num_heads=2,
                                  time_down=preset != "stunet-space-down", patch_size=patch_size))
    for p in net.parameters():  # the output conv and the position biases start at zero: make them act
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.3)
    return net.eval()


def _cond(independent, t=6):
    b = len(independent)
    return FrameCond(torch.zeros(b, t, dtype=torch.bool), None, torch.arange(b) % 3, torch.tensor(independent))


@pytest.mark.parametrize("patch_size", [1, 2])
def test_an_independent_row_is_its_frames_one_by_one(patch_size):
    net, x, sigma = _net(patch_size=patch_size), torch.randn(2, 1, 6, 8, 8), torch.tensor([0.7, 3.0])
    with torch.no_grad():  # tolerance 1e-4: batching reorders float32 sums, ~3e-5 after the test's large weights
        row = net(x, sigma, _cond([True, False]))
        for t in range(6):  # each frame alone, as a one-frame row: the same output
            alone = net(x[:1, :, t:t + 1], sigma[:1], FrameCond(torch.zeros(1, 1, dtype=torch.bool), None,
                                                                 torch.tensor([0]), torch.tensor([True])))
            torch.testing.assert_close(row[:1, :, t:t + 1], alone, atol=1e-4, rtol=1e-4)
        clip_alone = net(x[1:], sigma[1:], FrameCond(torch.zeros(1, 6, dtype=torch.bool), None, torch.tensor([1])))
    torch.testing.assert_close(row[1:], clip_alone, atol=1e-4, rtol=1e-4)  # no leak into the clip row


@pytest.mark.parametrize("patch_size", [1, 2])
def test_only_clip_rows_mix_frames(patch_size):
    net, x = _net(patch_size=patch_size), torch.randn(2, 1, 6, 8, 8)
    y = x.clone()
    y[:, :, 0] += 1.0  # change frame 0 of both rows
    with torch.no_grad():
        a, b = net(x, torch.ones(2), _cond([True, False])), net(y, torch.ones(2), _cond([True, False]))
    change = (a - b).abs().amax(dim=(1, 3, 4))  # (rows, T)
    assert change[0, 0] > 1e-3 and change[0, 1:].max() == 0  # the independent row: frame 0 only
    assert change[1, 1:].min() > 1e-4  # the clip: every frame


def test_a_time_down_network_refuses_independent_rows():
    net = build_model("stunet-tiny", in_channels=1, num_classes=3, cond_channels=2)
    with pytest.raises(ValueError, match="temporal down-sampling"):
        net(torch.randn(2, 1, 4, 16, 16), torch.ones(2), _cond([True, False], t=4))
    net(torch.randn(2, 1, 4, 16, 16), torch.ones(2), _cond([False, False], t=4))  # clips only: fine


def test_frame_cond_carries_independent_rows():
    a = _cond([True, False])
    b = FrameCond(torch.ones(1, 6, dtype=torch.bool), torch.zeros(1, 1, 6, 8, 8), torch.tensor([2]))
    both = FrameCond.cat([a, b])
    assert both.independent.tolist() == [True, False, False]
    assert both[0:1].independent.tolist() == [True]
    assert both[torch.tensor([2, 0])].independent.tolist() == [False, True]
    assert a.observe(torch.randn(2, 1, 6, 8, 8)).independent.tolist() == [True, False]
    assert FrameCond.cat([b, b]).independent is None
    with pytest.raises(ValueError, match=r"independent must be \(2,\)"):
        FrameCond(torch.zeros(2, 6), None, None, torch.tensor([True]))


def test_independent_frames_come_from_clips_of_the_row_class():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    clips = torch.arange(8 * 5, dtype=torch.float32).view(8, 1, 5, 1, 1)  # clip i frame t holds 5 i + t
    frames = IndependentFrames(labels, 8, 5)
    want = torch.tensor([2, 0, 1, 1])
    clip, frame = frames.draw(want, 4, torch.Generator().manual_seed(3))
    again = frames.draw(want, 4, torch.Generator().manual_seed(3))
    assert torch.equal(clip, again[0]) and torch.equal(frame, again[1])
    assert (labels[clip] == want[:, None]).all()
    rows = IndependentFrames.gather(clips, clip, frame)
    assert rows.shape == (4, 1, 5, 1, 1)
    assert torch.equal(rows.flatten(1), (5 * clip + frame).float())
    assert len(set(clip.flatten().tolist())) > 3  # drawn, not one clip repeated
    anyclip, _ = IndependentFrames(None, 8, 5).draw(None, 50, torch.Generator().manual_seed(0))
    assert anyclip.min() >= 0 and anyclip.max() <= 7 and len(anyclip.unique()) == 8


def _config(tmp_path, **over):
    d = {"out": str(tmp_path / "run"),
         "data": {"dataset": "moving-fashion-mnist", "path": str(tiny_fashion(tmp_path / "fm", 40, 10))},
         "model": {"preset": "stunet-space-down", "label_dropout": 0.0,
                   "architecture": {"base_channels": 8, "channel_mults": [1, 2], "attention_levels": [1]}},
         "train": {"batch_size": 8, "max_steps": 2, "joint_images": 0.5}}
    for section, values in over.items():
        d[section] = {**d.get(section, {}), **values}
    return config_from_dict(d)


def test_the_trainer_fills_the_first_rows_with_frames_of_their_class(tmp_path):
    cfg = _config(tmp_path)
    t = Trainer(cfg, tmp_path / "run", distributed.world_from_env({}), torch.device("cpu"), None, progress=False,
                stop_after=None)
    t.load_data()
    t.describe_model()
    t.build()
    x0, cond, n = t.batch()
    assert n == 8 and cond.independent.tolist() == [True] * 4 + [False] * 4
    assert not cond.mask[:4].any()  # nothing observed in the rows of unrelated frames
    clips = to_model_input(t.train_set.images, 32)
    for i in range(4, 8):  # the clip rows: a training clip of the row's class, frame for frame
        same = (clips - x0[i][None]).abs().amax(dim=(1, 2, 3, 4)) == 0
        assert (t.train_set.labels[same] == cond.labels[i]).any(), i
    for i in range(4):  # the rows of unrelated frames: every frame one of a training clip of the row's class
        owners = []
        for f in range(clips.shape[2]):
            hits = (clips - x0[i, :, f][None, :, None]).abs().amax(dim=(1, 3, 4)) == 0  # (N, T)
            owner = set(hits.any(dim=1).nonzero().flatten().tolist())
            assert owner and (t.train_set.labels[sorted(owner)] == cond.labels[i]).any(), (i, f)
            owners.append(owner)
        if (t.train_set.labels == cond.labels[i]).sum() > 1:  # from several clips of the class, not one clip's
            assert not set.intersection(*owners), i


@pytest.mark.parametrize("over, message", [
    ({"model": {"preset": "stunet"}, "train": {"joint_images": 0.5}}, "temporal down-sampling"),
    ({"model": {"preset": "rvd"}}, "temporal down-sampling"),
    ({"train": {"joint_images": 1.0}}, r"must be in \[0, 1\)"),
    ({"data": {"dataset": "fashion-mnist"}, "model": {"preset": "unet"}}, "video data only"),
])
def test_joint_images_is_refused_where_it_cannot_apply(tmp_path, over, message):
    if "model" in over:  # the preset's own architecture
        over["model"] = {**over["model"], "architecture": None}
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **over)


def _pipeline(preset="stunet-space-down"):
    from difforge.diffusion.frameworks import FrameworkSpec
    from difforge.models.card import Architecture, ModelCard
    from difforge.models.conditioning import VideoFrames
    from difforge.pipeline import Pipeline

    kwargs = dict(base_channels=8, channel_mults=(1, 2), attention_levels=(1,), num_heads=2,
                  time_down=preset != "stunet-space-down")
    card = ModelCard(Architecture(preset, kwargs), 8, 8, 1, FrameworkSpec(framework="edm"), None,
                     VideoFrames(4, 3), ("a", "b", "c"))
    torch.manual_seed(0)
    den = card.denoiser()
    for p in den.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.3)
    return Pipeline(den.eval(), card)


def test_per_frame_sampling_keeps_frames_apart_in_both_branches_of_guidance():
    pipe = _pipeline()
    x = torch.randn(1, 1, 4, 8, 8)
    y = x.clone()
    y[:, :, 0] += 1.0
    labels = torch.tensor([1])
    for per_frame in (True, False):
        cond = FrameCond(torch.zeros(1, 4, dtype=torch.bool), None, labels, torch.tensor([per_frame]))
        den = pipe.video_denoiser(3.0, per_frame=per_frame)  # the null branch is per frame too, or not
        with torch.no_grad():
            change = (den(x, torch.tensor([2.0]), cond=cond) - den(y, torch.tensor([2.0]), cond=cond)).abs()
        later = change[:, :, 1:].max()
        assert later == 0 if per_frame else later > 1e-4
    clips = pipe.sample_video(2, labels, per_frame=True, steps=3, seed=1)
    assert clips.shape == (2, 1, 4, 8, 8) and torch.isfinite(clips).all()
    again = pipe.sample_video(2, labels, per_frame=True, steps=3, seed=1)
    torch.testing.assert_close(clips, again)
    assert (clips - pipe.sample_video(2, labels, steps=3, seed=1)).abs().max() > 1e-3  # the temporal layers act


def test_per_frame_sampling_is_refused_where_it_cannot_apply():
    from difforge.models.frames import parse_given

    with pytest.raises(ValueError, match="temporal down-sampling"):
        _pipeline("stunet-tiny").sample_video(1, per_frame=True, steps=2)
    with pytest.raises(ValueError, match="no frames can be given"):
        _pipeline().sample_video(1, per_frame=True, steps=2, given=torch.zeros(1, 1, 4, 8, 8),
                                 mask=parse_given("first:1", 4))
