"""Sampling speed at the default setting: what the malloc tuning, torch.compile and bf16 autocast buy.

Each variant runs in a fresh process (malloc settings are per process), the variants take turns
in every repeat, so they share the machine's load; the ratios are computed per repeat (paired)
against the untuned allocator. Recorded per run: wall time, user and system CPU time (the
share of system time is what the allocator tuning attacks), and for torch.compile its
compilation time (the first batch) apart from the steady state.

    python benchmarks/inference.py runs/quickstart --n 200 --repeats 3
    python benchmarks/inference.py runs/quickstart --variants "guidance at every level,tuned malloc" \
        --base "guidance at every level" --out benchmarks/results/inference_interval.json

`--cli N` instead times the user's command, `difforge sample MODEL --n N` at the defaults (all
threads, a fresh process each repeat, CPU times from the child's rusage), into
results/inference_cli.json.

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
    # the default before the guidance interval: both passes at every level, at its best scale there
    "guidance at every level": ({}, {"cfg": 1.5, "cfg_interval": (0.0, float("inf"))}),
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
    guidance = {k: setup[k] for k in ("cfg", "cfg_interval") if k in setup}
    r0, t0 = os.times(), time.perf_counter()
    pipe.generate(labels=labels, seed=0, **guidance)
    wall, r1 = time.perf_counter() - t0, os.times()
    user, system = r1.user - r0.user, r1.system - r0.system
    return {"malloc_tuned": tuned, "n": n, "wall_s": round(wall, 2), "user_s": round(user, 2),
            "system_s": round(system, 2), "system_share": round(system / max(user + system, 1e-9), 4),
            "images_per_s": round(n / wall, 3), "compile_first_batch_s": None if first is None else round(first, 1),
            "threads": torch.get_num_threads()}


def time_cli(args) -> None:
    """`difforge sample MODEL --n N` at the defaults, `--repeats` fresh processes, timed from outside."""
    import resource
    import tempfile

    from difforge.defaults import DEFAULT_CFG, DEFAULT_CFG_INTERVAL, DEFAULT_SAMPLER, DEFAULT_STEPS

    rows = []
    machine = machine_record()
    for rep in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "difforge", "sample", args.model, "--n", str(args.cli),
                                  "--out", str(Path(tmp) / "grid.png"), "--no-progress"],
                                 capture_output=True, text=True)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode:
            raise SystemExit(f"difforge sample failed: {out.stderr.strip().splitlines()[-1]}")
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        rows.append({"wall_s": round(wall, 1), "user_s": round(user, 1), "system_s": round(system, 1),
                     "system_share": round(system / max(user + system, 1e-9), 4),
                     "load_avg_after": [round(v, 2) for v in os.getloadavg()]})
        print(rep, json.dumps(rows[-1]), flush=True)
    walls = [r["wall_s"] for r in rows]
    record = {"command": f"difforge sample {args.model} --n {args.cli}", "n": args.cli,
              "setting": {"sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS.get(DEFAULT_SAMPLER), "cfg": DEFAULT_CFG,
                          "cfg_interval": list(DEFAULT_CFG_INTERVAL)},
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "machine": machine,
              "wall_s_min_median_max": [min(walls), statistics.median(walls), max(walls)],
              "system_share_median": statistics.median(r["system_share"] for r in rows), "runs": rows}
    out_path = args.out if args.out != HERE / "results" / "inference.json" else HERE / "results" / "inference_cli.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("command", "wall_s_min_median_max", "system_share_median")}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--bf16-n", type=int, default=50, help="images for the bf16 variant (emulated bf16 is slow on "
                                                           "CPUs without native bf16)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "inference.json")
    ap.add_argument("--base", default="system malloc", help="the variant the speed-ups are measured against")
    ap.add_argument("--cli", type=int, metavar="N", help="time `difforge sample MODEL --n N` instead")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cli:
        return time_cli(args)
    if args.child:
        env, setup = VARIANTS[args.child]
        n = args.bf16_n if setup.get("precision") else args.n
        print(json.dumps(child(args.model, n, setup)))
        return
    from difforge.defaults import DEFAULT_CFG, DEFAULT_CFG_INTERVAL, DEFAULT_SAMPLER, DEFAULT_STEPS

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
    base = args.base
    summary = {}
    for name, rows in runs.items():
        per_image = [r["wall_s"] / r["n"] for r in rows]
        entry = {"s_per_image_min_median_max": [round(min(per_image), 4), round(statistics.median(per_image), 4),
                                                round(max(per_image), 4)],
                 "system_share_median": statistics.median(r["system_share"] for r in rows)}
        if base in runs and name != base:
            ratios = [(b["wall_s"] / b["n"]) / (r["wall_s"] / r["n"]) for b, r in zip(runs[base], rows)]
            entry[f"speedup_vs_{base.replace(' ', '_')}_min_median_max"] = [round(min(ratios), 2),
                                                                round(statistics.median(ratios), 2),
                                                                round(max(ratios), 2)]
        if rows[0]["compile_first_batch_s"] is not None:
            entry["compile_first_batch_s"] = [r["compile_first_batch_s"] for r in rows]
        summary[name] = entry
    record = {"model": args.model, "setting": {"sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS.get(DEFAULT_SAMPLER),
                                               "cfg": DEFAULT_CFG, "cfg_interval": list(DEFAULT_CFG_INTERVAL),
                                               "batch_size": 100},
              "n": args.n, "bf16_n": args.bf16_n, "repeats": args.repeats, "machine": machine_record(),
              "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"\n| variant | s / image (min / median / max) | speed-up vs {base} | system share of CPU time |")
    print("|---|---|---|---|")
    for name, e in summary.items():
        sp = e.get(f"speedup_vs_{base.replace(' ', '_')}_min_median_max")
        print(f"| {name} | {' / '.join(map(str, e['s_per_image_min_median_max']))} | "
              f"{'-' if sp is None else ' / '.join(map(str, sp))} | {e['system_share_median']:.1%} |")


if __name__ == "__main__":
    main()
