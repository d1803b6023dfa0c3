"""The autoencoder of latent diffusion on fashion-colour: reconstruction quality against cost.

Trains one autoencoder per variant with `difforge.train.autoencoder.train_autoencoder`
(the code `difforge train-autoencoder` runs), each for the same number of steps, and
records what its card measured (PSNR on 2000 held-out images, FD of the reconstructions in
the domain classifier's features, the latent scale, training time and img/s) plus the
encoder's and decoder's throughput. Variants: "NAME:factor=F,loss=L,base=B".

    python benchmarks/autoencoder.py --steps 800 --out benchmarks/results/autoencoder.json \
        f2-l2:factor=2,loss=l2 f2-l1:factor=2,loss=l1 f4-l2:factor=4,loss=l2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import machine_record  # noqa: E402

from difforge.config import DataConfig  # noqa: E402
from difforge.data import load_dataset, to_model_input  # noqa: E402
from difforge.models.autoencoder import load_autoencoder  # noqa: E402
from difforge.train.autoencoder import AutoencoderConfig, train_autoencoder  # noqa: E402

KEYS = {"factor": int, "loss": str, "base": int, "channels": int, "lr": float}


def _variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    kw = {}
    for part in filter(None, spec.split(",")):
        k, _, v = part.partition("=")
        if k not in KEYS:
            raise SystemExit(f"unknown variant key {k!r}; expected one of {list(KEYS)}")
        kw[k] = KEYS[k](v)
    return name, kw


@torch.no_grad()
def _throughput(ae, images: torch.Tensor, size: int) -> dict:
    x = to_model_input(images, size)
    ae.encode(x[:50])
    t = time.perf_counter()
    mean, _ = ae.encode(x)
    enc = len(x) / (time.perf_counter() - t)
    t = time.perf_counter()
    ae.decode(mean)
    dec = len(x) / (time.perf_counter() - t)
    return {"encode_img_per_s": round(enc, 1), "decode_img_per_s": round(dec, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    data = DataConfig(dataset="fashion-colour")
    images = load_dataset(data).val.images[:1000]
    result = {"dataset": "fashion-colour", "steps": args.steps, "batch_size": args.batch_size,
              "machine_before": machine_record(), "variants": {}}
    for text in args.variants:
        name, kw = _variant(text)
        cfg = AutoencoderConfig(data=data, factor=kw.get("factor", 2), loss=kw.get("loss", "l2"),
                                base_channels=kw.get("base", 32), latent_channels=kw.get("channels", 4),
                                lr=kw.get("lr", 3e-3), steps=args.steps, batch_size=args.batch_size)
        with tempfile.TemporaryDirectory() as tmp:
            card = train_autoencoder(cfg, Path(tmp) / "ae", device="cpu", progress=False)
            ae, _ = load_autoencoder(Path(tmp) / "ae")
            row = {"settings": {**card.training, "factor": cfg.factor, "base_channels": cfg.base_channels,
                                "latent_channels": cfg.latent_channels},
                   "latent": f"{card.latent_channels}x{card.latent_size}x{card.latent_size}",
                   "scale": round(card.scale, 4), **card.metrics, **_throughput(ae, images, card.image_size),
                   "load_avg_after": [round(v, 2) for v in os.getloadavg()]}
        result["variants"][name] = row
        print(name, json.dumps(row), flush=True)
    result["machine_after"] = machine_record()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
