"""Fine-tuning on a few hundred images of a new style: from scratch vs `--init-from` vs LoRA.

1. Pretrain a `unet` on Fashion-MNIST (--pretrain-steps).
2. The new style: Fashion-MNIST garments inverted (dark garments on white), --per-class
   training images per class (a `folder` dataset of PNGs, 10 classes).
3. Train on it, the same number of steps, batch and schedule each: from scratch,
   `--init-from` the pretrained model (every weight), and `--init-from --lora-rank R`.
4. Score each model (and the pretrained one, untouched) with the domain classifier's FD
   (`difforge.eval`): --n class-balanced samples (DDIM, guidance 3), mapped back from the
   new style by inverting them (inversion is one-to-one, so the Fashion-MNIST classifier
   after an inversion is a feature extractor of the inverted style), against the
   Fashion-MNIST test split. The floor is --n real images of the new style (the training
   ones) scored the same way.

CPU time (this process; with OMP_NUM_THREADS=1 it does not depend on the machine's load)
and wall time are recorded for every phase, with the machine, its threads and its load.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/finetune.py --work /tmp/finetune \
        --out benchmarks/results/finetune.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import machine_record  # noqa: E402


def timed(fn):
    """fn's result, and its CPU and wall seconds."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, {"cpu_s": round(time.process_time() - c0, 1), "wall_s": round(time.perf_counter() - w0, 1),
                 "load_avg_after": [round(v, 2) for v in os.getloadavg()]}


def write_style(train, per_class: int, root: Path) -> int:
    """The first `per_class` training images of each class, inverted, as class folders of PNGs."""
    import numpy as np
    from PIL import Image

    labels = train.labels.numpy()
    count = 0
    for k, name in enumerate(train.class_names):
        folder = root / f"{k}-{name.replace('/', '-')}"
        folder.mkdir(parents=True)
        for i in np.flatnonzero(labels == k)[:per_class]:
            Image.fromarray(255 - train.images[i, 0].numpy(), "L").save(folder / f"{i}.png")
            count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a new folder for the runs")
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write")
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=150, help="training steps on the new style, each method")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--per-class", type=int, default=30, help="new-style training images per class")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--n", type=int, default=300, help="samples scored per model")
    ap.add_argument("--sample-steps", type=int, default=20)
    args = ap.parse_args()

    import dataclasses

    import torch

    from difforge.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from difforge.data import load_dataset
    from difforge.eval import metrics as M
    from difforge.eval.classifier import load_or_train_classifier
    from difforge.eval.evaluate import class_balanced_labels
    from difforge.pipeline import load_pipeline
    from difforge.train.loop import train

    result = {"machine_before": machine_record(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "torch_threads": torch.get_num_threads(), "nice": os.nice(0), "settings": vars(args) | {
                  "work": str(args.work), "out": str(args.out)}}
    args.work.mkdir(parents=True, exist_ok=False)
    fmnist = DataConfig(dataset="fashion-mnist")
    bundle = load_dataset(fmnist)
    clf = load_or_train_classifier(fmnist, bundle=bundle)
    ref = clf.features(bundle.test.images)
    style = args.work / "inverted"
    result["style_images"] = write_style(bundle.train, args.per_class, style)

    quiet = dict(sample_every=0, checkpoint_every=0, final_grid=False, device="cpu", log_every=50)
    pre = RunConfig(model=ModelConfig(preset="unet"), out=str(args.work / "pretrained"),
                    train=TrainConfig(max_steps=args.pretrain_steps, batch_size=args.batch_size, lr=2e-3,
                                      ema_warmup=50, **quiet))
    _, result["pretrain"] = timed(lambda: train(pre, progress=False))
    result["pretrain"]["steps"] = args.pretrain_steps

    # the same length, batch and EMA for every method on the new style; each its usual learning rate
    target = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, ema_decay=0.95, ema_warmup=0, **quiet)
    data = DataConfig(dataset="folder", path=str(style), val_fraction=0.0)
    methods = {
        "scratch": (ModelConfig(preset="unet"), 2e-3),
        "full fine-tune": (ModelConfig(preset="unet", init_from=pre.out), 5e-4),
        f"LoRA rank {args.lora_rank}": (ModelConfig(preset="unet", init_from=pre.out, lora_rank=args.lora_rank),
                                        2e-3),
    }
    labels = class_balanced_labels(args.n, 10)

    def fd(images: torch.Tensor) -> float:
        return round(M.frechet_distance_features(ref, clf.features(255 - images)), 2)  # back from the style

    def score(path: str) -> dict:
        pipe = load_pipeline(path)
        (images, _), t = timed(lambda: pipe.generate(n=args.n, labels=labels, cfg=3.0, steps=args.sample_steps,
                                                     seed=0))
        return {"fd": fd(images), "sampling": t}

    result["floor_fd_real_style_images"] = fd(style_floor_images(style, args.n))
    result["pretrained_untouched"] = score(pre.out)
    result["methods"] = {}
    for i, (name, (model, lr)) in enumerate(methods.items()):
        cfg = RunConfig(data=data, model=model, out=str(args.work / f"run-{i}"),
                        train=dataclasses.replace(target, lr=lr))
        _, t = timed(lambda: train(cfg, progress=False))
        trainable = _trainable(cfg.out)
        result["methods"][name] = {"lr": lr, "train": t, "trained_tensors_saved": trainable, **score(cfg.out)}
        print(name, result["methods"][name], flush=True)
    result["machine_after"] = machine_record()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def style_floor_images(style: Path, n: int) -> "torch.Tensor":  # noqa: F821 - torch is imported inside
    """n class-balanced real images of the new style (as stored: `fd` inverts them back)."""
    import torch

    folders = sorted(p for p in style.iterdir() if p.is_dir())
    per = -(-n // len(folders))
    picked = [torch.from_numpy(_read(p)) for f in folders for p in sorted(f.glob("*.png"))[:per]]
    return torch.stack(picked[:n])


def _read(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"))[None]


def _trainable(run_dir: str) -> dict:
    """How many tensors and numbers the run's checkpoint holds (a LoRA run: only the adapter)."""
    from safetensors.torch import load_file

    ckpt = sorted((Path(run_dir) / "checkpoints").glob("step-*"))[-1]
    state = load_file(ckpt / "model.safetensors")
    return {"tensors": len(state), "numbers": int(sum(v.numel() for v in state.values())),
            "bytes": (ckpt / "model.safetensors").stat().st_size}


if __name__ == "__main__":
    main()
