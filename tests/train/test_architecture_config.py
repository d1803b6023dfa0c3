"""`model.architecture` in a YAML config: the preset's network with other keyword
arguments, recorded in the model card, so that sampling, export and resume rebuild it."""

import pytest
import torch

from cli_runner import run
from difforge.models import build_model
from difforge.pipeline import load_pipeline

CONFIG = """
out: {out}
data: {{dataset: digits}}
model:
  preset: tiny
  architecture:
    base_channels: 4
    channel_mults: [1, 2, 2]   # tiny has (1, 2): a third level, so sizes must divide by 4
    attention_levels: [2]
train: {{max_steps: 2, batch_size: 16, sample_every: 0, checkpoint_every: 0, final_grid: false}}
"""


def test_a_yaml_architecture_trains_samples_and_resumes(tmp_path):
    out = tmp_path / "run"
    (tmp_path / "c.yaml").write_text(CONFIG.format(out=out))
    assert run(["train", "--config", str(tmp_path / "c.yaml"), "--no-progress"]) == 0
    pipe = load_pipeline(out)
    kwargs = dict(pipe.card.architecture.kwargs)
    assert pipe.card.architecture.preset == "tiny"
    assert kwargs["base_channels"] == 4 and list(kwargs["channel_mults"]) == [1, 2, 2]
    assert list(kwargs["attention_levels"]) == [2] and kwargs["num_heads"] == 2  # the preset's, not overridden
    expected = build_model("tiny", in_channels=1, num_classes=10, kwargs=kwargs)
    got = pipe.model.net
    assert [tuple(p.shape) for p in got.parameters()] == [tuple(p.shape) for p in expected.parameters()]
    default = build_model("tiny", in_channels=1, num_classes=10)
    assert sum(p.numel() for p in got.parameters()) != sum(p.numel() for p in default.parameters())
    images, _ = pipe.generate(n=2, steps=2, labels=torch.tensor([0, 1]))
    assert images.shape == (2, 1, 8, 8)
    assert run(["train", "--out", str(out), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    assert dict(load_pipeline(out).card.architecture.kwargs) == kwargs  # resumed with the same network


def test_the_architecture_changes_the_size_the_data_is_padded_to(tmp_path):
    """tiny divides sizes by 2 (8x8 digits stay 8); with 4 levels it needs multiples of 8,
    and with 5 levels 16, so 8x8 digits are padded to 16."""
    out = tmp_path / "run"
    assert run(["train", "--dataset", "digits", "--model", "tiny", "--set",
                "model.architecture={channel_mults: [1, 1, 1, 1, 1], attention_levels: []}", "--max-steps", "1",
                "--batch-size", "8", "--sample-every", "0", "--no-final-grid", "--no-progress",
                "--out", str(out)]) == 0
    assert load_pipeline(out).card.image_size == 16


@pytest.mark.parametrize("architecture, message", [
    ("{in_channels: 3}", "['in_channels'] are not arguments of model 'tiny'"),
    ("{base_channels: 4, widths: [1]}", "['widths'] are not arguments of model 'tiny' (UNet)"),
])
def test_what_the_data_gives_or_the_network_lacks_is_refused_in_one_line(architecture, message, tmp_path, capsys):
    assert run(["train", "--dataset", "digits", "--model", "tiny", "--set", f"model.architecture={architecture}",
                "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
