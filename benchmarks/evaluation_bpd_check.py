"""How much the bits/dim defaults of `evaluate --bpd` cost in accuracy, on a trained model.

- VLB: the exact sum over all T - 1 timesteps against the stratified estimate with K
  timesteps (the default K = 100), same images, several seeds for the estimate;
- PF-ODE: RK4 with 8 / 16 / 32 (the default) / 64 steps, same images and probes.

    python benchmarks/evaluation_bpd_check.py runs/trial1 --n 10 --out benchmarks/results/evaluation_bpd_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--n", type=int, default=10, help="test images")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.eval.bpd import test_set_bits_per_dim
    from difforge.eval.evaluate import data_config_for
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(args.model_dir, device="cpu")
    data = data_config_for(Path(args.model_dir), pipe.card) if Path(args.model_dir).is_dir() else DataConfig()
    bundle = load_dataset(data)
    ref = bundle.test if bundle.test is not None else bundle.val
    images = ref.images[: args.n]
    rows: dict = {"model": args.model_dir, "n": args.n, "torch_threads": torch.get_num_threads(),
                  "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores shared with other jobs"}

    t0 = time.perf_counter()
    exact = test_set_bits_per_dim(pipe, images, timesteps=None, batch_size=args.n)
    rows["vlb_exact"] = {**exact["vlb"], "seconds": round(time.perf_counter() - t0, 1)}
    rows["vlb_stratified"] = []
    for k in (25, 100):
        for seed in range(3):
            t0 = time.perf_counter()
            r = test_set_bits_per_dim(pipe, images, timesteps=k, seed=seed + 1, batch_size=args.n)
            rows["vlb_stratified"].append({"timesteps": k, "seed": seed + 1, "bpd_large": r["vlb"]["large"]["bpd"],
                                           "bpd_small": r["vlb"]["small"]["bpd"],
                                           "seconds": round(time.perf_counter() - t0, 1)})
    rows["ode"] = []
    for steps in (8, 16, 32, 64):
        t0 = time.perf_counter()
        r = test_set_bits_per_dim(pipe, images, timesteps=1, ode=True, ode_steps=steps, batch_size=args.n)
        rows["ode"].append({"steps": steps, "nfe": r["ode"]["nfe"], "bpd": r["ode"]["bpd"],
                            "seconds": round(time.perf_counter() - t0, 1)})
        print(rows["ode"][-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
