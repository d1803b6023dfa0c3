"""The moving-fashion-mnist clips: deterministic, garments inside the frame, exact positions."""

import pytest
import torch

from difforge.config import DataConfig
from difforge.data import ImageDataset, load_dataset
from difforge.data.dataset import VideoDataset
from difforge.data.moving import SIDE, SIZE, bounce, moving_clips, render
from video_helpers import tiny_fashion


def _source(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return ImageDataset(images, torch.arange(n) % 10, [str(i) for i in range(10)])


def test_bounce_reflects_at_the_edges():
    pos = bounce(torch.tensor([[15, 1]]), torch.tensor([[2, -2]]), 5, 16)
    # row: 15, 17 -> 15 (v -2), 13, 11, 9; column: 1, -1 -> 1 (v +2), 3, 5, 7
    assert pos[0].tolist() == [[15, 1], [15, 1], [13, 3], [11, 5], [9, 7]]


def test_render_matches_pasting_with_maximum():
    g = torch.Generator().manual_seed(1)
    sprites = torch.randint(0, 256, (6, 2, SIDE, SIDE), generator=g, dtype=torch.uint8)
    pos = torch.randint(0, SIZE - SIDE + 1, (6, 2, 4, 2), generator=g)
    ref = torch.zeros(6, 1, 4, SIZE, SIZE, dtype=torch.uint8)
    for i in range(6):
        for k in range(2):
            for t in range(4):
                y, x = pos[i, k, t].tolist()
                box = ref[i, 0, t, y : y + SIDE, x : x + SIDE]
                ref[i, 0, t, y : y + SIDE, x : x + SIDE] = torch.maximum(box, sprites[i, k])
    assert torch.equal(render(sprites, pos), ref)


def test_clips_are_deterministic_and_stay_in_frame():
    src = _source()
    a, b = moving_clips(src, 40, seed=3), moving_clips(src, 40, seed=3)
    assert isinstance(a, VideoDataset) and a.images.shape == (40, 1, 16, SIZE, SIZE) and a.frames == 16
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.trajectories.nan_to_num(-7), b.trajectories.nan_to_num(-7))
    assert not torch.equal(a.images, moving_clips(src, 40, seed=4).images)
    tr = a.trajectories
    present = ~tr.isnan()
    assert (tr[present] >= 0).all() and (tr[present] <= SIZE - SIDE).all()
    steps = (tr[:, :, 1:] - tr[:, :, :-1]).abs()
    assert (steps[~steps.isnan()] <= 2).all()  # at most 2 px per frame per axis, bounces included
    # one or two garments; the second one's trajectory is NaN exactly when it is absent
    two = a.attributes["objects"] == 2
    assert present[:, 1].all(-1).all(-1).eq(two).all() and 0 < int(two.sum()) < 40
    assert ((a.attributes["second_class"] >= 0) == two).all()
    # nothing outside the garments' boxes
    for i in range(5):
        for t in range(16):
            inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
            for k in range(int(a.attributes["objects"][i])):
                y, x = tr[i, k, t].long().tolist()
                inside[y : y + SIDE, x : x + SIDE] = True
            assert (a.images[i, 0, t][~inside] == 0).all() and (a.images[i, 0, t][inside] > 0).any()


def test_label_is_the_first_garments_class():
    src = _source()
    clips = moving_clips(src, 20, seed=0)
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(len(src), (20, 2), generator=g)
    assert torch.equal(clips.labels, src.labels[pick[:, 0]])


def test_subset_keeps_trajectories_aligned():
    clips = moving_clips(_source(), 12, seed=0)
    sub = clips.subset([5, 2])
    assert torch.equal(sub.images, clips.images[[5, 2]])
    assert torch.equal(sub.trajectories.nan_to_num(-1), clips.trajectories[[5, 2]].nan_to_num(-1))
    with pytest.raises(ValueError, match="trajectories must be"):
        clips.replace(trajectories=clips.trajectories[:3])


def test_load_dataset_splits_clips(tmp_path):
    root = tiny_fashion(tmp_path / "fm")
    bundle = load_dataset(DataConfig(dataset="moving-fashion-mnist", path=str(root), val_fraction=0.25))
    assert bundle.native_size == SIZE and bundle.channels == 1 and bundle.num_classes == 10
    assert len(bundle.train) + len(bundle.val) == 48 and len(bundle.test) == 16
    assert bundle.train.images.shape[1:] == (1, 16, SIZE, SIZE)
    assert bundle.val.trajectories.shape == (len(bundle.val), 2, 16, 2)
    rgb = load_dataset(DataConfig(dataset="moving-fashion-mnist", path=str(root), channels=3))
    assert rgb.train.images.shape[1:] == (3, 16, SIZE, SIZE)
