"""The autoencoder of latent diffusion on fashion-colour: reconstruction quality against cost.

Trains one autoencoder per variant with `difforge.train.autoencoder.train_autoencoder`
(the code `difforge train-autoencoder` runs), each for the same number of steps, and
records what its card measured (PSNR on 2000 held-out images, FD of the reconstructions in
the domain classifier's features, the latent scale, training time and img/s) plus the
encoder's and decoder's throughput, and the **garment accuracy of the reconstructions**: the
garment classifier of `difforge evaluate`'s prompt sets (`difforge.eval.garment`) on 2000
test images and on their reconstructions, small and large garments apart. A latent
text-to-image model draws through the decoder, so the reconstructions' accuracy bounds the
garment accuracy its samples can reach. Variants: "NAME:factor=F,loss=L,base=B,channels=C";
`--existing NAME=DIR` measures an autoencoder already trained (`difforge train-autoencoder`).
The JSON is written after each variant, so a stopped run keeps what it finished.

    python benchmarks/autoencoder.py --steps 800 --out benchmarks/results/autoencoder.json \
        f2-l2:factor=2,loss=l2 f2-l1:factor=2,loss=l1 f4-l2:factor=4,loss=l2
    python benchmarks/autoencoder.py --existing ae=runs/ae --out benchmarks/results/autoencoder_runs.json
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
from text_guidance import by_size  # noqa: E402
from train_throughput import machine_record, write_record  # noqa: E402

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


@torch.no_grad()
def garment_accuracy(ae, test, classifier, n: int = 2000) -> dict:
    """Garment accuracy of `n` test images and of their reconstructions (posterior means),
    over all and by size."""
    from difforge.data.fashion_colour import SIZES
    from difforge.eval.attributes import measure_attributes

    images, truth = test.images[:n], test.attributes["garment"][:n]
    small = test.attributes["size"][:n] == SIZES.index("small")
    x = to_model_input(images, images.shape[-1])
    recon = torch.cat([ae.decode(ae.encode(x[i:i + 250])[0]) for i in range(0, n, 250)])
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    out = {"n": n}
    for name, imgs in (("originals", images), ("reconstructions", recon)):
        out[name] = by_size(measure_attributes(imgs, garment_classifier=classifier).garment == truth, small)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--existing", nargs="*", default=[], metavar="NAME=DIR",
                    help="autoencoders already trained: measured, not trained")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from difforge.eval.garment import load_or_train_garment_classifier

    data = DataConfig(dataset="fashion-colour")
    bundle = load_dataset(data)
    images = bundle.val.images[:1000]
    classifier = load_or_train_garment_classifier(data, bundle=bundle, log=print)
    result = {"dataset": "fashion-colour", "steps": args.steps, "batch_size": args.batch_size,
              "machine_before": machine_record(), "variants": {}}

    def record(name: str, ae, card, settings: dict) -> None:
        row = {"settings": settings, "latent": f"{card.latent_channels}x{card.latent_size}x{card.latent_size}",
               "scale": round(card.scale, 4), **card.metrics, **_throughput(ae, images, card.image_size),
               "garment_accuracy": garment_accuracy(ae, bundle.test, classifier),
               "load_avg_after": [round(v, 2) for v in os.getloadavg()]}
        result["variants"][name] = row
        print(name, json.dumps(row), flush=True)
        write_record(args.out, result)

    for text in args.existing:
        name, _, folder = text.partition("=")
        if not folder:
            raise SystemExit(f"--existing takes NAME=DIR, got {text!r}")
        ae, card = load_autoencoder(folder)
        record(name, ae, card, {**card.training, "folder": folder, **card.kwargs})
    for text in args.variants:
        name, kw = _variant(text)
        cfg = AutoencoderConfig(data=data, factor=kw.get("factor", 2), loss=kw.get("loss", "l2"),
                                base_channels=kw.get("base", 32), latent_channels=kw.get("channels", 4),
                                lr=kw.get("lr", 3e-3), steps=args.steps, batch_size=args.batch_size)
        with tempfile.TemporaryDirectory() as tmp:
            card = train_autoencoder(cfg, Path(tmp) / "ae", device="cpu", progress=False)
            ae, _ = load_autoencoder(Path(tmp) / "ae")
            record(name, ae, card, {**card.training, "factor": cfg.factor, "base_channels": cfg.base_channels,
                                    "latent_channels": cfg.latent_channels})
    write_record(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
