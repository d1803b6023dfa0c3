"""Training throughput (images/s) and peak memory of model presets, fp32 vs bf16.

Each configuration runs in its own process (so peak RSS is its own): the real training
step of difforge (DDPM loss, AdamW, grad clipping, EMA) on Fashion-MNIST-shaped batches
at the main job's settings (batch 128, 1 channel, the size the preset trains at).

    python benchmarks/train_throughput.py            # all presets below, writes results
    python benchmarks/train_throughput.py --one unet fp32
    python benchmarks/train_throughput.py --presets unet --steps 8 --out results/NAME.json

The machine record names the CPU, its torch kernel level (AVX2, AVX512, ...) and whether
it computes bf16 natively: without AVX512-BF16 / AMX, bf16 autocast is emulated and
slower than fp32, so the two must be read with that field.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [("unet", "fp32"), ("unet", "bf16"), ("unet-seed", "fp32"), ("unet-seed", "bf16")]
STEPS = {"unet": 30, "unet-seed": 6}
BATCH = 128
HERE = Path(__file__).parent


def machine_record() -> dict:
    import os

    import torch

    from difforge.runtime import native_bf16

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"machine": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(torch.device("cpu")), "threads": torch.get_num_threads(),
            "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()]}


def write_record(path: Path, result: dict) -> None:
    """Write `result` and the machine as it is now ("machine_after") to `path` as JSON,
    creating its folder: the closing step of every benchmark here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "machine_after": machine_record()}, indent=2) + "\n")


def one(preset: str, precision: str) -> dict:
    import math

    import torch

    from difforge.config import TrainConfig
    from difforge.diffusion import FrameworkSpec, make_process
    from difforge.models import build_model, size_multiple
    from difforge.models.denoiser import Denoiser
    from difforge.train.ema import EMA
    from difforge.train.optim import build_optimizer

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = math.ceil(28 / size_multiple(preset)) * size_multiple(preset)
    torch.manual_seed(0)
    model = build_model(preset, in_channels=1, num_classes=10)
    ema = EMA(model, warmup=0)
    opt = build_optimizer(model, TrainConfig())
    den = Denoiser(model, make_process(FrameworkSpec()), "eps")  # DDPM, linear schedule
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(BATCH, 1, size, size) * 2 - 1
    labels = torch.randint(0, 11, (BATCH,))
    dtype = torch.bfloat16 if precision == "bf16" else None
    times = []
    for i in range(STEPS[preset] + 2):
        t0 = time.perf_counter()
        loss = den.loss(x0, labels, generator=gen, autocast=dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        if i >= 2:  # the first steps warm up allocators and kernels
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {
        "preset": preset,
        "precision": precision,
        "image_size": size,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "img_per_s": round(BATCH / step, 1),
        "step_s_median": round(step, 4),
        "step_s_min_max": [round(min(times), 4), round(max(times), 4)],
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
        "rss_increase_MiB": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 0),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, metavar=("PRESET", "PRECISION"))
    ap.add_argument("--out", default=str(HERE / "results" / "train_throughput.json"))
    ap.add_argument("--presets", nargs="+", help="only these presets (default: all of CONFIGS)")
    ap.add_argument("--steps", type=int, help="timed steps per configuration (default: STEPS)")
    args = ap.parse_args()
    if args.steps:
        STEPS.update({k: args.steps for k in STEPS})
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    rows = []
    before = machine_record()
    for preset, precision in [c for c in CONFIGS if not args.presets or c[0] in args.presets]:
        extra = ["--steps", str(args.steps)] if args.steps else []
        out = subprocess.run([sys.executable, __file__, "--one", preset, precision, *extra],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = {r["preset"]: r["img_per_s"] for r in rows if r["precision"] == "fp32"}
    print("\n| preset | precision | size | params (M) | img/s | vs fp32 | peak RSS (MiB) |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['precision']} | {r['image_size']} | {r['params_M']} | {r['img_per_s']} "
              f"| {r['img_per_s'] / base[r['preset']]:.2f}x | {r['peak_rss_MiB']:.0f} |")
    machine = {**before, "load_avg_after": machine_record()["load_avg_1_5_15"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "batch": BATCH, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
