"""Which sampler setting makes a fashion-colour text model draw what its prompts say?

For one model, samples the prompt sets of `difforge.eval.prompts` at every setting given
(sampler, steps, guidance scale, guidance interval) and measures each image's garment and
colour from its pixels (`difforge.eval.attributes`, the garment classifier of
`difforge.eval.garment`), with small and large garments apart: 5 in 6 seen prompts ask
for a small (16 px) garment, which the classifier itself recognises less often. The
ceiling is the same measurement on the real test images, by size. Every setting draws the
same prompts with the same seeds, so the settings differ only in the sampler.

    OMP_NUM_THREADS=1 python benchmarks/text_guidance.py runs/text-pixel \\
        --settings '[["dpmpp-2m-sde", 10, 3, "all"], ["dpmpp-2m-sde", 10, 2, [0.3, 3]]]' \\
        --out benchmarks/results/text_guidance.json

A setting is [sampler, steps, cfg, interval] and optionally a fifth item, options of
`Pipeline.generate` such as {"cfg_rescale": 0.7}; interval "all" guides at every noise level.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import machine_record, write_record  # noqa: E402

SETS = ("seen", "held-out pairs", "paraphrases")


def by_size(right: torch.Tensor, small: torch.Tensor) -> dict:
    """Share right over all, small and large items (None where there are none)."""
    def share(mask):
        return round(float(right[mask].double().mean()), 4) if bool(mask.any()) else None

    return {"all": share(torch.ones_like(small)), "small": share(small), "large": share(~small)}


def per_garment(predicted: torch.Tensor, target: torch.Tensor, small: torch.Tensor) -> dict:
    """{garment name: share of its images classified as it, by size}."""
    from difforge.data.fashion_colour import GARMENTS

    out = {}
    for g, name in enumerate(GARMENTS):
        mask = target == g
        out[name] = by_size((predicted == g)[mask], small[mask])
    return out


def confusion(predicted: torch.Tensor, target: torch.Tensor) -> list[list[int]]:
    """Counts [asked garment][classified garment]."""
    n = 10
    return torch.bincount(target * n + predicted, minlength=n * n).view(n, n).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--settings", required=True, help="JSON list of [sampler, steps, cfg, interval]")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--per-set", type=int, default=0, help="prompts per set (0: every prompt of the set)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="images per prompt (each its own seed): K times the images, a sqrt(K) smaller standard error")
    ap.add_argument("--raw", action="store_true", help="the raw weights, not the EMA ones")
    ap.add_argument("--classifier", type=Path,
                    help="a garment classifier directory (trained there first with the widths and epochs below when "
                         "it holds none); default: the cached one that evaluate uses")
    ap.add_argument("--classifier-widths", default="16,32,64", help="its three conv widths, when it is trained here")
    ap.add_argument("--classifier-epochs", type=int, help="its epochs, when it is trained here (default: 5)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.data.fashion_colour import GARMENTS, SIZES, prompt_targets
    from difforge.eval.attributes import measure_attributes
    from difforge.eval.classifier import ClassifierConfig
    from difforge.eval.garment import load_or_train_garment_classifier
    from difforge.eval.prompts import PROMPT_SETS, spread
    from difforge.pipeline import load_pipeline

    if args.repeat < 1:
        ap.error(f"--repeat must be >= 1, got {args.repeat}")
    settings = json.loads(args.settings)
    data = DataConfig(dataset="fashion-colour")
    bundle = load_dataset(data)
    widths = tuple(int(w) for w in args.classifier_widths.split(","))
    clf_cfg = ClassifierConfig(widths=widths, epochs=args.classifier_epochs)
    classifier = load_or_train_garment_classifier(data, args.classifier, clf_cfg, bundle=bundle, log=print)
    test = bundle.test
    real = measure_attributes(test.images, garment_classifier=classifier)
    small = test.attributes["size"] == SIZES.index("small")
    described = {**classifier.describe(args.classifier), "widths": classifier.meta["widths"]}
    result = {"model": args.model, "machine_before": machine_record(), "garment_classifier": described,
              "ceiling": {"n": len(test), "garment": by_size(real.garment == test.attributes["garment"], small),
                          "per_garment": per_garment(real.garment, test.attributes["garment"], small)},
              "garments": list(GARMENTS),
              "settings": []}
    print("ceiling", result["ceiling"], flush=True)
    pipe = load_pipeline(args.model, ema=not args.raw)
    result["weights"] = "raw" if args.raw else "ema"
    prompts = {name: PROMPT_SETS[name]() for name in args.sets}
    if args.per_set:
        prompts = {name: spread(p, args.per_set) for name, p in prompts.items()}
    result["images_per_prompt"] = args.repeat
    for sampler, steps, cfg, interval, *more in settings:
        options = more[0] if more else {}  # e.g. {"cfg_rescale": 0.7} or {"threshold": 0.995}: to generate
        row = {"sampler": sampler, "steps": steps, "cfg": cfg, "interval": interval, **options, "sets": {}}
        for name, chosen in prompts.items():
            chosen = list(chosen) * args.repeat  # image i is seeded 0 + i: the copies draw different noise
            target = prompt_targets(chosen)
            t0 = time.perf_counter()
            images, _ = pipe.generate(prompts=[p.text for p in chosen], sampler=sampler, steps=steps, cfg=cfg,
                                      cfg_interval=None if interval == "all" else tuple(interval), seed=0,
                                      **options)
            seconds = time.perf_counter() - t0
            m = measure_attributes(images, garment_classifier=classifier)
            garment, colour = m.garment == target["garment"], m.colour == target["colour"]
            is_small = target["size"] == SIZES.index("small")
            row["sets"][name] = {"prompts": len(chosen) // args.repeat, "images": len(chosen),
                                 "seconds": round(seconds, 1),
                                 "garment": by_size(garment, is_small), "colour": by_size(colour, is_small),
                                 "garment+colour": by_size(garment & colour, is_small),
                                 "per_garment": per_garment(m.garment, target["garment"], is_small),
                                 "confusion": confusion(m.garment, target["garment"])}
        result["settings"].append(row)
        print(json.dumps(row), flush=True)
        write_record(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
