"""What a training step of the space-time UNet costs, network by network, side by side.

One forward and backward pass of a batch of 8 moving-fashion-mnist-sized clips (16 frames of
32 x 32, one channel, observed-frame channels as a trained model has them) with a class label
each, timed as the median of `--repeats` passes after a warm-up, for each network below in
turn and then again in the reverse order (so drift in the machine's speed shows). Ratios are
to the first network (configs/video.yaml's network before patches). Parameters are counted.

    OMP_NUM_THREADS=1 python benchmarks/stunet_cost.py --out benchmarks/results/stunet_cost.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import machine_record, write_record  # noqa: E402

NETWORKS = {
    "space-down, 16 ch, 1-2-4": dict(base_channels=16, channel_mults=(1, 2, 4), time_down=False),
    "time-down, 16 ch, 1-2-4": dict(base_channels=16, channel_mults=(1, 2, 4), time_down=True),
    "space-down, patch 2, 24 ch, 1-2-4": dict(base_channels=24, channel_mults=(1, 2, 4), time_down=False,
                                              patch_size=2),
    "time-down, patch 2, 24 ch, 1-2-4": dict(base_channels=24, channel_mults=(1, 2, 4), time_down=True,
                                             patch_size=2),
    "time-down, patch 2, 24 ch, 1-2-4, head 8": dict(base_channels=24, channel_mults=(1, 2, 4), time_down=True,
                                                     patch_size=2, head_channels=8),
}


def step_seconds(kwargs: dict, repeats: int) -> tuple[float, int]:
    import torch

    from difforge.models.stunet import STUNet

    torch.manual_seed(0)
    net = STUNet(1, 1, 10, attention_levels=(2,), num_heads=4, cond_channels=2, **kwargs)
    x, sigma, labels = torch.randn(8, 1, 16, 32, 32), torch.rand(8), torch.randint(0, 10, (8,))

    def one() -> float:
        t0 = time.perf_counter()
        net.zero_grad()
        net(x, sigma, labels).square().mean().backward()
        return time.perf_counter() - t0

    one()
    return statistics.median(one() for _ in range(repeats)), sum(p.numel() for p in net.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    result = {"machine_before": machine_record(), "batch": "8 clips x 16 frames x 32x32", "repeats": a.repeats,
              "networks": {}}
    names = list(NETWORKS)
    for name in names + names[::-1]:
        seconds, params = step_seconds(NETWORKS[name], a.repeats)
        entry = result["networks"].setdefault(name, {"kwargs": NETWORKS[name], "params": params, "seconds": []})
        entry["seconds"].append(round(seconds, 4))
        print(f"{name}: {seconds:.3f} s per step, {params} parameters", flush=True)
    base = statistics.mean(result["networks"][names[0]]["seconds"])
    for entry in result["networks"].values():
        entry["ratio_to_first"] = round(statistics.mean(entry["seconds"]) / base, 3)
    write_record(a.out, result)
    for name, entry in result["networks"].items():
        print(f"| {name} | {entry['params'] / 1e6:.2f}M | {entry['ratio_to_first']:.2f} |")


if __name__ == "__main__":
    main()
