"""Which sampling setting gives the best images per network call: the sweep behind difforge's defaults.

For one class-conditional model (the quick start's), each setting (sampler, steps, guidance scale,
guidance rescale, dynamic thresholding, guidance interval) draws N class-balanced images from a
seed set; scored on the features of difforge's domain classifier (`difforge train-classifier`)
against the 10,000 test images: Frechet distance (FD), class accuracy of the samples, and
precision / recall (k = 3, against N test images). A guided evaluation (conditional and
unconditional pass in one batch) counts as one call, as the issue that set the budget counts it.

Rows are appended to the JSON file as they finish, so a stopped sweep resumes where it was;
a setting already recorded for the same N and seed set is skipped. Stages:

    python benchmarks/sampler_sweep.py runs/quickstart --stage screen   # N=500, seed set 0
    python benchmarks/sampler_sweep.py runs/quickstart --stage final    # N=2000, seed sets 0-2
    python benchmarks/sampler_sweep.py --chart                          # charts + markdown table

Seed set s draws image i from seed 1_000_000 * s + i.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from train_throughput import machine_record  # noqa: E402

OUT = HERE / "results" / "sampler_sweep.json"
SAMPLERS = ["ddim", "euler", "euler-a", "heun", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m"]


def calls(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler == "heun" else steps


def setting(sampler: str, steps: int, cfg: float, rescale: float = 0.0, threshold: float | None = None,
            interval: tuple[float, float] | None = None) -> dict:
    return {"sampler": sampler, "steps": steps, "cfg": cfg, "rescale": rescale, "threshold": threshold,
            "interval": list(interval) if interval else None}


def screen_plan() -> list[dict]:
    plan = [setting("ddim", 50, 3.0)]  # the default before this sweep
    for sampler in SAMPLERS:  # 10 and 25 calls per image (heun: 9 and 25)
        for steps in ([5, 13] if sampler == "heun" else [10, 25]):
            plan.append(setting(sampler, steps, 1.5))
    for sampler in ["ddim", "dpmpp-2m-sde"]:  # guidance scale at 25 calls
        for cfg in [1.0, 2.0, 3.0]:
            plan.append(setting(sampler, 25, cfg))
    # around the leader (dpmpp-2m-sde): fewer steps, scales near 1.5, guidance intervals
    plan.append(setting("dpmpp-2m-sde", 15, 1.5))
    for cfg in [1.25, 2.0, 3.0]:
        plan.append(setting("dpmpp-2m-sde", 10, cfg))
    for interval in [(0.3, 3.0), (1.0, 10.0)]:
        plan.append(setting("dpmpp-2m-sde", 10, 2.0, interval=interval))
    plan.append(setting("dpmpp-2m-sde", 10, 3.0, rescale=0.7))  # what keeps strong guidance in range
    plan.append(setting("dpmpp-2m-sde", 10, 3.0, threshold=0.995))
    return plan


def key(row: dict) -> tuple:
    return (row["sampler"], row["steps"], row["cfg"], row["rescale"], row["threshold"],
            tuple(row["interval"]) if row["interval"] else None, row["n"], row["seed_set"])


def load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"rows": []}


def balanced_labels(k: int, n: int):
    """n class labels, 0..k-1 in turn: class-balanced samples."""
    import torch

    return torch.arange(k).repeat(-(-n // k))[:n]


class Scorer:
    """Scores class-balanced samples on the features of difforge's domain classifier
    against the 10,000 test images: FD, class accuracy of the samples, and precision /
    recall (k = 3) against N test images drawn by the seed set."""

    def __init__(self, log=print):
        from difforge.config import DataConfig
        from difforge.data import load_dataset
        from difforge.eval.classifier import load_or_train_classifier
        from difforge.eval.metrics import feature_stats

        data = DataConfig()
        self.bundle = load_dataset(data)
        self.clf = load_or_train_classifier(data, bundle=self.bundle, log=log)
        self.ref_feats = self.clf.features(self.bundle.test.images)
        self.mu_ref, self.cov_ref = feature_stats(self.ref_feats)

    def __call__(self, images, labels, seed_set: int) -> dict:
        """images: uint8 (N, C, 28, 28); labels: the N classes they were drawn for."""
        import torch

        from difforge.eval.metrics import conditional_accuracy, feature_stats, frechet_distance, precision_recall

        feats, logits = self.clf.features_and_logits(images)
        mu, cov = feature_stats(feats)
        g = torch.Generator().manual_seed(seed_set)
        real = self.ref_feats[torch.randperm(len(self.ref_feats), generator=g)[:len(images)].numpy()]
        pr = precision_recall(real, feats)
        return {"fd": round(float(frechet_distance(mu, cov, self.mu_ref, self.cov_ref)), 4),
                "accuracy": round(conditional_accuracy(logits, torch.as_tensor(labels).numpy()), 4),
                "precision": round(pr.precision, 4), "recall": round(pr.recall, 4)}


def run(args) -> None:
    from difforge.allocator import tune_malloc

    tune_malloc()
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(args.model)
    scorer = Scorer()
    record = load(args.out)
    done = {key(r) for r in record["rows"]}
    k = pipe.num_classes
    if args.stage == "final":
        plan = [setting(*s) for s in json.loads(args.final)] if args.final else []
        n, seed_sets = args.final_n, [int(v) for v in args.seed_sets.split(",")]
    else:
        plan, n, seed_sets = screen_plan(), args.n, [0]
    for s in plan:
        for seed_set in seed_sets:
            row = {**s, "calls": calls(s["sampler"], s["steps"]), "n": n, "seed_set": seed_set}
            if key(row) in done:
                continue
            labels = balanced_labels(k, n)
            extra = {"threshold": s["threshold"]} if s["threshold"] else {}
            # no interval: guidance at every level, as when these rows were first recorded (the
            # pipeline's own default is now an interval)
            extra["cfg_interval"] = tuple(s["interval"]) if s["interval"] else (0, math.inf)
            t0, r0 = time.perf_counter(), os.times()
            images, _ = pipe.generate(labels=labels, sampler=s["sampler"], steps=s["steps"], cfg=s["cfg"],
                                      cfg_rescale=s["rescale"], seed=1_000_000 * seed_set, **extra)
            wall, r1 = time.perf_counter() - t0, os.times()
            row.update(**scorer(images, labels, seed_set),
                       s_per_image=round(wall / n, 5),
                       system_share=round((r1.system - r0.system) / max(1e-9, (r1.user - r0.user)
                                                                        + (r1.system - r0.system)), 4),
                       machine=machine_record())
            record["rows"].append(row)
            record["model"], record["classifier_test_accuracy"] = str(args.model), scorer.clf.test_accuracy
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=1))
            print(json.dumps({k2: row[k2] for k2 in row if k2 != "machine"}), flush=True)


def summary(rows: list[dict]) -> list[dict]:
    """One entry per setting: mean and spread (min, max) of each measure over its seed sets."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r)[:-1], []).append(r)
    out = []
    for k, rs in groups.items():
        e = {f: rs[0][f] for f in ("sampler", "steps", "calls", "cfg", "rescale", "threshold", "interval", "n")}
        e["seed_sets"] = len(rs)
        for f in ("fd", "accuracy", "precision", "recall", "s_per_image"):
            vals = [r[f] for r in rs]
            e[f] = round(statistics.fmean(vals), 4)
            e[f + "_range"] = [min(vals), max(vals)]
        out.append(e)
    return out


