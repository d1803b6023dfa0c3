"""kill -9 at random moments, then --resume, until the run finishes; compare with a run
that was never interrupted, bit for bit.

    OMP_NUM_THREADS=1 python benchmarks/kill_resume.py --kills 20 --out benchmarks/results/kill_resume.json

Each attempt starts `python -m difforge train` (fresh, then --resume), waits until it has
written a new checkpoint, then a uniformly random time more, and sends SIGKILL; the kill
lands between steps or inside a checkpoint write (checkpoints every step make that likely). What the kill left
(newest complete checkpoint, a temporary checkpoint directory) is recorded. After the
kills, one last --resume runs to the end and the final weights, EMA, optimizer state and
noise-generator state are compared with the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from difforge.train.checkpoint import find_resumable


def train_argv(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "difforge", "train", "--dataset", "digits", "--model", "tiny",
            "--max-steps", str(steps), "--batch-size", "16", "--checkpoint-every", "1", "--sample-every", "0",
            "--ema-warmup", "5", "--ema-decay", "0.9", "--lr", "1e-3", "--device", "cpu", "--no-progress",
            "--out", str(out)]


def newest_step(run: Path) -> int:
    """The highest step-N directory name (complete or not): progress of a run."""
    ckpts = run / "checkpoints"
    steps = [int(p.name[5:]) for p in ckpts.glob("step-*") if p.name[5:].isdigit()] if ckpts.is_dir() else []
    return max(steps, default=-1)


def final_state(run: Path, steps: int):
    ckpt = run / "checkpoints" / f"step-{steps}"
    return (load_file(ckpt / "model.safetensors"), load_file(ckpt / "ema.safetensors"),
            torch.load(ckpt / "train_state.pt", weights_only=True))


def identical(a, b) -> dict:
    (m1, e1, s1), (m2, e2, s2) = a, b
    o1, o2 = s1["optimizer"]["state"], s2["optimizer"]["state"]
    return {
        "model": all(torch.equal(m1[k], m2[k]) for k in m1),
        "ema": all(torch.equal(e1[k], e2[k]) for k in e1),
        "optimizer": all(torch.equal(o1[k][n], o2[k][n]) for k in o1 for n in ("exp_avg", "exp_avg_sq", "step")),
        "noise_rng": torch.equal(s1["rng"]["train"], s2["rng"]["train"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--max-wait", type=float, default=2.0,
                    help="a kill lands uniformly within this many seconds after the run's first new checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/difforge-kill-resume")
    ap.add_argument("--out", default="benchmarks/results/kill_resume.json")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

    t0 = time.perf_counter()
    subprocess.run(train_argv(work / "straight", args.steps), env=env, check=True, capture_output=True)
    straight_s = time.perf_counter() - t0

    run = work / "killed"
    kills = []
    for i in range(args.kills):
        argv = train_argv(run, args.steps) + (["--resume"] if (run / "config.yaml").exists() else [])
        before = newest_step(run)
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and newest_step(run) == before:  # start-up: wait for progress
            time.sleep(0.05)
        wait = rng.uniform(0.0, args.max_wait)
        time.sleep(wait)
        finished = proc.poll() is not None
        if not finished:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpts = run / "checkpoints"
        newest, skipped = find_resumable(ckpts)
        kills.append({
            "attempt": i,
            "wait_s": round(wait, 2),
            "killed": not finished,
            "newest_complete_step": int(newest.name[5:]) if newest else None,
            "temp_dirs_left": sorted(p.name for p in ckpts.glob(".tmp-step-*")) if ckpts.is_dir() else [],
            "latest_pointer": (ckpts / "latest").read_text().strip() if (ckpts / "latest").exists() else None,
            "incomplete_step_dirs": skipped,
        })
        print(json.dumps(kills[-1]), flush=True)
        if finished:
            break
    last = subprocess.run(train_argv(run, args.steps) + ["--resume"], env=env, capture_output=True, text=True)
    same = identical(final_state(work / "straight", args.steps), final_state(run, args.steps))
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, shared with other jobs (timings noisy)",
        "torch": torch.__version__,
        "steps": args.steps,
        "straight_run_s": round(straight_s, 1),
        "kills": sum(k["killed"] for k in kills),
        "kills_leaving_a_temp_checkpoint": sum(bool(k["temp_dirs_left"]) for k in kills),
        "kills_with_latest_behind_newest": sum(
            k["latest_pointer"] is not None and k["newest_complete_step"] is not None
            and k["latest_pointer"] != f"step-{k['newest_complete_step']}" for k in kills),
        "final_resume_exit_code": last.returncode,
        "temp_dirs_after_final_resume": sorted(p.name for p in (run / "checkpoints").glob(".tmp-step-*")),
        "identical_to_uninterrupted": same,
        "attempts": kills,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "attempts"}, indent=2))


if __name__ == "__main__":
    main()
