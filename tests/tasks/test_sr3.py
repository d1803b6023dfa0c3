import pytest
import torch

from difforge import tasks
from difforge.models import build_model
from difforge.models.card import ModelCard
from difforge.models.conditioning import LowResImage, downsample, upsample_bicubic
from difforge.pipeline import load_pipeline


def test_training_and_sampling_conditions_agree_on_a_padded_model(make_sr_pipe):
    pipe = make_sr_pipe(size=8, native=6)
    g = torch.Generator().manual_seed(0)
    native = torch.rand(2, 1, 6, 6, generator=g) * 2 - 1
    x0 = tasks.common.to_model(pipe, native)  # what training sees
    at_sampling = tasks.common.to_model(pipe, upsample_bicubic(downsample(native, 2), 6))
    torch.testing.assert_close(pipe.card.conditioning.from_clean(x0, 6), at_sampling)


def test_sr3_upscale_shape_seed_and_errors(make_sr_pipe):
    pipe = make_sr_pipe()
    low = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a = tasks.upscale(pipe, low, 2, steps=5, seed=2)
    assert a.shape == (3, 1, 8, 8) and a.abs().max() <= 1
    assert torch.equal(a, tasks.upscale(pipe, low, 2, steps=5, seed=2))
    assert not torch.equal(a, tasks.upscale(pipe, low, 2, steps=5, seed=3))
    with pytest.raises(ValueError, match="upscales x2, not x4"):
        tasks.upscale(pipe, low, 4)
    with pytest.raises(ValueError, match="must be \\(N, C, 4, 4\\)"):
        tasks.upscale(pipe, torch.zeros(1, 1, 8, 8), 2)
    with pytest.raises(ValueError, match="super-resolution model: use `difforge upscale`"):
        pipe.generate(2)


def test_unet_refuses_a_missing_condition_image():
    net = build_model("tiny", in_channels=1, num_classes=None, cond_channels=1)
    with pytest.raises(ValueError, match="needs a conditioning image"):
        net(torch.zeros(1, 1, 8, 8), torch.zeros(1), None)
    with pytest.raises(ValueError, match="cannot take a conditioning image"):
        build_model("unet-seed", in_channels=1, num_classes=None, cond_channels=1)


def test_train_superres_then_upscale(tmp_path):
    from difforge.cli import main

    out = tmp_path / "sr"
    try:
        main(["train", "--dataset", "digits", "--model", "tiny", "--task", "superres", "--scale", "2",
              "--max-steps", "2", "--batch-size", "8", "--sample-every", "0", "--no-progress", "--out", str(out)])
    except SystemExit as e:
        assert e.code == 0
    card = ModelCard.load(out / "model.json")
    assert card.task == "superres" and card.conditioning == LowResImage(2)
    assert card.network_kwargs() == {"num_classes": None, "cond_channels": 1} and card.class_names is None
    assert (out / "samples" / "final.png").is_file()  # the preview grid: truth, low-res, upscaled
    pipe = load_pipeline(out)
    y = tasks.upscale(pipe, torch.zeros(2, 1, 4, 4), 2, steps=3)
    assert y.shape == (2, 1, 8, 8)
