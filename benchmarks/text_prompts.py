"""Does a text-to-image model trained on fashion-colour draw what its prompts say?

Samples every prompt of three sets (`difforge.data.fashion_colour`): seen garment x colour
pairs in the training phrasing, held-out pairs (compositions never seen together) and
paraphrases (phrasings and synonyms never used in training), then measures garment class
(a classifier of the luminance max(R, G, B), `difforge.eval.garment`, cached after its
first training), colour, size and position from the pixels (`difforge.eval.attributes`)
and reports each attribute's accuracy, garment+colour, and the share with all of them
right (Okawa et al. 2023: an average of attributes hides failures), next to the same
measurement on the real test images (the ceiling): `difforge.eval.prompts`, as
`difforge evaluate` reports them. Also writes a grid of the model's example prompts.

    python benchmarks/text_prompts.py RUN_OR_MODEL --out benchmarks/results/text_prompts.json \
        [--per-set 96] [--steps 20] [--cfg 3] [--grid docs/text2image.png] [--no-garment]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from difforge.config import DataConfig
from difforge.eval.garment import load_or_train_garment_classifier
from difforge.eval.prompts import prompt_following, real_image_accuracy
from difforge.pipeline import load_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-set", type=int, default=96, help="prompts sampled per set (one image each)")
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--grid", type=Path, help="also write a grid of the model's example prompts (10 each)")
    ap.add_argument("--no-garment", action="store_true", help="do not measure the garment class (no classifier)")
    args = ap.parse_args()
    load0 = os.getloadavg()
    pipe = load_pipeline(args.model)
    result = {"model": args.model, "sampler": args.sampler, "steps": args.steps, "cfg": args.cfg}
    garments = None
    if not args.no_garment:
        from difforge.data import load_dataset

        data = DataConfig(dataset="fashion-colour")
        t0 = time.perf_counter()
        garments = load_or_train_garment_classifier(data, log=print)
        test = load_dataset(data).test
        result["garment_classifier"] = garments.describe()
        result["ceiling"] = {"split": "test", "n": len(test), "seconds": round(time.perf_counter() - t0, 1),
                             **{k: round(v, 4) for k, v in real_image_accuracy(test, garments).items()}}
        print("real test images (ceiling)", result["ceiling"], flush=True)
    sets = prompt_following(pipe, garments, per_set=args.per_set, sampler=args.sampler, steps=args.steps,
                            cfg=args.cfg, seed=0)
    result["sets"] = {name: {"prompts": r["prompts"], "of": r["of"], "seconds": r["seconds"],
                             **{k: round(v, 4) for k, v in r["accuracy"].items()}} for name, r in sets.items()}
    for name, row in result["sets"].items():
        print(name, row, flush=True)
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
