"""The CLI through `main(argv)`: train -> sample -> export round trip, help, clear errors."""

import json

import numpy as np
import pytest
import torch

from difforge.cli import main


def run(argv):
    """Run the CLI in-process; return its exit code."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    code = run(["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "8", "--batch-size", "16",
                "--sample-every", "4", "--checkpoint-every", "4", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_run_directory_layout(tiny_run):
    assert (tiny_run / "config.yaml").is_file()
    assert (tiny_run / "model.json").is_file()
    assert (tiny_run / "samples" / "final.png").is_file()
    assert (tiny_run / "samples" / "step-0000004-ema.png").is_file()
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == ["latest", "step-4", "step-8"]
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in rows) and any("loss" in r and "lr" in r for r in rows)


def test_sample_npz_native_size_and_labels(tiny_run, tmp_path):
    npz = tmp_path / "s.npz"
    code = run(["sample", str(tiny_run), "--classes", "3,7", "--n", "4", "--steps", "5",
                "--out", str(tmp_path / "s.png"), "--npz", str(npz), "--device", "cpu"])
    assert code == 0
    data = np.load(npz)
    assert data["images"].shape == (4, 8, 8, 1) and data["images"].dtype == np.uint8
    assert data["labels"].tolist() == [3, 3, 7, 7] and data["labels"].dtype == np.int64
    assert (tmp_path / "s.png").is_file()


def test_export_round_trip_samples_identically(tiny_run, tmp_path):
    assert run(["export", str(tiny_run), "--out", str(tmp_path / "m")]) == 0
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["step"] == 8 and cfg["weights"] == "ema" and cfg["class_names"][0] == "0"
    for src, name in ((tiny_run, "a"), (tmp_path / "m", "b")):
        assert run(["sample", str(src), "--class", "5", "--n", "3", "--steps", "4", "--seed", "9",
                    "--out", str(tmp_path / f"{name}.png"), "--npz", str(tmp_path / f"{name}.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert np.array_equal(a["images"], b["images"])


def test_ddpm_sampler_and_no_ema(tiny_run, tmp_path):
    assert run(["sample", str(tiny_run), "--sampler", "ddpm", "--steps", "20", "--no-ema", "--class", "0",
                "--n", "2", "--out", str(tmp_path / "d.png")]) == 0


def test_help_everywhere(capsys):
    assert run(["--help"]) == 0
    text = capsys.readouterr().out
    for cmd in ("train", "sample", "export"):
        assert cmd in text
        assert run([cmd, "--help"]) == 0
        assert "Usage: difforge " + cmd in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/no/such/dir", "--out", "{tmp}/x"], "no such file or directory"),
        (["train", "--dataset", "digits", "--model", "huge", "--out", "{tmp}/x"], "unknown model 'huge'"),
        (["train", "--dataset", "digits", "--schedule", "quadratic", "--out", "{tmp}/x"], "'quadratic' is not one of"),
        (["train", "--dataset", "digits", "--batch-size", "100000", "--model", "tiny", "--out", "{tmp}/x"],
         "larger than the training set"),
    ],
)
def test_clear_errors(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run(argv) != 0
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("klass, message", [("12", "class 12 out of range"), ("Sneaker", "unknown class 'Sneaker'")])
def test_wrong_class(tiny_run, tmp_path, capsys, klass, message):
    assert run(["sample", str(tiny_run), "--class", klass, "--out", str(tmp_path / "x.png")]) != 0
    assert message in capsys.readouterr().err


def test_sample_missing_model(tmp_path, capsys):
    assert run(["sample", str(tmp_path / "nothing")]) != 0
    assert "no such run or model directory" in capsys.readouterr().err


def test_seed_independent_of_batch_size(tiny_run):
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(tiny_run)
    labels = torch.tensor([1, 2, 3, 4])
    a, _ = pipe.generate(labels=labels, steps=5, seed=3, batch_size=4)
    b, _ = pipe.generate(labels=labels, steps=5, seed=3, batch_size=1)
    c, _ = pipe.generate(labels=labels[2:], steps=5, seed=5, batch_size=2)
    assert (a.int() - b.int()).abs().max() <= 1
    assert (a[2:].int() - c.int()).abs().max() <= 1
