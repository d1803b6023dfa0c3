"""Quality per network call: FD against the number of denoiser calls, for every sampler.

For a model trained on Fashion-MNIST, each sampler draws the same class-balanced set of
N images (same seeds) at several step counts; FD is computed on the features of
difforge's domain classifier (`difforge train-classifier`) against N test images. The
reference is DDPM ancestral sampling on all 1000 timesteps. Also: wall time per image.
The real-vs-real floor (N train images vs N test images) is printed: FD below it is noise.

    python benchmarks/sampling.py runs/quickstart --n 300 --cfg 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
PLAN = {  # sampler -> step counts to try
    "ddim": [10, 20, 50],
    "euler": [10, 20, 50],
    "euler-a": [10, 20, 50],
    "heun": [5, 10, 25],
    "dpmpp-2m": [10, 20, 50],
    "dpmpp-3m": [10, 20, 50],
    "dpmpp-2m-sde": [10, 20, 50],
}


def calls(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler == "heun" else steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--cfg", type=float, default=1.0, help="guidance scale (1: none; 2 calls per step otherwise)")
    ap.add_argument("--ddpm-steps", type=int, default=1000)
    ap.add_argument("--out", default=str(HERE / "results" / "sampling.json"))
    args = ap.parse_args()

    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.eval.classifier import load_or_train_classifier
    from difforge.eval.metrics import frechet_distance_features
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(args.model)
    data = DataConfig()
    bundle = load_dataset(data)
    clf = load_or_train_classifier(data, bundle=bundle, log=print)
    k = pipe.num_classes
    labels = torch.arange(k).repeat_interleave(-(-args.n // k))[: args.n]
    g = torch.Generator().manual_seed(0)
    test_idx = torch.randperm(len(bundle.test), generator=g)[: args.n]
    train_idx = torch.randperm(len(bundle.train), generator=g)[: args.n]
    ref = clf.features(bundle.test.images[test_idx])
    floor = frechet_distance_features(clf.features(bundle.train.images[train_idx]), ref)
    print(f"N={args.n}, classifier test accuracy {clf.test_accuracy:.3f}, real-vs-real floor FD {floor:.3f}")

    rows = []

    def measure(sampler: str, steps: int) -> None:
        t0 = time.perf_counter()
        images, _ = pipe.generate(labels=labels, sampler=sampler, steps=steps, cfg=args.cfg, seed=0)
        dt = time.perf_counter() - t0
        fd = frechet_distance_features(clf.features(images), ref)
        row = {"sampler": sampler, "steps": steps, "calls": calls(sampler, steps), "fd": round(fd, 3),
               "s_per_image": round(dt / args.n, 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    measure("ddpm", args.ddpm_steps)
    for sampler, step_list in PLAN.items():
        for steps in step_list:
            measure(sampler, steps)

    ref_fd = rows[0]["fd"]
    print(f"\n| sampler | steps | network calls | FD | FD / DDPM-{args.ddpm_steps} | s per image |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['calls']} | {r['fd']:.3f} | {r['fd'] / ref_fd:.2f} "
              f"| {r['s_per_image']:.4f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "model": str(args.model), "n": args.n, "cfg": args.cfg, "floor_fd": round(floor, 3),
        "classifier_test_accuracy": clf.test_accuracy, "rows": rows,
        "machine": {"machine": platform.machine(), "cpus": __import__("os").cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
    }, indent=2))


if __name__ == "__main__":
    main()
