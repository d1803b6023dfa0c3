"""Benchmark `difforge prepare` + `inspect` on Fashion-MNIST exported as 70 000 PNG files.

1. Export the idx files (60k train + 10k test) as PNGs into EXPORT (one folder per class;
   not in the repository), unless already there.
2. Time `difforge prepare EXPORT STORE` with 1 decoding process and with 2, side by side,
   each in its own process; then `difforge inspect STORE` (report + contact sheets).
3. Time how long `load_dataset` takes to open the store (what `train --data STORE` does).
Writes benchmarks/results/prepare.json, the inspect report and the contact sheets under
benchmarks/results/prepare/.

    OMP_NUM_THREADS=1 python benchmarks/prepare.py [--export /tmp/fmnist-png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def export(out: Path) -> float:
    import numpy as np
    from PIL import Image

    from difforge.data import load_fashion_mnist

    t = time.perf_counter()
    train, test = load_fashion_mnist()
    for split, ds in (("train", train), ("test", test)):
        for i in range(len(ds)):
            name = ds.class_names[int(ds.labels[i])].replace("/", "-")
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(ds.images[i, 0])).save(folder / f"{split}-{i:05d}.png")
    return time.perf_counter() - t


def timed(cmd: list[str], log: Path) -> float:
    t = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", type=Path, default=Path("/tmp/fmnist-png"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/fmnist-prepared"))
    args = ap.parse_args()
    out = RESULTS / "prepare"
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "python": platform.python_version(),
    }
    if not (args.export / "Bag").is_dir():
        record["export_seconds"] = round(export(args.export), 1)
    record["files"] = sum(1 for _ in args.export.rglob("*.png"))

    cli = [sys.executable, "-m", "difforge"]
    args.work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[float]] = {"workers_1": [], "workers_2": []}
    for workers in (1, 2, 2, 1):  # alternated: the shared machine's load drifts
        store = args.work / f"store-w{workers}"
        shutil.rmtree(store, ignore_errors=True)
        cmd = [*cli, "prepare", str(args.export), str(store), "--workers", str(workers), "--no-progress"]
        runs[f"workers_{workers}"].append(round(timed(cmd, args.work / f"prepare-w{workers}.log"), 1))
        print(f"prepare, {workers} worker(s): {runs[f'workers_{workers}'][-1]} s", flush=True)
    record["prepare_seconds"] = runs  # wall clock of the whole command, including Python start-up
    for workers in (1, 2):
        lines = (args.work / f"prepare-w{workers}.log").read_text().strip().splitlines()
        record[f"log_workers_{workers}"] = [line.replace(str(args.work), "WORK") for line in lines]
    a = (args.work / "store-w1" / "manifest.json").read_bytes()
    b = (args.work / "store-w2" / "manifest.json").read_bytes()
    record["stores_identical"] = a == b  # the result must not depend on the worker count

    store = args.work / "store-w2"
    sheets = out / "contact_sheets"
    shutil.rmtree(sheets, ignore_errors=True)
    t = time.perf_counter()
    report = subprocess.run([*cli, "inspect", str(store), "--sheets", str(sheets), "--verify"],
                            check=True, capture_output=True, text=True).stdout
    record["inspect_seconds"] = round(time.perf_counter() - t, 1)
    report = report.replace(str(args.export), "EXPORT").replace(str(store), "STORE")
    (out / "inspect.txt").write_text(report.replace(str(HERE.parent) + "/", ""))

    from difforge.config import DataConfig
    from difforge.data import load_dataset

    t = time.perf_counter()
    bundle = load_dataset(DataConfig(dataset="prepared", path=str(store)))
    record["load_dataset_seconds"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    for i in range(0, len(bundle.train), 128):  # touch every training image once, in batches
        bundle.train.images[i : i + 128].float().mean()
    record["first_epoch_read_seconds"] = round(time.perf_counter() - t, 3)
    record["splits"] = {k: len(getattr(bundle, k)) for k in ("train", "val", "test")}
    (RESULTS / "prepare.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
