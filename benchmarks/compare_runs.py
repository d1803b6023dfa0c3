"""Compare two training runs of the same config: logged losses step by step, and the
weights of their last checkpoints. Used to check that a change of code keeps training
the same up to float rounding (e.g. one run made by an older commit, one by this one).

    python benchmarks/compare_runs.py RUN_A RUN_B --out benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
from safetensors.torch import load_file


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _last_checkpoint(run: Path) -> Path:
    steps = sorted((int(p.name[5:]), p) for p in (run / "checkpoints").glob("step-*"))
    return steps[-1][1]


def compare(a: Path, b: Path) -> dict:
    la, lb = _losses(a), _losses(b)
    common = sorted(set(la) & set(lb))
    rel = [abs(la[s] - lb[s]) / max(abs(la[s]), 1e-30) for s in common]
    ca, cb = _last_checkpoint(a), _last_checkpoint(b)
    weights = {}
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = load_file(ca / name), load_file(cb / name)
        diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
        weights[name] = {"max_abs_diff": diff, "identical": all(torch.equal(wa[k], wb[k]) for k in wa),
                         "largest_abs_weight": max(float(wa[k].float().abs().max()) for k in wa)}
    return {
        "runs": [str(a), str(b)], "checkpoints": [ca.name, cb.name],
        "loss_steps_compared": len(common), "loss_max_rel_diff": max(rel) if rel else None,
        "losses": {str(s): [la[s], lb[s]] for s in common},
        "weights": weights,
        "final_png_identical": (a / "samples" / "final.png").read_bytes() == (b / "samples" / "final.png").read_bytes()
        if (a / "samples" / "final.png").is_file() and (b / "samples" / "final.png").is_file() else None,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = compare(args.a, args.b)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
