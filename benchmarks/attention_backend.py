"""CPU attention under bf16 autocast: PyTorch's kernel in bf16, its math path, or float32.

`F.scaled_dot_product_attention` on bf16 inputs picks a flash-attention kernel on the CPU.
For the short sequences of difforge's UNets (8x8 = 64 positions attending to themselves or
to a caption's tokens) its backward pass took a third of a text model's training step
(bf16 autocast on a CPU with native bf16). This times three ways to compute the same
attention inside bf16 autocast, taking turns in each repeat: "bf16" (what PyTorch picks),
"bf16 math" (its matmul-softmax-matmul path) and "fp32" (q, k, v cast to float32 and the
float32 kernel, the result cast back: what `difforge.models.layers.attention` does when it
trains on the CPU), at the shapes that matter: batch 64, 4 heads of 8 or 16 channels, 64 / 256 / 1024
queries (8x8, 16x16, 32x32 maps) against as many keys (self-attention) or 16 keys (a
caption), forward alone (sampling) and forward + backward (training).

    OMP_NUM_THREADS=1 python benchmarks/attention_backend.py --out benchmarks/results/attention_backend.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import machine_record, write_record  # noqa: E402

PATHS = ("bf16", "bf16 math", "fp32")
SHAPES = [  # (queries, keys, head dim): self-attention at 8x8 / 16x16 / 32x32, cross-attention to 16 tokens
    (64, 64, 8), (64, 16, 8), (256, 256, 16), (256, 16, 16), (1024, 1024, 16), (1024, 16, 16),
]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def case(n: int, length: int, d: int, path: str, backward: bool, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(64, 4, m, d, generator=g, requires_grad=backward) for m in (n, length, length)]

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, k, v = (t.to(torch.bfloat16) for t in leaves)  # as a bf16 Linear hands them over
            if path == "fp32":  # difforge.models.layers.attention's path when it trains on the CPU
                with torch.autocast("cpu", enabled=False):
                    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
            else:
                with sdpa_kernel([SDPBackend.MATH if path == "bf16 math" else SDPBackend.FLASH_ATTENTION]):
                    out = F.scaled_dot_product_attention(q, k, v)
        if backward:
            out.float().sum().backward()

    return timed(run, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="rounds, the two paths taking turns in each")
    ap.add_argument("--calls", type=int, default=5, help="calls timed per measurement")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = {"command": "python benchmarks/attention_backend.py " + " ".join(sys.argv[1:]),
              "machine_before": machine_record(), "batch": 64, "heads": 4, "autocast": "bf16", "rows": []}
    for n, length, d in SHAPES:
        for backward in (False, True):
            # the math path at 1024 x 1024 is an order of magnitude slower than the others: not a candidate
            paths = PATHS if n * length < 1024 * 1024 else ("bf16", "fp32")
            times = {p: [] for p in paths}
            for _ in range(args.repeats):
                for p in paths:
                    times[p].append(case(n, length, d, p, backward, args.calls))
            row = {"queries": n, "keys": length, "head_dim": d, "pass": "forward+backward" if backward else "forward",
                   "ms_median": {p: round(1e3 * statistics.median(t), 3) for p, t in times.items()}}
            for p in paths[:-1]:  # each against fp32, paired per repeat
                ratios = [a / b for a, b in zip(times[p], times["fp32"])]
                row[f"{p} / fp32 (min, median, max)"] = [round(min(ratios), 2), round(statistics.median(ratios), 2),
                                                         round(max(ratios), 2)]
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    write_record(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
