"""Sampling speed at the default setting: what the malloc tuning, torch.compile and bf16 autocast buy.

Each variant runs in a fresh process (malloc settings are per process), the variants take turns
in every repeat, so they share the machine's load; the ratios are computed per repeat (paired)
against the untuned allocator. Recorded per run: wall time, user and system CPU time (the
share of system time is what the allocator tuning attacks), and for torch.compile its
compilation time (the first batch) apart from the steady state.

    python benchmarks/inference.py runs/quickstart --n 200 --repeats 3

Output: results/inference.json (and a table on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from train_throughput import machine_record  # noqa: E402

VARIANTS = {  # name -> (environment, pipeline setup)
    "system malloc": ({"DIFFORGE_MALLOC": "system"}, {}),
    "tuned malloc": ({}, {}),
    "tuned + torch.compile": ({}, {"compile": True}),
    "tuned + bf16 autocast": ({}, {"precision": "bf16"}),
}


def child(model: str, n: int, setup: dict) -> dict:
    from difforge.allocator import tune_malloc

    tuned = tune_malloc()
    import torch

    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(model)
    if setup.get("precision"):
        pipe.use_precision(setup["precision"])
    labels = torch.arange(n) % pipe.num_classes
    first = None
    if setup.get("compile"):
        pipe.compile()
        t0 = time.perf_counter()
        pipe.generate(labels=labels[:100], seed=10**6)  # compiles, on a batch of the size sampling uses
        first = time.perf_counter() - t0
    r0, t0 = os.times(), time.perf_counter()
    pipe.generate(labels=labels, seed=0)
    wall, r1 = time.perf_counter() - t0, os.times()
    user, system = r1.user - r0.user, r1.system - r0.system
    return {"malloc_tuned": tuned, "n": n, "wall_s": round(wall, 2), "user_s": round(user, 2),
            "system_s": round(system, 2), "system_share": round(system / max(user + system, 1e-9), 4),
            "images_per_s": round(n / wall, 3), "compile_first_batch_s": None if first is None else round(first, 1),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--bf16-n", type=int, default=50, help="images for the bf16 variant (emulated bf16 is slow on "
                                                           "CPUs without native bf16)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "inference.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        env, setup = VARIANTS[args.child]
        n = args.bf16_n if setup.get("precision") else args.n
        print(json.dumps(child(args.model, n, setup)))
        return
    from difforge.defaults import DEFAULT_CFG, DEFAULT_SAMPLER, DEFAULT_STEPS

    names = args.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in names}
    for rep in range(args.repeats):
        for name in names:
            env = {**os.environ, **VARIANTS[name][0]}
            out = subprocess.run([sys.executable, __file__, args.model, "--n", str(args.n), "--bf16-n",
                                  str(args.bf16_n), "--child", name], env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{name}: {out.stderr.strip().splitlines()[-1]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(row)
            print(rep, name, json.dumps(row), flush=True)
    base = "system malloc"
    summary = {}
    for name, rows in runs.items():
        per_image = [r["wall_s"] / r["n"] for r in rows]
        entry = {"s_per_image_min_median_max": [round(min(per_image), 4), round(statistics.median(per_image), 4),
                                                round(max(per_image), 4)],
                 "system_share_median": statistics.median(r["system_share"] for r in rows)}
        if base in runs and name != base:
            ratios = [(b["wall_s"] / b["n"]) / (r["wall_s"] / r["n"]) for b, r in zip(runs[base], rows)]
            entry["speedup_vs_system_malloc_min_median_max"] = [round(min(ratios), 2),
                                                                round(statistics.median(ratios), 2),
                                                                round(max(ratios), 2)]
        if rows[0]["compile_first_batch_s"] is not None:
            entry["compile_first_batch_s"] = [r["compile_first_batch_s"] for r in rows]
        summary[name] = entry
    record = {"model": args.model, "setting": {"sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS.get(DEFAULT_SAMPLER),
                                               "cfg": DEFAULT_CFG, "batch_size": 100},
              "n": args.n, "bf16_n": args.bf16_n, "repeats": args.repeats, "machine": machine_record(),
              "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print("\n| variant | s / image (min / median / max) | speed-up vs system malloc | system share of CPU time |")
    print("|---|---|---|---|")
    for name, e in summary.items():
        sp = e.get("speedup_vs_system_malloc_min_median_max")
        print(f"| {name} | {' / '.join(map(str, e['s_per_image_min_median_max']))} | "
              f"{'-' if sp is None else ' / '.join(map(str, sp))} | {e['system_share_median']:.1%} |")


if __name__ == "__main__":
    main()
