"""Data-parallel training throughput on the CPU: 1 process vs `torchrun` with N gloo
processes, the same global batch. `--threads T`: the single process gets T threads, each
of the N processes max(1, T // N); with T = 1 (as recorded) DDP uses N cores, not one.

    python benchmarks/ddp_cpu.py --steps 60 --out benchmarks/results/ddp_cpu.json

Each configuration is a real `difforge train` run (`unet`, Fashion-MNIST, batch 128,
fp32); throughput is the median of the img_per_s values the run logs every 10 steps,
leaving out the first. On a GPU machine the same script with `--device cuda` compares
1 GPU with N GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(nproc: int, threads: int, args, work: Path) -> dict:
    out = work / f"p{nproc}"
    shutil.rmtree(out, ignore_errors=True)
    train = ["train", "--dataset", "fashion-mnist", "--model", args.model, "--max-steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--sample-every", "0", "--checkpoint-every", "0",
             "--device", args.device, "--no-progress", "--out", str(out)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "difforge", *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "difforge", *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ips = [r["img_per_s"] for r in rows if "img_per_s" in r][1:]
    losses = [r["loss"] for r in rows if "loss" in r]
    return {"processes": nproc, "threads_per_process": threads, "img_per_s_median": round(statistics.median(ips), 1),
            "img_per_s_all": [round(v, 1) for v in ips], "final_loss": losses[-1], "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", default="unet")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads in all, split over the processes")
    ap.add_argument("--work", default="/tmp/difforge-ddp-bench")
    ap.add_argument("--out", default="benchmarks/results/ddp_cpu.json")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = [run(1, args.threads, args, work), run(args.nproc, max(1, args.threads // args.nproc), args, work)]
    import torch

    report = {
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, shared with other jobs (timings noisy)",
        "torch": torch.__version__,
        "model": args.model, "batch_size": args.batch_size, "steps": args.steps, "device": args.device,
        "results": results,
        "speedup": round(results[1]["img_per_s_median"] / results[0]["img_per_s_median"], 2),
        "final_loss_difference": abs(results[1]["final_loss"] - results[0]["final_loss"]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
