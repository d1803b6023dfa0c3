"""Image tasks on the Fashion-MNIST test set: inpainting, denoising, super-resolution,
each beside a classical baseline from scikit-image (or bicubic interpolation).

The first N test images (`--n`, default 200) are the ground truth. Metrics in [0, 1]
pixel units: PSNR (mean over images of 10 log10(1 / MSE)), SSIM (scikit-image,
data_range 1), and FD on the features of difforge's domain classifier (`difforge
train-classifier`; cached, or trained in about a minute) against the N ground-truth
images. "real floor" is the FD of N *other* test images against the same N: FD within
that is sampling noise. Writes benchmarks/results/tasks.json, benchmarks/tasks.md's
tables (printed) and example PNGs under benchmarks/results/tasks/.

    OMP_NUM_THREADS=1 python benchmarks/tasks.py runs/trial1 --n 200
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).parent


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1], measured in [0, 1] units."""
    mse = (((x.clamp(-1, 1) - y) / 2) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def psnr_region(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> float:
    """PSNR over the pixels where m = 1 only."""
    se = (((x.clamp(-1, 1) - y) / 2) ** 2 * m).flatten(1).sum(1)
    mse = (se / m.flatten(1).sum(1).clamp_min(1)).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    a, b = ((x.clamp(-1, 1) + 1) / 2).numpy(), ((y + 1) / 2).numpy()
    return float(np.mean([structural_similarity(a[i, 0], b[i, 0], data_range=1.0) for i in range(len(a))]))


class FD:
    def __init__(self, truth: torch.Tensor, other: torch.Tensor):
        from difforge.config import DataConfig
        from difforge.eval.classifier import load_or_train_classifier

        self.clf = load_or_train_classifier(DataConfig(dataset="fashion-mnist"), log=print)
        self.ref = self.clf.features(_u8(truth))
        self.floor = self(other)

    def __call__(self, x: torch.Tensor) -> float:
        from difforge.eval.metrics import frechet_distance_features

        return frechet_distance_features(self.clf.features(_u8(x)), self.ref)


def _u8(x: torch.Tensor) -> torch.Tensor:
    from difforge.io import to_uint8

    return to_uint8(x)


def biharmonic(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    from skimage.restoration import inpaint_biharmonic

    a, mk = ((x + 1) / 2).numpy(), m.numpy().astype(bool)
    out = np.stack([inpaint_biharmonic(a[i, 0], mk[i, 0]) for i in range(len(a))])[:, None]
    return torch.from_numpy(out).float() * 2 - 1


def nl_means(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """scikit-image's non-local means with the noise std known (h = 0.8 sigma, the
    setting its documentation uses with a known sigma), 5x5 patches, 13x13 search."""
    from skimage.restoration import denoise_nl_means

    a = ((y + 1) / 2).numpy()
    out = np.stack([denoise_nl_means(a[i, 0], h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                                     fast_mode=False) for i in range(len(a))])[:, None]
    return torch.from_numpy(out).float() * 2 - 1


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def row(name: str, out: torch.Tensor, truth: torch.Tensor, fd: FD, secs: float, mask=None) -> dict:
    r = {"method": name, "psnr": psnr(out, truth), "ssim": ssim(out, truth), "fd": fd(out), "seconds": secs}
    if mask is not None:
        r["psnr_hole"] = psnr_region(out, truth, mask)
    print(json.dumps(r), flush=True)
    return r


def examples(path: Path, rows: list[torch.Tensor], k: int = 8) -> None:
    from difforge.io import save_grid

    save_grid(torch.cat([_u8(r[:k]) for r in rows]), path, nrow=k, scale=3)


def render(result: dict) -> str:
    """Markdown tables of a results file."""
    def table(rows: list[dict], hole: bool = False) -> list[str]:
        head = "| method | PSNR (dB) |" + (" PSNR hole (dB) |" if hole else "") + " SSIM | FD | seconds |"
        out = [head, "|---" * (head.count("|") - 1) + "|"]
        for r in rows:
            out.append(f"| {r['method']} | {r['psnr']:.2f} |" + (f" {r['psnr_hole']:.2f} |" if hole else "")
                       + f" {r['ssim']:.3f} | {r['fd']:.2f} | {r['seconds']:.1f} |")
        return out

    lines = [f"N = {result['n']} test images; FD real floor (N other test images) = {result['fd_real_floor']:.2f}", ""]
    for mask, rows in result.get("inpaint", {}).items():
        lines += [f"Inpainting, mask `{mask}`:", "", *table(rows, hole=True), ""]
    for sigma, rows in result.get("denoise", {}).items():
        lines += [f"Denoising, sigma = {sigma} ([0, 1] pixel units):", "", *table(rows), ""]
    if "superres" in result:
        lines += ["Super-resolution 14 -> 28:", "", *table(result["superres"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="run or model directory (Fashion-MNIST)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--only", nargs="*", default=["inpaint", "denoise", "superres"])
    ap.add_argument("--sr-model", help="an SR3 run (train --task superres --scale 2) to add to the SR table")
    ap.add_argument("--out", default=str(HERE / "results" / "tasks.json"))
    ap.add_argument("--render", action="store_true", help="only print the tables of --out as markdown")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(Path(args.out).read_text())))
        return

    from difforge import tasks
    from difforge.data import load_fashion_mnist
    from difforge.pipeline import load_pipeline

    torch.manual_seed(0)
    pipe = load_pipeline(args.model)
    _, test = load_fashion_mnist()
    truth = test.images[: args.n].float() / 127.5 - 1
    other = test.images[args.n : 2 * args.n].float() / 127.5 - 1
    fd = FD(truth, other)
    pics = Path(args.out).with_suffix("")
    pics.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "model": args.model, "n": args.n,
              "fd_real_floor": fd.floor}
    print(f"real floor FD {fd.floor:.3f}", flush=True)

    if "inpaint" in args.only:
        result["inpaint"] = {}
        for mask_name in ("center", "left"):
            m = tasks.make_mask(mask_name, 28, args.n)
            masked = truth * (1 - m)
            bh, t_bh = timed(biharmonic, truth, m)
            bl, t_bl = timed(tasks.inpaint, pipe, truth, m, method="blend")
            rp, t_rp = timed(tasks.inpaint, pipe, truth, m, method="repaint")
            result["inpaint"][mask_name] = [
                row("biharmonic (scikit-image)", bh, truth, fd, t_bh, m),
                row("blended replacement, ddpm 50 steps", bl, truth, fd, t_bl, m),
                row("RePaint, ddpm 50 steps, jump 5 x 5", rp, truth, fd, t_rp, m),
            ]
            examples(pics / f"inpaint-{mask_name}.png", [truth, masked, bh, bl, rp])

    if "denoise" in args.only:
        result["denoise"] = {}
        g = torch.Generator().manual_seed(1)
        for sigma in (0.1, 0.2, 0.4):
            y = truth + 2 * sigma * torch.randn(truth.shape, generator=g)  # sigma in [0, 1] units
            nlm, t_nlm = timed(nl_means, y, sigma)
            d1, t_d1 = timed(tasks.denoise, pipe, y, sigma)
            ds, t_ds = timed(tasks.denoise, pipe, y, sigma, steps=50)
            result["denoise"][str(sigma)] = [
                row("noisy input", y, truth, fd, 0.0),
                row("non-local means (scikit-image)", nlm, truth, fd, t_nlm),
                row("model, 1 step (posterior mean)", d1, truth, fd, t_d1),
                row("model, DDIM from sigma (50-step grid)", ds, truth, fd, t_ds),
            ]
            examples(pics / f"denoise-{sigma}.png", [truth, y, nlm, d1, ds])

    if "superres" in args.only:
        from difforge.models.conditioning import downsample, upsample_bicubic

        low = downsample(truth, 2)  # 14x14, area (box) downsampling
        bic, t_bic = timed(upsample_bicubic, low, 28)
        il, t_il = timed(tasks.superres_ilvr, pipe, low, 2)
        ild, t_ild = timed(tasks.superres_ilvr, pipe, low, 2, sampler="ddim")
        rows = [row("bicubic", bic, truth, fd, t_bic), row("ILVR zero-shot, ddpm 50 steps", il, truth, fd, t_il),
                row("ILVR zero-shot, ddim 50 steps", ild, truth, fd, t_ild)]
        shown = [truth, F.interpolate(low, scale_factor=2, mode="nearest"), bic, il, ild]
        if args.sr_model:
            from difforge.tasks.superres import upscale

            sr = load_pipeline(args.sr_model)
            s3, t_s3 = timed(upscale, sr, low, 2)
            rows.append(row("SR3 model, ddpm 50 steps", s3, truth, fd, t_s3))
            shown.append(s3)
        result["superres"] = rows
        examples(pics / "superres-14-28.png", shown)

    old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    old.update(result)
    Path(args.out).write_text(json.dumps(old, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
