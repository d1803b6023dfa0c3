"""Does a text-to-image model trained on fashion-colour draw what its prompts say?

Samples every prompt of three sets (`difforge.data.fashion_colour`): seen garment x colour
pairs in the training phrasing, held-out pairs (compositions never seen together) and
paraphrases (phrasings and synonyms never used in training), then measures colour, size
and position from the pixels (`difforge.eval.attributes`) and reports each attribute's
accuracy and the share with all three right (Okawa et al. 2023: an average of attributes
hides failures). Garment class is not measured here (it needs a classifier trained on
fashion-colour). Also writes a grid of the model's example prompts.

    python benchmarks/text_prompts.py RUN_OR_MODEL --out benchmarks/results/text_prompts.json \
        [--per-set 96] [--steps 20] [--cfg 3] [--grid docs/text2image.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from difforge.data.fashion_colour import compositional_prompts, paraphrase_prompts, prompt_targets, seen_prompts
from difforge.eval.attributes import attribute_accuracy, measure_attributes
from difforge.pipeline import load_pipeline


def _subset(prompts: list, k: int) -> list:
    """k prompts spread evenly over the list (deterministic)."""
    if k >= len(prompts):
        return prompts
    step = len(prompts) / k
    return [prompts[int(i * step)] for i in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-set", type=int, default=96, help="prompts sampled per set (one image each)")
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--grid", type=Path, help="also write a grid of the model's example prompts (10 each)")
    args = ap.parse_args()
    load0 = os.getloadavg()
    pipe = load_pipeline(args.model)
    sets = {"seen": seen_prompts(), "held-out pairs": compositional_prompts(), "paraphrases": paraphrase_prompts()}
    result = {"model": args.model, "sampler": args.sampler, "steps": args.steps, "cfg": args.cfg, "sets": {}}
    for name, prompts in sets.items():
        chosen = _subset(prompts, args.per_set)
        t0 = time.perf_counter()
        images, _ = pipe.generate(prompts=[p.text for p in chosen], sampler=args.sampler, steps=args.steps,
                                  cfg=args.cfg, seed=0)
        seconds = time.perf_counter() - t0
        acc = attribute_accuracy(measure_attributes(images), prompt_targets(chosen))
        result["sets"][name] = {"prompts": len(chosen), "of": len(prompts), "seconds": round(seconds, 1),
                                **{k: round(float(v), 4) for k, v in acc.items()}}
        print(name, result["sets"][name], flush=True)
    if args.grid:
        prompts = pipe.default_prompts(10)
        images, _ = pipe.generate(prompts=prompts, sampler=args.sampler, steps=args.steps, cfg=args.cfg, seed=0)
        pipe.save_grid(images, args.grid, per_row=10)
        result["grid"] = {"path": str(args.grid), "rows": list(dict.fromkeys(prompts))}
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                         "torch": torch.__version__, "load_avg_before": load0, "load_avg_after": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
