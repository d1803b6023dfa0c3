"""Text-to-image on fashion-colour from the documented commands: time, then prompt following.

Runs each recipe's `difforge` commands in a fresh folder, timing every command (wall
clock; the machine, its threads and its load are recorded), then samples the prompt sets
of `difforge.eval.prompts` from each model (seen prompts, held-out pairs, paraphrases;
garment, colour, size, position, garment+colour and all, next to the real-image ceiling)
and writes one JSON, plus a grid of the first recipe's example prompts.

Recipes (ROOT is --work):
- latent-minilm: `train-autoencoder --out ROOT/ae` then `train --config
  configs/text-latent.yaml` on it (the README's commands);
- pixel-minilm: `train --config configs/text.yaml --text-encoder minilm` for
  --pixel-steps steps, chosen so that it takes about as long as latent-minilm;
- latent-scratch: the latent recipe's model with the scratch text encoder (reuses ROOT/ae);
- latent-edm: the latent recipe with EDM's preconditioning and noise levels (sigma_data 1, the
  latents' std) in place of DDPM (reuses ROOT/ae);
- pixel-edm: `train --config configs/text-pixel.yaml` (EDM, 16 base channels, batch 64, MiniLM).

Each command's wall seconds and CPU seconds (user + system of the command's process tree)
are recorded: with OMP_NUM_THREADS=1 the two agree, and the CPU seconds are what a
"CPU-minutes" budget counts.

    OMP_NUM_THREADS=2 python benchmarks/text_to_image.py --work /tmp/t2i --recipes latent-minilm pixel-minilm \
        --out benchmarks/results/text_to_image.json --grid docs/text2image.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import machine_record, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def recipes(work: Path, latent_steps: int | None, pixel_steps: int) -> dict[str, list[list[str]]]:
    ae = str(work / "ae")
    latent = ["train", "--config", "configs/text-latent.yaml", "--set", f"model.latent={ae}"]
    if latent_steps:
        latent += ["--max-steps", str(latent_steps)]
    return {
        "latent-minilm": [["train-autoencoder", "--out", ae], latent + ["--out", str(work / "latent-minilm")]],
        "pixel-minilm": [["train", "--config", "configs/text.yaml", "--text-encoder", "minilm", "--max-steps",
                          str(pixel_steps), "--out", str(work / "pixel-minilm")]],
        "latent-scratch": [latent + ["--text-encoder", "scratch", "--out", str(work / "latent-scratch")]],
        "latent-edm": [latent + ["--framework", "edm", "--out", str(work / "latent-edm")]],
        "pixel-edm": [["train", "--config", "configs/text-pixel.yaml", "--out", str(work / "pixel-edm")]],
    }


def run_command(args: list[str], log, no_progress: bool = True) -> dict:
    """One `difforge` command, timed; its output appended to the log."""
    cmd = [sys.executable, "-m", "difforge", *args] + (["--no-progress"] if no_progress else [])
    t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    log.write(f"$ difforge {' '.join(args)}\n{proc.stdout}\n")
    log.flush()
    if proc.returncode:
        raise SystemExit(f"difforge {' '.join(args)} failed ({proc.returncode}); see the log")
    return {"command": "difforge " + " ".join(args), "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "load_avg_after": [round(v, 2) for v in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a new folder for the runs")
    ap.add_argument("--recipes", nargs="+", default=["latent-minilm", "pixel-minilm"])
    ap.add_argument("--latent-steps", type=int, help="override configs/text-latent.yaml's max_steps")
    ap.add_argument("--pixel-steps", type=int, default=500)
    ap.add_argument("--per-set", type=int, default=96)
    ap.add_argument("--steps", type=int, default=20, help="ddim steps when measuring")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--grid", type=Path)
    args = ap.parse_args()
    import torch

    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.eval.garment import load_or_train_garment_classifier
    from difforge.eval.prompts import prompt_following, real_image_accuracy
    from difforge.pipeline import load_pipeline

    args.work.mkdir(parents=True, exist_ok=True)
    book = recipes(args.work, args.latent_steps, args.pixel_steps)
    unknown = [r for r in args.recipes if r not in book]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; expected some of {list(book)}")
    result = {"machine_before": machine_record(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "sampler": "ddim", "steps": args.steps, "cfg": args.cfg, "per_set": args.per_set, "recipes": {}}
    data = DataConfig(dataset="fashion-colour")
    with open(args.work / "commands.log", "a") as log:
        for name in args.recipes:
            if name in ("latent-scratch", "latent-edm") and not (args.work / "ae" / "autoencoder.json").is_file():
                book[name] = book["latent-minilm"][:1] + book[name]
            steps = [run_command(c, log) for c in book[name]]
            result["recipes"][name] = {"commands": steps, "train_seconds": round(sum(s["seconds"] for s in steps), 1),
                                       "train_cpu_seconds": round(sum(s["cpu_seconds"] for s in steps), 1)}
            print(name, json.dumps(steps), flush=True)
    bundle = load_dataset(data)
    garment = load_or_train_garment_classifier(data, bundle=bundle, log=print)
    result["ceiling"] = {k: round(float(v), 4) for k, v in real_image_accuracy(bundle.test, garment).items()}
    for name in args.recipes:
        pipe = load_pipeline(args.work / name)
        sets = prompt_following(pipe, garment, per_set=args.per_set, steps=args.steps, cfg=args.cfg,
                                sampler="ddim", log=print)
        result["recipes"][name]["prompt_sets"] = {
            k: {**{kk: vv for kk, vv in v.items() if kk != "accuracy"},
                "accuracy": {a: round(float(x), 4) for a, x in v["accuracy"].items()}} for k, v in sets.items()}
    if args.grid:
        pipe = load_pipeline(args.work / args.recipes[0])
        prompts = pipe.default_prompts(10)
        images, _ = pipe.generate(prompts=prompts, steps=args.steps, cfg=args.cfg, seed=0)
        pipe.save_grid(images, args.grid, per_row=10)
        result["grid"] = {"path": str(args.grid), "model": args.recipes[0], "rows": list(dict.fromkeys(prompts))}
    result["torch_threads"] = torch.get_num_threads()
    write_record(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
