"""Data parallelism: `torchrun -m difforge train` with 2 gloo processes against 1 process.

Both see the same global batch of 16 and the same noise per sample, so after 6 steps
their weights agree to float tolerance; checkpoints move between world sizes.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from difforge.cli import main
from difforge.config import ConfigError
from difforge.train.distributed import World, check_world, world_from_env

TRAIN = ["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "6", "--batch-size", "16",
         "--checkpoint-every", "2", "--sample-every", "0", "--ema-warmup", "2", "--ema-decay", "0.9",
         "--lr", "1e-3", "--device", "cpu", "--no-progress"]


def _main(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0


def _torchrun(argv, nproc=2, script=None):
    """`torchrun --standalone --nproc_per_node N -m difforge ARGV` (or SCRIPT ARGV)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    program = [str(script)] if script else ["-m", "difforge"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           *program, *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _weights(run, step=6):
    ckpt = run / "checkpoints" / f"step-{step}"
    return load_file(ckpt / "model.safetensors"), load_file(ckpt / "ema.safetensors")


# Two processes sum each half batch's gradient and all-reduce the two sums; one process sums
# the whole batch in another order: the gradients differ by float32 rounding (~1e-7
# relative). AdamW normalises each update, lr * m / (sqrt(v) + eps), so for parameters
# whose gradient is tiny a rounding-sized change of g moves the update by a visible part
# of lr: measured 2e-6 to 5e-6 after these 6 steps at lr 1e-3; 2e-5 allows 4x that. A real
# mismatch (a sample dropped or seen twice: 1/16 of the gradient) moves the updates of
# every parameter, not only the tiny-gradient ones, by far more than rounding.
MAX_ROUNDING = 2e-5


def _assert_close(run_a, run_b, atol=MAX_ROUNDING):
    worst = 0.0
    for a, b in zip(_weights(run_a), _weights(run_b)):
        assert a.keys() == b.keys()
        for k in a:
            worst = max(worst, float((a[k] - b[k]).abs().max()))
    assert worst <= atol, f"weights differ by up to {worst:.3g}"


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _keep_until(src, dst, step):
    """A copy of run `src` as if it had been killed right after checkpoint `step`."""
    shutil.copytree(src, dst)
    for d in (dst / "checkpoints").glob("step-*"):
        if int(d.name[5:]) > step:
            shutil.rmtree(d)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp") / "one"
    _main(TRAIN + ["--out", str(run)])
    return run


@pytest.mark.slow  # subprocesses; still part of CI
def test_two_processes_match_one(one_process, tmp_path):
    two = tmp_path / "two"
    out = _torchrun(TRAIN + ["--out", str(two)])
    assert out.count("done: 6 steps") == 1  # rank 0 alone reports
    _assert_close(one_process, two)
    # Sanity: training moved the weights far more than the tolerance.
    first = load_file(one_process / "checkpoints" / "step-2" / "model.safetensors")
    last = _weights(one_process)[0]
    assert max((first[k] - last[k]).abs().max().item() for k in last) > 1e-3
    # The logged loss is the mean over the global batch, as in one process.
    l1, l2 = _losses(one_process), _losses(two)
    assert l1.keys() == l2.keys() and all(abs(l1[s] - l2[s]) < 1e-5 for s in l1)
    # A checkpoint written by 2 processes resumes in 1.
    back = tmp_path / "back"
    _keep_until(two, back, 4)
    _main(["train", "--resume", "--out", str(back), "--no-progress"])
    _assert_close(one_process, back)


# Rank 1 alone sees NaN images at its second step; otherwise `python -m difforge`.
NAN_ON_RANK_1 = """
import os, sys
import difforge.train.trainer as loop
calls, real = [], loop.to_model_input
def poisoned(images, size):
    x = real(images, size)
    calls.append(None)
    return x * float("nan") if os.environ["RANK"] == "1" and len(calls) == 2 else x
loop.to_model_input = poisoned
from difforge.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow  # subprocesses; still part of CI
def test_one_process_checkpoint_resumes_in_two_that_skip_together(one_process, tmp_path, monkeypatch):
    # Reference: one process whose whole batch is NaN at step 3 (it skips that step).
    from difforge.train import trainer as loop

    calls, real = [], loop.to_model_input

    def poisoned(images, size):
        calls.append(None)
        return real(images, size) * (float("nan") if len(calls) == 4 else 1.0)

    monkeypatch.setattr(loop, "to_model_input", poisoned)
    ref = tmp_path / "ref"
    _main(TRAIN + ["--out", str(ref)])
    monkeypatch.undo()

    # Two processes resume the clean one-process run at step 2; at step 3 only rank 1's
    # loss is NaN, yet both skip (a rank that went on alone would hang in DDP).
    run = tmp_path / "resumed"
    _keep_until(one_process, run, 2)
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    out = _torchrun(["train", "--resume", "--out", str(run), "--no-progress"], script=script)
    assert "from step-2" in out
    skipped = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if "skipped" in r]
    assert [(r["step"], r["skipped_nonfinite"]) for r in skipped] == [(3, "loss")]  # logged once, by rank 0
    _assert_close(ref, run)
    state = torch.load(run / "checkpoints" / "step-6" / "train_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]["ranks"]) == 2 and state["ema"]["step"] == 5


def test_world_from_env_and_checks():
    assert world_from_env({}) == World()
    w = world_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.main) == (1, 4, False) and w.share(16) == slice(4, 8)
    with pytest.raises(ConfigError, match="inconsistent"):
        world_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="incomplete"):
        world_from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="does not split evenly over 4"):
        check_world(w, torch.device("cpu"), 18)
    assert check_world(w, torch.device("cpu"), 16) == torch.device("cpu")
    # The shares tile the global batch.
    rows = [World(r, 4).share(16) for r in range(4)]
    assert sum((list(range(16))[s] for s in rows), []) == list(range(16))


def test_digest_tells_equal_weights_from_different_ones():
    from difforge.train.distributed import digest

    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert digest(a) == digest(b)
    with torch.no_grad():
        b.bias[0] = torch.nextafter(b.bias[0], torch.tensor(1.0))  # one ulp apart
    assert digest(a) != digest(b)
