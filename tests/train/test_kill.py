"""kill -9 at the worst moments of a checkpoint write, then --resume: the run ends with
exactly the weights, EMA and optimizer state of a run that was never interrupted.

Each interrupted run is a real child process that SIGKILLs itself at a chosen point
inside `save_checkpoint` (hooks installed in the child only).
"""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from difforge.cli import main
from difforge.train.checkpoint import find_resumable

TRAIN = ["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "10", "--batch-size", "16",
         "--checkpoint-every", "2", "--sample-every", "0", "--ema-warmup", "2", "--ema-decay", "0.9",
         "--lr", "1e-3", "--device", "cpu", "--no-progress"]

CHILD = r"""
import os, shutil, signal, sys
from pathlib import Path
import torch
import difforge.train.checkpoint as ck
import difforge.train.trainer as loop  # where checkpoints are written from

where, nth = sys.argv[1], int(sys.argv[2])
saves = [0]
real_save = ck.save_checkpoint

def counting_save(*a, **k):
    saves[0] += 1
    return real_save(*a, **k)

loop.save_checkpoint = counting_save
armed = lambda: saves[0] == nth
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

if where == "mid-file":  # train_state.pt half written
    real_torch_save = torch.save
    def torch_save(obj, f, *a, **k):
        real_torch_save(obj, f, *a, **k)
        if armed():
            data = Path(f).read_bytes()
            Path(f).write_bytes(data[: len(data) // 2])
            die()
    torch.save = torch_save
elif where == "before-pointer":  # renamed into place, `latest` not yet moved
    real_write = ck._write_atomic_text
    def write(path, text):
        if armed():
            die()
        real_write(path, text)
    ck._write_atomic_text = write
elif where == "retention":  # half way through deleting the oldest checkpoint
    real_rmtree = shutil.rmtree
    def rmtree(path, *a, **k):
        if armed() and Path(path).name.startswith("step-"):
            (Path(path) / "model.safetensors").unlink()
            die()
        real_rmtree(path, *a, **k)
    shutil.rmtree = rmtree

from difforge.cli import main
main(sys.argv[3:])
"""


def _main(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0


def _killed(run, where, nth, resume):
    argv = TRAIN + ["--out", str(run)] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, where, str(nth), *argv], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout + proc.stderr  # really killed, not finished
    return proc.stdout


def _state(ckpt):
    return (load_file(ckpt / "model.safetensors"), load_file(ckpt / "ema.safetensors"),
            torch.load(ckpt / "train_state.pt", weights_only=True))


@pytest.mark.slow  # subprocesses; still part of CI
def test_sigkill_during_checkpoint_writes_then_resume_matches(tmp_path):
    straight = tmp_path / "straight"
    _main(TRAIN + ["--out", str(straight)])

    run = tmp_path / "killed"
    ckpts = run / "checkpoints"
    # 1. Killed while writing step-4's train_state.pt: a temp dir is left, step-2 is the newest.
    _killed(run, "mid-file", 2, resume=False)
    assert [p.name for p in ckpts.glob(".tmp-step-4-*")] and not (ckpts / "step-4").exists()
    assert find_resumable(ckpts)[0].name == "step-2"
    # 2. Resumes from step-2, removes the temp dir, killed after step-4's rename, before `latest`.
    out = _killed(run, "before-pointer", 1, resume=True)
    assert "resuming" in out and "from step-2" in out and "removed .tmp-step-4-" in out
    assert not list(ckpts.glob(".tmp-*"))
    assert (ckpts / "latest").read_text().strip() == "step-2" and (ckpts / "step-4" / "meta.json").exists()
    # 3. Resumes from step-4 (newer than `latest` says); writes step-6, then step-8 and is killed
    #    deleting step-2 (the newest 3 are kept).
    out = _killed(run, "retention", 2, resume=True)
    assert "from step-4" in out
    assert (ckpts / "step-2").exists() and not (ckpts / "step-2" / "model.safetensors").exists()
    # 4. Resumes from step-8 and finishes.
    _main(["train", "--resume", "--out", str(run), "--no-progress"])
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-10", "step-6", "step-8"]

    m1, e1, s1 = _state(straight / "checkpoints" / "step-10")
    m2, e2, s2 = _state(ckpts / "step-10")
    for a, b in ((m1, m2), (e1, e2)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    o1, o2 = s1["optimizer"]["state"], s2["optimizer"]["state"]
    assert all(torch.equal(o1[k][n], o2[k][n]) for k in o1 for n in ("exp_avg", "exp_avg_sq", "step"))
    assert s1["ema"] == s2["ema"] and torch.equal(s1["rng"]["train"], s2["rng"]["train"])
