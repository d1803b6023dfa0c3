"""Commands never write into (or delete) a folder of the user's own files, check output
paths before any work, and behave as a user expects when interrupted, resumed or given
odd input."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run

TINY = ["--dataset", "digits", "--model", "tiny", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert run(["train", *TINY, "--max-steps", "4", "--checkpoint-every", "0", "--sample-every", "0",
                "--out", str(out)]) == 0
    return out


@pytest.fixture
def user_folder(tmp_path):
    """A folder holding a user's picture, which no command may touch."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (5, 5), (200, 10, 10)).save(folder / "cat.png")
    return folder


def _sub(arg: str, subs: dict) -> str:
    for key, value in subs.items():
        arg = arg.replace(key, value)
    return arg


def _untouched(folder):
    assert sorted(p.name for p in folder.iterdir()) == ["cat.png"]
    assert np.asarray(Image.open(folder / "cat.png"))[0, 0].tolist() == [200, 10, 10]


@pytest.mark.parametrize("argv", [
    ["train-classifier", "--dataset", "digits", "--epochs", "1", "--out", "{user}"],
    ["train", *TINY, "--max-steps", "2", "--out", "{user}"],
    ["export", "{run}", "--out", "{user}"],
    ["evaluate", "{run}", "--n", "20", "--out", "{user}", "--classifier", "{tmp}/clf"],
    ["evaluate", "{run}", "--n", "20", "--out", "{tmp}/ev", "--classifier", "{user}"],
    ["report", "{run}", "--out", "{user}"],
    ["prepare", "{src}", "{user}"],
    ["inspect", "{src}", "--sheets", "{user}"],
], ids=["train-classifier", "train", "export", "evaluate-out", "evaluate-classifier", "report", "prepare", "inspect"])
def test_a_folder_of_user_files_is_refused_before_any_work(argv, user_folder, tiny_run, tmp_path, capsys):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(4):
        Image.new("L", (8, 8), 40 * i).save(src / "a" / f"{i}.png")
    subs = {"{user}": str(user_folder), "{run}": str(tiny_run), "{tmp}": str(tmp_path), "{src}": str(src)}
    argv = [_sub(a, subs) for a in argv]
    assert run(argv) != 0
    err = capsys.readouterr().err
    assert "not empty" in err and str(user_folder) in err and "Traceback" not in err
    _untouched(user_folder)
    assert not (tmp_path / "clf").exists() and not (tmp_path / "ev").exists()  # refused before any work


