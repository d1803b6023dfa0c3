"""`difforge train-classifier` and `difforge evaluate` end to end on a tiny digits model."""

import json

import numpy as np
import pytest
import torch

from cli_runner import run
from difforge.defaults import DEFAULT_CFG, DEFAULT_CFG_INTERVAL

REPORT_KEYS = {"format", "n", "floor_n", "data", "sampling", "protocol", "classifier", "inception", "metrics",
               "floor", "per_class", "cfg_sweep"}
SUITE_KEYS = {"fd", "kid", "kid_std", "precision", "recall", "classifier_score", "conditional_accuracy"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny digits run and a quickly trained classifier in a private DIFFORGE_CACHE."""
    root = tmp_path_factory.mktemp("eval")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFORGE_CACHE", str(root / "cache"))
        assert run(["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "6", "--batch-size", "16",
                    "--sample-every", "0", "--checkpoint-every", "0", "--out", str(root / "run"),
                    "--no-progress"]) == 0
        assert run(["train-classifier", "--dataset", "digits", "--epochs", "10", "--device", "cpu"]) == 0
    assert (root / "cache" / "classifiers" / "digits" / "classifier.json").is_file()
    return root


@pytest.fixture
def cache(setup, monkeypatch):
    monkeypatch.setenv("DIFFORGE_CACHE", str(setup / "cache"))
    return setup


def test_evaluate_writes_the_report(cache, tmp_path, capsys):
    out = tmp_path / "ev"
    assert run(["evaluate", str(cache / "run"), "--n", "20", "--steps", "3", "--cfg-sweep", f"1,{DEFAULT_CFG}",
                "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "classifier: FD" in text and "floor" in text and "inception: skipped" in text
    r = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(r)
    assert r["n"] == 20 and r["floor_n"] == 20 and r["data"]["reference_split"] == "val"
    assert SUITE_KEYS <= set(r["metrics"]["classifier"]) and SUITE_KEYS <= set(r["floor"]["classifier"])
    assert 0 < r["classifier"]["test_accuracy"] <= 1 and r["inception"]["status"].startswith("skipped")
    assert r["sampling"]["steps"] == 3 and r["sampling"]["cfg"] == DEFAULT_CFG
    assert r["sampling"]["cfg_interval"] == list(DEFAULT_CFG_INTERVAL)
    assert [row["n"] for row in r["per_class"]] == [2] * 10
    assert [row["cfg"] for row in r["cfg_sweep"]] == [1.0, DEFAULT_CFG]
    assert r["cfg_sweep"][1]["fd"] == pytest.approx(r["metrics"]["classifier"]["fd"])  # the default reuses the samples
    # the floor is real data: it beats an 6-step model
    assert r["floor"]["classifier"]["fd"] < r["metrics"]["classifier"]["fd"]
    md = (out / "report.md").read_text()
    assert f"guidance {DEFAULT_CFG:g} at sigma in [{DEFAULT_CFG_INTERVAL[0]:g}, {DEFAULT_CFG_INTERVAL[1]:g}]" in md
    assert "N = 20" in md and "real-vs-real floor" in md and "accuracy" in md
    for png in ("samples.png", "per_class_fd.png", "cfg_sweep.png"):
        assert (out / png).stat().st_size > 0


def test_evaluate_an_npz_of_samples(cache, tmp_path):
    npz = tmp_path / "s.npz"
    assert run(["sample", str(cache / "run"), "--n", "10", "--steps", "3", "--out", str(tmp_path / "s.png"),
                "--npz", str(npz), "--device", "cpu"]) == 0
    assert run(["evaluate", "--npz", str(npz), "--dataset", "digits", "--out", str(tmp_path / "ev"),
                "--no-progress"]) == 0
    r = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert r["n"] == 10 and r["sampling"] is None and r["model"] is None and len(r["per_class"]) == 10


def test_reference_statistics_are_cached_saved_and_reused(cache, tmp_path, capsys):
    """FD against --reference (the statistics --save-reference wrote) equals FD against the
    reference split itself; the cache holds the same statistics; other statistics are refused."""
    npz = tmp_path / "s.npz"
    assert run(["sample", str(cache / "run"), "--n", "10", "--steps", "3", "--out", str(tmp_path / "s.png"),
                "--npz", str(npz), "--device", "cpu"]) == 0
    base = ["evaluate", "--npz", str(npz), "--dataset", "digits", "--no-progress", "--no-memorization"]
    saved = tmp_path / "ref.npz"
    assert run([*base, "--out", str(tmp_path / "a"), "--save-reference", str(saved)]) == 0
    assert run([*base, "--out", str(tmp_path / "b"), "--reference", str(saved)]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert b["metrics"]["classifier"]["fd"] == a["metrics"]["classifier"]["fd"]
    assert b["floor"]["classifier"]["fd"] == a["floor"]["classifier"]["fd"]
    assert b["classifier"]["fd_reference"] == str(saved)
    cached = a["classifier"]["fd_reference"]
    assert cached.startswith(str(cache / "cache" / "references" / "digits-val-"))
    ref, again = np.load(saved), np.load(cached)
    assert np.array_equal(ref["mu"], again["mu"]) and np.array_equal(ref["sigma"], again["sigma"])
    assert (ref["mu"].shape == (128,) and ref["sigma"].shape == (128, 128)
            and int(ref["n"]) == a["data"]["reference_count"])
    np.savez(tmp_path / "other.npz", mu=np.zeros(4), sigma=np.eye(4))
    capsys.readouterr()
    assert run([*base, "--out", str(tmp_path / "c"), "--reference", str(tmp_path / "other.npz")]) == 1
    assert "holds 4-dimensional statistics; the classifier's features have 128" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", mean=np.zeros(4))
    assert run([*base, "--out", str(tmp_path / "d"), "--reference", str(tmp_path / "bad.npz")]) == 1
    assert "expected arrays 'mu' and 'sigma'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_inception_from_a_torchscript_file(cache, tmp_path):
    class FakeInception(torch.nn.Module):  # NVIDIA's calling convention, tiny
        def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
            f = torch.nn.functional.adaptive_avg_pool2d(img / 255, 2).flatten(1)  # (N, 12)
            return f if return_features else torch.softmax(f[:, :4] * 10, dim=1)

    path = tmp_path / "inception.pt"
    torch.jit.script(FakeInception()).save(str(path))
    data = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", images=data)
    assert run(["evaluate", "--npz", str(tmp_path / "x.npz"), "--dataset", "digits", "--inception", str(path),
                "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    r = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert r["inception"]["status"] == "computed"
    assert {"fd", "kid", "precision", "recall", "inception_score"} <= set(r["metrics"]["inception"])
    assert "conditional_accuracy" not in r["metrics"]["classifier"] and r["per_class"] == []  # no labels


@pytest.mark.parametrize(
    "args, message",
    [
        (["{run}", "--n", "1"], "need at least 2 images"),
        (["--npz", "{tmp}/bad.npz", "--dataset", "digits"], "images must be uint8 (N, H, W, C)"),
        (["--npz", "{tmp}/big.npz", "--dataset", "digits"], "generated images are 1x28x28 but the real ones 1x8x8"),
        (["--npz", "{tmp}/none.npz", "--dataset", "digits"], "no such file"),
        (["{run}", "--inception", "{tmp}/missing.pt"], "no such file (difforge never downloads weights)"),
        (["{run}", "--inception", "{tmp}/state.pt"], "not a TorchScript module"),
        (["{run}", "--cfg-sweep", "1,x"], "comma-separated numbers"),
        (["--npz", "{tmp}/bad.npz"], "say which data to compare with"),
        ([], "give a MODEL_DIR, or --npz FILE"),
    ],
)
def test_clear_errors(cache, tmp_path, capsys, args, message):
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 8, 8), np.uint8))
    np.savez(tmp_path / "big.npz", images=np.zeros((4, 28, 28, 1), np.uint8))
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")
    argv = [a.replace("{run}", str(cache / "run")).replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "give a MODEL_DIR" in message else ["--out", str(tmp_path / "ev")]
    assert run(["evaluate", *argv, *out, "--steps", "2", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_train_classifier_errors(tmp_path, capsys):
    assert run(["train-classifier", "--data", str(tmp_path / "nothing")]) != 0
    assert "no such file or directory" in capsys.readouterr().err
    assert run(["train-classifier", "--dataset", "digits", "--epochs", "0", "--out", str(tmp_path)]) != 0
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_bits_per_dim_and_classifier_training_show_progress_bars(cache, tmp_path, capsys):
    """Bits/dim and classifier training had no progress bar; --no-progress turns both off,
    bits/dim then logging its batches instead."""
    base = ["evaluate", str(cache / "run"), "--n", "4", "--steps", "2", "--bpd", "3", "--bpd-timesteps", "2",
            "--no-memorization", "--device", "cpu"]
    capsys.readouterr()
    assert run([*base, "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert "bits/dim (VLB): 100%" in captured.err and "3/3" in captured.err
    assert "bits/dim (VLB): 3/3 images" not in captured.out  # the bar replaces the log line
    assert run([*base, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "bits/dim (VLB): 3/3 images" in captured.out
    clf = ["train-classifier", "--dataset", "digits", "--epochs", "2", "--batch-size", "512", "--device", "cpu"]
    assert run([*clf, "--out", str(tmp_path / "clf1")]) == 0
    assert "classifier: 100%" in capsys.readouterr().err  # a bar over the steps of both epochs
    assert run([*clf, "--out", str(tmp_path / "clf2"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
