"""Why a latent model needs a schedule that stops at a modest noise level.

Samples one latent text model (trained on the pixel default schedule, linear betas 1e-4 to
0.02, sigma_max 157) with DDIM from the full grid and from the same grid cut at lower
starting levels, and records the standard deviation of the final latents (the data's is 1)
and a grid of the decoded samples: a row of real images, then one row per start level.
Pixel models clip x0 to [-1, 1] at each step; latents have no such range, so an eps error
at sigma 157 becomes a 157-fold x0 error.

    python benchmarks/latent_sigma_max.py RUN --out benchmarks/results/latent_sigma_max.json \
        --grid benchmarks/results/latent_sigma_max.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import machine_record  # noqa: E402

from difforge.config import DataConfig  # noqa: E402
from difforge.data import load_dataset  # noqa: E402
from difforge.io import save_grid  # noqa: E402
from difforge.pipeline import load_pipeline  # noqa: E402
from difforge.sampling import get_sampler  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--grid", type=Path, required=True)
    ap.add_argument("--cfg", type=float, default=3.0)
    args = ap.parse_args()
    pipe = load_pipeline(args.run)
    ds = load_dataset(DataConfig(dataset="fashion-colour")).val
    prompts = list(ds.captions[:8])
    cond = pipe.encode_prompts(prompts)
    den = pipe.denoiser(cfg=args.cfg)
    full = pipe.sigmas("ddim", 50)
    from difforge.runs import find_resumable

    ckpt, _ = find_resumable(Path(args.run) / "checkpoints")
    step = json.loads((ckpt / "meta.json").read_text())["step"] if ckpt else None
    rows, result = [ds.images[:8]], {"run": args.run, "step": step, "prompts": prompts, "cfg": args.cfg, "starts": []}
    for start in (float(full[0]), 40.0, 15.0, 5.0):
        grid = full[full <= start + 1e-9]
        x = torch.randn(8, pipe.card.channels, pipe.card.image_size, pipe.card.image_size,
                        generator=torch.Generator().manual_seed(0)) * float(grid[0])
        with torch.no_grad():
            x = get_sampler("ddim")(den, x, grid, cond=cond)
        result["starts"].append({"sigma_start": round(float(grid[0]), 2), "steps": len(grid) - 1,
                                 "final_latent_std": round(x.std().item(), 3)})
        rows.append(pipe.to_images(x))
        print(result["starts"][-1], flush=True)
    save_grid(torch.cat(rows), args.grid, nrow=8, scale=2)
    result["machine"] = machine_record()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} and {args.grid}")


if __name__ == "__main__":
    main()
