"""Training throughput of candidate UNet sizes (params, img/s in fp32 and bf16 autocast).

One step = forward + MSE loss + backward + AdamW, on random 28x28x1 images with random
timesteps and labels (Fashion-MNIST shape), batch 128 by default.

    .venv/bin/python benchmarks/model_sizes.py            # all candidates
    .venv/bin/python benchmarks/model_sizes.py --only unet tiny --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from difforge.models import PRESETS, UNet, build_model

# name -> UNet keyword arguments (presets are added by name below).
CANDIDATES: dict[str, dict] = {
    "b32-r1": dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1),
    "b32-r1-124": dict(base_channels=32, channel_mults=(1, 2, 4), num_res_blocks=1),
    "b32-r2": dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2),
    "b32-r2-124": dict(base_channels=32, channel_mults=(1, 2, 4), num_res_blocks=2),
    "b40-r1": dict(base_channels=40, channel_mults=(1, 2, 2), num_res_blocks=1),
    "b48-r1": dict(base_channels=48, channel_mults=(1, 2, 2), num_res_blocks=1),
    "b48-r2": dict(base_channels=48, channel_mults=(1, 2, 2), num_res_blocks=2),
    "b64-r1": dict(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=1),
    "b64-r2": dict(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2),
}


def make(name: str) -> nn.Module:
    if name in PRESETS:
        return build_model(name, in_channels=1, num_classes=10)
    return UNet(1, 1, 10, attention_levels=(2,), **CANDIDATES[name])


def images_per_second(model: nn.Module, batch: int, size: int, steps: int, bf16: bool) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g)
    t = torch.rand(batch, generator=g) * 999
    y = torch.randint(0, 11, (batch,), generator=g)
    target = torch.randn(batch, 1, size, size, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t, y)
        loss = nn.functional.mse_loss(out.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, oneDNN primitive caches
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)  # the median resists noisy neighbours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="candidate or preset names (default: all)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--steps", type=int, default=7)
    args = ap.parse_args()
    names = args.only or [*CANDIDATES, "unet", "tiny"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, {args.size}x{args.size}x1, median of {args.steps} timed steps")
    print(f"{'model':<12} {'params':>10} {'fp32 img/s':>11} {'bf16 img/s':>11}")
    for name in names:
        torch.manual_seed(0)
        model = make(name).train()
        params = sum(p.numel() for p in model.parameters())
        fp32 = images_per_second(model, args.batch, args.size, args.steps, bf16=False)
        bf16 = images_per_second(model, args.batch, args.size, args.steps, bf16=True)
        print(f"{name:<12} {params:>10,} {fp32:>11.1f} {bf16:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
