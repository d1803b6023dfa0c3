"""The domain CLIP on fashion-colour: train it as `difforge train-clip` does with the given
settings and record its held-out figures.

Held-out figures (`difforge.eval.clip`), on 2000 test pairs: image->text top-1 within
batches and among the distinct captions, the CLIP score of matched and shuffled pairs;
then the CLIP score of the test images whose garment x colour pair never occurs in the
training split (`HELDOUT_PAIRS`), matched and shuffled among themselves.

    python benchmarks/clip_fashion_colour.py --out benchmarks/results/clip_fashion_colour.json \
        [--steps 600] [--batch-size 128] [--text-encoder scratch] [--model-dir runs/clip]
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
from difforge.data import load_dataset
from difforge.data.fashion_colour import heldout_pair_indices
from difforge.eval.clip import CLIPConfig, dataset_clip_score, summary_line, train_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--steps", type=int, default=CLIPConfig.steps)
    ap.add_argument("--batch-size", type=int, default=CLIPConfig.batch_size)
    ap.add_argument("--text-encoder", default="scratch", choices=["scratch", "minilm"])
    ap.add_argument("--model-dir", help="also save the trained model here")
    args = ap.parse_args()

    start = time.perf_counter()
    data = DataConfig(dataset="fashion-colour")
    bundle = load_dataset(data)
    load_seconds = time.perf_counter() - start
    cfg = CLIPConfig(steps=args.steps, batch_size=args.batch_size, text_encoder=args.text_encoder)
    clip = train_clip(bundle, cfg, dataset_key="fashion-colour", data=data, log=print)
    if args.model_dir:
        clip.save(args.model_dir)
    test = bundle.test
    held = torch.zeros(len(test), dtype=torch.bool)
    for g, c in heldout_pair_indices():
        held |= (test.attributes["garment"] == g) & (test.attributes["colour"] == c)
    unseen = dataset_clip_score(clip, test.subset(torch.nonzero(held).flatten()), n=2000, seed=0)
    result = {
        "settings": {"steps": cfg.steps, "batch_size": cfg.batch_size, "text_encoder": cfg.text_encoder,
                     "embed_dim": cfg.embed_dim, "widths": list(cfg.widths), "lr": cfg.lr, "seed": cfg.seed},
        "retrieval": clip.meta["retrieval"],
        "clip_score": clip.meta["clip_score"],
        "clip_score_heldout_pairs": unseen,
        "logit_scale": clip.meta["logit_scale"],
        "train_seconds": clip.meta["train_seconds"],
        "load_seconds": round(load_seconds, 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_average": os.getloadavg()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(summary_line(clip.meta))
    print(f"held-out pairs: CLIP score {unseen['matched']:.2f} (shuffled {unseen['shuffled']:.2f}, n {unseen['n']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
