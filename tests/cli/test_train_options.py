"""Training from an image folder, unconditional models, TensorBoard, graceful SIGTERM."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cli_runner import run


def _folder(root, classes=("cat", "dog"), n=12, size=12, mode="RGB"):
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            arr[..., k % 3] = 255
            Image.fromarray(arr).convert(mode).save(root / name / f"{i}.png")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_rgb_folder_trains_class_conditional(tmp_path):
    data = _folder(tmp_path / "imgs")
    out = tmp_path / "run"
    assert run(["train", "--data", str(data), "--image-size", "8", "--model", "tiny", "--max-steps", "3",
                "--batch-size", "4", "--out", str(out), "--no-progress", "--tensorboard"]) == 0
    import json

    info = json.loads((out / "model.json").read_text())
    assert info["channels"] == 3 and info["class_names"] == ["cat", "dog"] and info["image_size"] == 8
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    skipped = (out / "skipped_files.txt").read_text()
    assert "broken.png" in skipped and len(skipped.splitlines()) == 1
    assert run(["sample", str(out), "--class", "dog", "--n", "2", "--steps", "3",
                "--out", str(tmp_path / "d.png"), "--npz", str(tmp_path / "d.npz")]) == 0
    d = np.load(tmp_path / "d.npz")
    assert d["images"].shape == (2, 8, 8, 3) and d["labels"].tolist() == [1, 1]


def test_unconditional_npz_has_no_labels(tmp_path, capsys):
    out = tmp_path / "u"
    assert run(["train", "--dataset", "digits", "--unconditional", "--model", "tiny", "--max-steps", "2",
                "--batch-size", "8", "--out", str(out), "--no-progress"]) == 0
    assert run(["sample", str(out), "--n", "3", "--steps", "2", "--out", str(tmp_path / "u.png"),
                "--npz", str(tmp_path / "u.npz")]) == 0
    d = np.load(tmp_path / "u.npz")
    assert d["images"].shape == (3, 8, 8, 1) and "labels" not in d.files
    assert run(["sample", str(out), "--cfg", "2", "--out", str(tmp_path / "x.png")]) != 0
    assert "unconditional" in capsys.readouterr().err


def test_sigterm_checkpoints_and_resume_finishes(tmp_path):
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "difforge", "train", "--dataset", "digits", "--model", "tiny",
           "--max-steps", "100000", "--batch-size", "8", "--sample-every", "0", "--checkpoint-every", "0",
           "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size == 0:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, text  # an interrupted run is not a success
    assert "stopped at step" in text and "--resume" in text
    steps = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert len(steps) == 1 and int(steps[0][5:]) >= 10
    stopped = int(steps[0][5:])
    assert run(["train", "--out", str(out), "--resume", "--max-steps", str(stopped + 3), "--no-progress"]) == 0
    assert (out / "checkpoints" / f"step-{stopped + 3}").is_dir()


def test_wandb_logs_offline_without_api_key(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "w"
    assert run(["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "2", "--batch-size", "8",
                "--out", str(out), "--no-progress", "--wandb"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))[0].stat().st_size > 0
    assert list((runs[0] / "files" / "media" / "images").glob("samples*.png"))
