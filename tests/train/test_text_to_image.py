"""Text-to-image end to end on a tiny captioned folder: training with caption dropout,
resuming bit for bit, the model card, sampling from prompts (Python and CLI), negative
prompts, and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from captioned_squares import write_captioned_squares
from cli_runner import run
from difforge.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from difforge.defaults import DEFAULT_CFG_TEXT
from difforge.models.card import ModelCard
from difforge.pipeline import load_pipeline
from difforge.train.checkpoint import find_resumable
from difforge.train.loop import train


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """16 RGB 8x8 squares, each a colour and a caption naming it (metadata.jsonl)."""
    return write_captioned_squares(tmp_path_factory.mktemp("captioned"))


def _cfg(data, out, encoder="scratch", **train_kw):
    t = dict(max_steps=4, batch_size=8, checkpoint_every=0, sample_every=0, log_every=1, ema_warmup=1, lr=1e-3,
             device="cpu", final_grid=False)
    t.update(train_kw)
    return RunConfig(data=DataConfig(dataset="folder", path=str(data), val_fraction=0.25),
                     model=ModelConfig(preset="tiny", text_encoder=encoder, caption_dropout=0.2, max_tokens=32),
                     train=TrainConfig(**t), out=str(out))


def _weights(run):
    ckpt, _ = find_resumable(run / "checkpoints")
    return load_file(ckpt / "model.safetensors")


def test_a_text_model_trains_resumes_bit_for_bit_and_records_its_card(captioned, tmp_path):
    train(_cfg(captioned, tmp_path / "a"), progress=False)
    train(_cfg(captioned, tmp_path / "b"), progress=False, stop_after=2)
    train(_cfg(captioned, tmp_path / "b"), resume=True, progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("text_encoder.") for k in a)  # the scratch encoder trains with the UNet
    card = ModelCard.load(tmp_path / "a" / "model.json")
    assert card.conditioning.to_dict() == {"kind": "text", "encoder": "scratch", "max_tokens": 32, "width": 128,
                                           "layers": 2, "heads": 4}
    assert card.num_classes is None and card.class_names is None
    assert set(card.prompts) <= {"a red square", "a blue square"}
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r and np.isfinite(r["val_loss"]) for r in rows)


def test_caption_dropout_changes_training_and_zero_dropout_differs(captioned, tmp_path):
    """Dropout draws from the training generator: p = 0 and p = 0.2 train differently."""
    cfg = _cfg(captioned, tmp_path / "p0", max_steps=2)
    train(RunConfig(data=cfg.data, model=ModelConfig(preset="tiny", text_encoder="scratch", caption_dropout=0.0,
                                                     max_tokens=32), train=cfg.train, out=cfg.out), progress=False)
    train(_cfg(captioned, tmp_path / "p2", max_steps=2), progress=False)
    a, b = _weights(tmp_path / "p0"), _weights(tmp_path / "p2")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_prompts_sample_in_python_and_the_cli(captioned, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(_cfg(captioned, run_dir, max_steps=2), progress=False)
    pipe = load_pipeline(run_dir)
    assert pipe.takes_text and pipe.default_cfg == DEFAULT_CFG_TEXT
    images, labels = pipe.generate(prompts=["a red square", "a blue square"], sampler="ddim", steps=3, seed=1)
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.uint8 and labels is None
    # image i depends on its own prompt and seed only: alone it is the same image
    alone, _ = pipe.generate(prompts=["a blue square"], sampler="ddim", steps=3, seeds=[2])
    assert torch.equal(alone[0], images[1])
    negative, _ = pipe.generate(prompts=["a red square"], sampler="ddim", steps=3, seed=1,
                                negative_prompt="a blue square")
    assert negative.shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="over the scratch limit|tokens"):
        pipe.generate(prompts=["x" * 100], steps=2)
    with pytest.raises(ValueError, match="prompts, not class labels"):
        pipe.generate(prompts=["a"], labels=torch.tensor([0]), steps=2)

    (tmp_path / "prompts.txt").write_text("a red square\n\na blue square\n")
    code = run(["sample", str(run_dir), "--prompts-file", str(tmp_path / "prompts.txt"), "--n", "6", "--steps", "2",
                "--negative-prompt", "a blue square", "--out", str(tmp_path / "grid.png"), "--no-progress"])
    assert code == 0, capsys.readouterr()
    w, h = Image.open(tmp_path / "grid.png").size
    assert w > h  # one row of 3 per prompt
    assert run(["sample", str(run_dir), "--prompt", "a red square", "--class", "0", "--out", str(tmp_path / "x.png")])
    assert "do not apply" in capsys.readouterr().err


def test_prompts_on_a_class_model_and_a_text_encoder_without_captions_are_one_line_errors(tmp_path, capsys):
    cfg = RunConfig(data=DataConfig(dataset="digits", val_fraction=0.0),
                    model=ModelConfig(preset="tiny", text_encoder="scratch"),
                    train=TrainConfig(max_steps=1, batch_size=8, device="cpu", final_grid=False), out=str(tmp_path))
    with pytest.raises(ConfigError, match="needs captions"):
        train(cfg, progress=False)
    assert run(["train", "--dataset", "digits", "--text-encoder", "bert", "--out", str(tmp_path / "x")])
    assert "bert" in capsys.readouterr().err