def test_our_own_folders_are_replaced_only_when_asked(tiny_run, tmp_path, capsys):
    out = tmp_path / "model"
    assert run(["export", str(tiny_run), "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert run(["export", str(tiny_run), "--out", str(out)]) != 0
    assert "pass --overwrite" in capsys.readouterr().err
    assert run(["export", str(tiny_run), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # replacing ours still deletes nothing else


def test_classifier_save_keeps_other_files(tmp_path):
    """The classifier writer replaced the whole folder (shutil.rmtree) before."""
    import torch

    from difforge.eval.classifier import DomainClassifier, DomainCNN

    folder = tmp_path / "clf"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    clf = DomainClassifier(DomainCNN(1, 3, (4, 4, 4), 8), {"format": "difforge-classifier"}, torch.device("cpu"))
    clf.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.json", "keep.txt", "model.safetensors"]


@pytest.mark.parametrize("argv, message", [
    (["sample", "{run}", "--n", "0"], "--n must be >= 1, got 0"),
    (["sample", "{run}", "--n", "-3"], "--n must be >= 1, got -3"),
    (["sample", "{run}", "--npz", "{tmp}/x.png", "--out", "{tmp}/g.png"], "--npz"),
    (["sample", "{run}", "--gif", "{tmp}/x.png", "--out", "{tmp}/g.png"], "--gif"),
    (["sample", "{run}", "--out", "{file}/g.png"], "is a file, not a folder"),
    (["sample", "{run}", "--out", "{tmp}"], "is a folder"),
    (["interpolate", "{run}", "--a", "{img}", "--b", "{img}", "--out", "{tmp}/x.png"],
     "expected a file ending in .gif"),
    (["restore", "{run}", "--image", "{img}", "--strength", "0.5", "--out", "{file}/r.png"],
     "is a file, not a folder"),
    (["train", "--dataset", "digits", "--data", "{tmp}", "--out", "{tmp}/r"], "disagree"),
])
def test_bad_arguments_fail_before_any_work(argv, message, tiny_run, tmp_path, capsys, monkeypatch):
    import difforge.pipeline

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(difforge.pipeline, "load_pipeline", no_loading)
    (tmp_path / "file").write_text("a file")
    Image.new("L", (8, 8)).save(tmp_path / "img.png")
    subs = {"{run}": str(tiny_run), "{tmp}": str(tmp_path), "{file}": str(tmp_path / "file"),
            "{img}": str(tmp_path / "img.png")}
    argv = [_sub(a, subs) for a in argv]
    assert run(argv) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.png.npz").exists()


@pytest.mark.parametrize("pixels, message", [(lambda a: a.fill(0), "is empty"), (lambda a: a.__setitem__((0, 0), 128),
                                                                                 "are grey")])
def test_inpaint_refuses_empty_and_grey_masks(pixels, message, tiny_run, tmp_path, capsys):
    Image.new("L", (8, 8), 30).save(tmp_path / "img.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    pixels(mask)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert run(["inpaint", str(tiny_run), "--image", str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"),
                "--steps", "5", "--out", str(tmp_path / "o.png")]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_few_steps_of_a_first_order_sde_sampler_warn(tiny_run, tmp_path, capsys):
    assert run(["sample", str(tiny_run), "--sampler", "reverse-sde", "--steps", "10", "--n", "2", "--no-progress",
                "--out", str(tmp_path / "s.png")]) == 0
    assert "reverse-sde at 10 steps leaves most of the noise" in capsys.readouterr().err
    assert run(["sample", str(tiny_run), "--sampler", "pc", "--snr", "0.05", "--corrector-steps", "2", "--steps", "3",
                "--n", "2", "--no-progress", "--out", str(tmp_path / "s.png")]) == 0
    assert run(["sample", str(tiny_run), "--sampler", "ddim", "--snr", "0.05", "--out", str(tmp_path / "s.png")]) != 0
    assert "--snr applies to" in capsys.readouterr().err


def test_small_training_set_trains_with_all_of_it(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(["train", *TINY[:-3], "--batch-size", "5000", "--max-steps", "1", "--no-final-grid",
                "--no-progress", "--out", str(out)]) == 0
    assert "fewer than the batch size 5000: training with batches of 1618" in capsys.readouterr().out
    from difforge.config import load_config

    assert load_config(out / "config.yaml").train.batch_size == 1618  # what --resume will use
    assert not (out / "samples" / "final.png").exists()  # --no-final-grid


def test_a_classifier_trains_on_a_labelled_folder_smaller_than_its_batch(tmp_path, capsys):
    """A user's folder of 24 labelled pictures (the classifier's batch is 128)."""
    import numpy as np
    from PIL import Image

    for k, name in enumerate(("dark", "light")):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((16, 16), 40 + 160 * k + i, np.uint8)).save(tmp_path / "pics" / name / f"{i}.png")
    out = tmp_path / "clf"
    assert run(["train-classifier", "--data", str(tmp_path / "pics"), "--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "fewer than the classifier's batch size 128: training with batches of" in printed.out + printed.err
    assert (out / "classifier.json").is_file() and (out / "model.safetensors").is_file()


def test_ctrl_c_exits_non_zero_with_a_checkpoint(tmp_path, monkeypatch):
    from difforge.data.batches import EpochBatches

    original = EpochBatches.batch

    def interrupted(self, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does; the loop finishes the step and checkpoints
        return original(self, step)

    monkeypatch.setattr(EpochBatches, "batch", interrupted)
    out = tmp_path / "r"
    assert run(["train", *TINY, "--max-steps", "10", "--out", str(out)]) == 128 + signal.SIGINT
    assert (out / "checkpoints" / "step-3").is_dir()


def test_resume_with_more_steps_extends_a_finished_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(["train", *TINY, "--max-steps", "4", "--sample-every", "0", "--out", str(out)]) == 0
    final = out / "samples" / "final.png"
    mtime = final.stat().st_mtime_ns
    assert run(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out and final.stat().st_mtime_ns == mtime  # not redrawn
    assert run(["train", "--out", str(out), "--resume", "--max-steps", "7", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "run length changed from 4 to 7 steps" in text and "done: 7 steps" in text
    steps = [json.loads(line).get("step") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 7
    assert (out / "checkpoints" / "step-7").is_dir()
    assert run(["train", "--out", str(out), "--resume", "--max-steps", "5", "--no-progress"]) != 0
    assert "already at step 7" in capsys.readouterr().err


def test_inspect_verify_says_so(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(6):
        Image.new("L", (8, 8), 30 * i).save(src / "a" / f"{i}.png")
    assert run(["prepare", str(src), str(tmp_path / "store"), "--no-progress"]) == 0
    assert run(["inspect", str(tmp_path / "store"), "--verify", "--no-progress"]) == 0
    assert "verified: every array" in capsys.readouterr().out
    # a second inspect replaces its own contact sheets (a folder holding only those)
    assert run(["inspect", str(tmp_path / "store"), "--no-progress"]) == 0


@pytest.mark.parametrize("flag, package", [("--wandb", "wandb"), ("--tensorboard", "tensorboard")])
def test_a_missing_logging_package_is_refused_before_the_run_folder(flag, package, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    out = tmp_path / "r"
    assert run(["train", *TINY, "--max-steps", "1", flag, "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert f"{flag} needs the {package} package" in err and "Traceback" not in err
    assert not out.exists()


def test_digits_without_scikit_learn_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if not installed
    assert run(["train", *TINY, "--max-steps", "1", "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err
    assert "needs scikit-learn" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, what", [
    (["--out", "{ro}/g.png"], "--out"),
    (["--out", "{tmp}/g.png", "--gif", "{ro}/s.gif"], "--gif"),
    (["--out", "{tmp}/g.png", "--npz", "{ro}/s.npz"], "--npz"),
    (["--out", "{tmp}/g.png", "--png-dir", "{ro}/pngs"], "--png-dir"),
    (["--out", "{ro}/deeper/g.png"], "--out"),
])
def test_an_unwritable_output_folder_is_one_line_before_any_work(argv, what, tiny_run, tmp_path, capsys,
                                                                   monkeypatch):
    """A read-only folder gave a traceback after the sampling; as root, whom permissions do
    not stop, os.access is made to answer as it does for other users."""
    import difforge.io.outputs as outputs
    import difforge.pipeline

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real_access = os.access
    monkeypatch.setattr(outputs.os, "access", lambda p, mode: False if Path(p) == ro and mode & os.W_OK
                        else real_access(p, mode))
    monkeypatch.setattr(difforge.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded before the check"))
    argv = [_sub(a, {"{ro}": str(ro), "{tmp}": str(tmp_path)}) for a in argv]
    try:
        assert run(["sample", str(tiny_run), "--n", "2", "--steps", "2", "--no-progress", *argv]) != 0
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith(f"Error: {what} ") and f"cannot write in {ro} (permission denied)" in err
    assert len(err.strip().splitlines()) == 1 and list(ro.iterdir()) == []


def test_missing_output_folders_are_made(tiny_run, tmp_path, capsys):
    out, gif, npz = tmp_path / "a" / "b" / "g.png", tmp_path / "c" / "s.gif", tmp_path / "d" / "e" / "s.npz"
    assert run(["sample", str(tiny_run), "--n", "2", "--steps", "2", "--no-progress", "--out", str(out),
                "--gif", str(gif), "--npz", str(npz), "--png-dir", str(tmp_path / "f" / "pngs")]) == 0
    assert out.is_file() and gif.is_file() and npz.is_file()
    pngs = sorted((tmp_path / "f" / "pngs").iterdir())
    assert [p.name for p in pngs] == ["000000.png", "000001.png"]
    images = np.load(npz)["images"]  # (N, 8, 8, 1): --png-dir holds the same pixels at the native size
    assert all(np.array_equal(np.asarray(Image.open(p)), images[i, ..., 0]) for i, p in enumerate(pngs))
