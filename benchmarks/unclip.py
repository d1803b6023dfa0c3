"""unCLIP against direct text conditioning on fashion-colour, at comparable CPU-minutes.

Runs, in a fresh folder, timing every command (wall clock; the machine, its threads and
load recorded):
- unclip: `train-clip` (the domain CLIP), `train-prior --clip`, then the decoder
  `train --config configs/text.yaml --clip` (the same UNet, conditioned on CLIP image
  embeddings instead of text) for --decoder-steps;
- direct: `train --config configs/text.yaml` (the scratch text encoder) for --direct-steps,
  chosen so that it takes about as long as the three unclip commands together;

then samples the prompt sets of `difforge.eval.prompts` from each (seen prompts, held-out
pairs, paraphrases; garment, colour, size, position, garment+colour and all, next to the
real-image ceiling): unclip through text -> prior -> decoder (`difforge.tasks.unclip`),
direct as `difforge sample` does. Writes one JSON. `--smoke` runs every step with tiny
settings (to check the script, not to measure: its record says "smoke": true).

    OMP_NUM_THREADS=2 python benchmarks/unclip.py --work /tmp/unclip --out benchmarks/results/unclip.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from text_to_image import run_command as run_text_command  # noqa: E402
from train_throughput import machine_record, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run_command(args: list[str], log) -> dict:
    """text_to_image's runner; train-clip and train-prior take no --no-progress."""
    return run_text_command(args, log, no_progress=args[0] == "train")


def recipes(work: Path, a) -> dict[str, list[list[str]]]:
    clip = str(work / "clip")
    small = ["--set", "data.val_fraction=0.01"] if a.smoke else []
    return {
        "unclip": [
            ["train-clip", "--out", clip, "--steps", str(a.clip_steps)],
            ["train-prior", "--clip", clip, "--steps", str(a.prior_steps), "--out", str(work / "prior")],
            ["train", "--config", "configs/text.yaml", "--set", "model.text_encoder=null", "--clip", clip,
             "--max-steps", str(a.decoder_steps), "--out", str(work / "decoder"), *small],
        ],
        "direct": [["train", "--config", "configs/text.yaml", "--max-steps", str(a.direct_steps),
                    "--out", str(work / "direct"), *small]],
    }


class UnclipSampler:
    """`generate(prompts=..., seed=..., **options)` through text -> prior -> decoder, as the
    prompt-set measurement calls a pipeline."""

    def __init__(self, pipe, card, prior, prior_cfg: float, prior_steps: int):
        self.pipe, self.card, self.prior = pipe, card, prior
        self.prior_cfg, self.prior_steps = prior_cfg, prior_steps

    def generate(self, *, prompts, seed=0, **options):
        from difforge.tasks.unclip import text_to_image

        images, _ = text_to_image(self.pipe, self.card, self.prior, prompts, prior_cfg=self.prior_cfg,
                                  prior_steps=self.prior_steps, seed=seed, **options)
        return images, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a new folder for the runs")
    ap.add_argument("--clip-steps", type=int, default=600)
    ap.add_argument("--prior-steps", type=int, default=2000)
    ap.add_argument("--decoder-steps", type=int, default=500)
    ap.add_argument("--direct-steps", type=int, default=600)
    ap.add_argument("--per-set", type=int, default=96)
    ap.add_argument("--steps", type=int, default=20, help="ddim steps of the decoder and the direct model")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--prior-cfg", type=float, default=3.0)
    ap.add_argument("--prior-sampling-steps", type=int, default=25)
    ap.add_argument("--smoke", action="store_true", help="tiny settings: checks the script, measures nothing")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.smoke:
        a.clip_steps, a.prior_steps, a.decoder_steps, a.direct_steps = 5, 5, 2, 2
        a.per_set, a.steps, a.prior_sampling_steps = 2, 2, 2
    import torch

    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.eval.garment import load_or_train_garment_classifier
    from difforge.eval.prompts import prompt_following, real_image_accuracy
    from difforge.models.prior import load_prior
    from difforge.pipeline import load_pipeline

    a.work.mkdir(parents=True, exist_ok=True)
    result = {"smoke": a.smoke, "machine_before": machine_record(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "sampler": "ddim", "steps": a.steps, "cfg": a.cfg, "prior_cfg": a.prior_cfg,
              "prior_sampling_steps": a.prior_sampling_steps, "per_set": a.per_set, "recipes": {}}
    with open(a.work / "commands.log", "a") as log:
        for name, commands in recipes(a.work, a).items():
            steps = [run_command(c, log) for c in commands]
            result["recipes"][name] = {"commands": steps, "train_seconds": round(sum(s["seconds"] for s in steps), 1)}
            print(name, json.dumps(steps), flush=True)
    data = DataConfig(dataset="fashion-colour")
    bundle = load_dataset(data)
    garment = load_or_train_garment_classifier(data, bundle=bundle, log=print)
    result["ceiling"] = {k: round(float(v), 4) for k, v in real_image_accuracy(bundle.test, garment).items()}
    decoder = load_pipeline(a.work / "decoder")
    card, prior = load_prior(a.work / "prior", decoder.device)
    samplers = {"unclip": UnclipSampler(decoder, card, prior, a.prior_cfg, a.prior_sampling_steps),
                "direct": load_pipeline(a.work / "direct")}
    for name, pipe in samplers.items():
        sets = prompt_following(pipe, garment, per_set=a.per_set, steps=a.steps, cfg=a.cfg, sampler="ddim", log=print)
        result["recipes"][name]["prompt_sets"] = {
            k: {**{kk: vv for kk, vv in v.items() if kk != "accuracy"},
                "accuracy": {m: round(float(x), 4) for m, x in v["accuracy"].items()}} for k, v in sets.items()}
    result["torch_threads"] = torch.get_num_threads()
    write_record(a.out, result)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