def label(e: dict) -> str:
    extra = (f", rescale {e['rescale']}" if e["rescale"] else "") + (f", threshold {e['threshold']}"
                                                                     if e["threshold"] else "")
    extra += f", interval {e['interval']}" if e["interval"] else ""
    return f"{e['sampler']} {e['steps']} steps, cfg {e['cfg']}{extra}"


def chart(path: Path) -> None:
    from difforge.io.charts import xy_panels

    rows = list(load(path)["rows"])
    for extra in sorted(path.parent.glob(path.stem + "_*.json")):  # final-stage files written beside it
        rows += load(extra)["rows"]
    entries = summary(rows)
    screen = [e for e in entries if e["n"] == 500 and not e["rescale"] and not e["threshold"] and not e["interval"]]
    by_calls, by_cfg = {}, {}
    for sampler in SAMPLERS:
        pts = sorted((e["calls"], e["fd"]) for e in screen if e["sampler"] == sampler and e["cfg"] == 1.5)
        if pts:
            by_calls[sampler] = tuple(zip(*pts))
        pts = sorted((e["cfg"], e["fd"]) for e in screen if e["sampler"] == sampler and e["calls"] == 25)
        if len(pts) > 2:
            by_cfg[sampler] = tuple(zip(*pts))
    xy_panels([("FD vs calls per image (cfg 1.5)", by_calls), ("FD vs guidance scale (25 calls)", by_cfg)],
              path.with_suffix(".png"), xlabel="calls  |  guidance scale", log_y=[True, True],
              note="FD on domain-classifier features, N = 500, seed set 0; a guided call counts once")
    lines = ["| setting | calls | N x seed sets | FD (min-max) | class accuracy | precision | recall | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (-e["n"], e["fd"])):
        lines.append(f"| {label(e)} | {e['calls']} | {e['n']} x {e['seed_sets']} | {e['fd']:.3f} "
                     f"({e['fd_range'][0]:.3f}-{e['fd_range'][1]:.3f}) | {e['accuracy']:.3f} | {e['precision']:.3f} "
                     f"| {e['recall']:.3f} | {e['s_per_image']:.4f} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--stage", choices=["screen", "final"], default="screen")
    ap.add_argument("--n", type=int, default=500, help="images per setting in the screen stage")
    ap.add_argument("--final", help='JSON list of settings for the final stage: [[sampler, steps, cfg, rescale, '
                                    'threshold, interval], ...]')
    ap.add_argument("--seed-sets", default="0,1,2", help="final stage: the seed sets to draw")
    ap.add_argument("--final-n", type=int, default=2000, help="final stage: images per setting and seed set")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--chart", action="store_true", help="draw the charts and the table from --out, then stop")
    args = ap.parse_args()
    if args.chart:
        chart(args.out)
        return
    if not args.model:
        ap.error("give the model directory")
    run(args)


if __name__ == "__main__":
    main()
