"""The `difforge` command: each sub-command parses, builds a config, makes one call."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from difforge import __version__

# Copies of difforge.sampling.SAMPLERS and difforge.diffusion.grids.GRIDS, so that
# `difforge --help` does not import torch; tests/cli checks that they agree.
SAMPLER_NAMES = ("ddpm", "ddim", "euler", "euler-a", "heun", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m",
                 "langevin", "reverse-sde", "pc")
FRAMEWORK_NAMES = ("ddpm", "ncsn", "vp-sde", "subvp-sde", "ve-sde", "edm")  # difforge.diffusion.frameworks
GRID_NAMES = ("leading", "trailing", "linspace", "karras", "log-snr")
GIF_FRAMES = 16  # at most this many frames of the denoising, plus the final images


class UserError(click.ClickException):
    """A one-line error for the user (exit status 2... click uses 1)."""


def _fail(e: Exception) -> None:
    raise UserError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="difforge")
def cli() -> None:
    """difforge: train diffusion models on your own images and use them.

    \b
    Quick start:
      difforge train --out runs/demo --max-steps 3000   # Fashion-MNIST, class-conditional
      difforge sample runs/demo --out demo.png           # one row per class
      difforge export runs/demo --out models/demo        # model.safetensors + config.json
    """


# ---------------------------------------------------------------- train
@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config; CLI options override it.")
@click.option("--dataset", type=click.Choice(["fashion-mnist", "digits"]), help="Built-in dataset. [default: fashion-mnist]")
@click.option("--data", "data_path", type=click.Path(), help="Image folder (sub-folders = classes; flat = unconditional), a folder of Fashion-MNIST idx files, or a `difforge prepare` store.")
@click.option("--out", help="Run directory. [default: runs/default]")
@click.option("--model", "preset", help="Model preset: unet (default), unet-seed (the article's), tiny, ...")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps (wins over --epochs).")
@click.option("--epochs", type=int, help="Passes over the training split. [default: 1 when --max-steps is absent]")
@click.option("--batch-size", type=int, help="Images per step. [default: 128]")
@click.option("--lr", type=float, help="Peak learning rate. [default: 2e-3]")
@click.option("--lr-schedule", type=click.Choice(["onecycle", "cosine", "constant"]), help="[default: onecycle]")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), help="Noise (beta) schedule. [default: linear]")
@click.option("--framework", type=click.Choice(FRAMEWORK_NAMES), help="ddpm (Ho et al. 2020), ncsn (Song & Ermon "
              "2019), vp-sde / subvp-sde / ve-sde (Song et al. 2021), edm (Karras et al. 2022); docs/frameworks.md. "
              "[default: ddpm]")
@click.option("--prediction", type=click.Choice(["eps", "x0", "v"]), help="Network target for ddpm, vp-sde and "
              "subvp-sde. [default: eps]")
@click.option("--min-snr-gamma", type=float, help="Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; ddpm, "
              "vp-sde and subvp-sde. [default: off]")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="fp16 needs CUDA. [default: fp32]")
@click.option("--conditional/--unconditional", default=None, help="Class-conditional when the data has labels. [default: conditional]")
@click.option("--task", type=click.Choice(["generate", "superres"]), help="superres: an SR3 model conditioned on the "
              "image downsampled by --scale (use it with `difforge upscale`). [default: generate]")
@click.option("--scale", type=int, help="Upscaling factor for --task superres, e.g. 2 or 4. [default: 2]")
@click.option("--image-size", type=int, help="Model input size. [default: native size rounded up to what the model needs]")
@click.option("--checkpoint-every", type=int, help="Steps between checkpoints (0: only at the end). [default: 1000]")
@click.option("--sample-every", type=int, help="Steps between sample grids (0: only at the end). [default: 500]")
@click.option("--ema-decay", type=float, help="[default: 0.995]")
@click.option("--ema-warmup", type=int, help="Steps during which the EMA is a plain copy. [default: 2000]")
@click.option("--seed", type=int, help="Seed for initialisation, data order and noise. [default: 0]")
@click.option("--device", help="auto, cpu, cuda or cuda:N. [default: auto]")
@click.option("--wandb", is_flag=True, default=None, help="Log to Weights & Biases (offline without WANDB_API_KEY).")
@click.option("--tensorboard", is_flag=True, default=None, help="Log to TensorBoard under RUN_DIR/tensorboard.")
@click.option("--eval-every", type=int, help="Steps between FD/KID evaluations of the EMA weights (domain classifier "
              "features), logged to metrics.jsonl, W&B and TensorBoard; 0: off. [default: 0]")
@click.option("--eval-samples", type=int, help="Images generated per in-training evaluation. [default: 500]")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest valid checkpoint.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(config_file, dataset, data_path, out, preset, max_steps, epochs, batch_size, lr, lr_schedule,
          schedule, framework, prediction, min_snr_gamma, precision, conditional, task, scale, image_size, checkpoint_every, sample_every, ema_decay,
          ema_warmup, seed, device, wandb, tensorboard, eval_every, eval_samples, resume, no_progress) -> None:
    """Train a diffusion model (DDPM, or --framework ncsn, vp-sde, subvp-sde, ve-sde, edm) and
    write a run directory.

    The run directory holds config.yaml, model.json, metrics.jsonl, samples/ and
    checkpoints/. With --resume the run's own config.yaml is used.
    """
    from difforge.config import ConfigError, RunConfig, config_from_dict, load_config
    from difforge.train.checkpoint import CheckpointError
    from difforge.train.loop import TrainingError

    overrides: dict = {"data": {}, "model": {}, "diffusion": {}, "train": {}}
    if dataset is not None:
        overrides["data"]["dataset"] = dataset
    if data_path is not None:
        if not Path(data_path).exists():
            _fail(FileNotFoundError(f"--data {data_path}: no such file or directory"))
        overrides["data"]["path"] = str(data_path)
        if dataset is None:
            overrides["data"]["dataset"] = _guess_dataset(Path(data_path))
    put = {
        ("data", "image_size"): image_size, ("model", "preset"): preset, ("model", "conditional"): conditional,
        ("model", "task"): task, ("model", "scale"): scale,
        ("diffusion", "schedule"): schedule, ("diffusion", "framework"): framework,
        ("diffusion", "prediction"): prediction, ("diffusion", "min_snr_gamma"): min_snr_gamma, ("train", "max_steps"): max_steps, ("train", "epochs"): epochs,
        ("train", "batch_size"): batch_size, ("train", "lr"): lr, ("train", "lr_schedule"): lr_schedule,
        ("train", "precision"): precision, ("train", "checkpoint_every"): checkpoint_every,
        ("train", "sample_every"): sample_every, ("train", "ema_decay"): ema_decay,
        ("train", "ema_warmup"): ema_warmup, ("train", "seed"): seed, ("train", "device"): device,
        ("train", "wandb"): wandb, ("train", "tensorboard"): tensorboard,
        ("train", "eval_every"): eval_every, ("train", "eval_samples"): eval_samples,
    }
    for (section, key), value in put.items():
        if value is not None:
            overrides[section][key] = value
    if out is not None:
        overrides["out"] = out
    ignored = [k for section in ("data", "model", "diffusion", "train") for k in overrides[section]]
    if resume and (ignored or config_file):
        click.echo(f"note: --resume continues with the run's own config.yaml; ignoring "
                   f"{', '.join(ignored + (['--config'] if config_file else []))}", err=True)
    try:
        base = load_config(config_file) if config_file else RunConfig()
        cfg = config_from_dict(overrides, base)
        from difforge.train.loop import train as run_training

        result = run_training(cfg, resume=resume, progress=not no_progress)
    except (ConfigError, FileNotFoundError, ValueError, CheckpointError, TrainingError) as e:
        _fail(e)
    if not result.stopped_early and result.rank == 0:
        click.echo(f"done: {result.step} steps; samples in {result.run_dir / 'samples'}, "
                   f"checkpoints in {result.run_dir / 'checkpoints'}")


def _is_idx_folder(path: Path) -> bool:
    return path.is_dir() and any(p.name.startswith("train-images-idx3-ubyte") for p in path.iterdir())


def _guess_dataset(path: Path) -> str:
    """The dataset kind of a --data path: a prepared store, an idx folder, or an image folder."""
    from difforge.data.store import is_store

    return "prepared" if is_store(path) else "fashion-mnist" if _is_idx_folder(path) else "folder"


# ---------------------------------------------------------------- sample
@cli.command()
@click.argument("model_dir", type=click.Path())
@click.option("--out", default="samples.png", show_default=True, help="PNG grid to write.")
@click.option("--n", "n", type=int, help="Images in all. [default: 10 per class, or 64 unconditional]")
@click.option("--class", "klass", help="Sample only this class (index or name).")
@click.option("--classes", help="Comma-separated classes (indices or names), one grid row each.")
@click.option("--cfg", type=float, help="Classifier-free guidance scale (1: none). [default: 3]")
@click.option("--cfg-rescale", type=float, default=0.0, help="Guidance rescale phi in [0, 1] (Lin et al. 2024; 0.7 is "
              "typical): pulls the guided prediction's spread back to the conditional one's. [default: 0, off]")
@click.option("--threshold", type=float, help="Dynamic thresholding of x0 at this percentile of |x0| (Imagen; e.g. "
              "0.995) instead of clipping to [-1, 1]; helps at high --cfg.")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default="ddim", show_default=True,
              help="ddpm: ancestral (Ho et al. 2020); ddim (Song et al. 2021); euler, euler-a (ancestral), heun "
              "(Karras et al. 2022); dpmpp-2m, dpmpp-3m: DPM-Solver++ multistep (Lu et al. 2022); dpmpp-2m-sde: "
              "its stochastic variant, best at 15-30 steps on a briefly trained model. langevin: annealed Langevin "
              "dynamics (Song & Ermon 2019, 5 calls per level); reverse-sde: Euler-Maruyama on the reverse SDE; pc: "
              "it plus a Langevin corrector (Song et al. 2021, 2 calls per step).")
@click.option("--steps", type=int, help="Sampler steps; heun makes 2 denoiser calls per step, the others 1. "
              "[default: every timestep (1000) for ddpm, 50 for ddim, euler and euler-a, 25 for heun and the dpmpp "
              "samplers]")
@click.option("--schedule", "--grid", "grid", type=click.Choice(GRID_NAMES), help="Noise levels the steps visit: "
              "leading / trailing / linspace subsets of the training timesteps, karras (rho = 7), or log-snr "
              "(uniform). [default: trailing for ddpm and ddim, karras for the others]")
@click.option("--eta", type=float, help="Fresh noise per step, for ddim (default 0: deterministic), euler-a and "
              "dpmpp-2m-sde (default 1: full ancestral / SDE noise).")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--npz", type=click.Path(dir_okay=False), help="Also write images (N,H,W,C uint8) and labels to this .npz.")
@click.option("--gif", type=click.Path(dir_okay=False), help=f"Also write an animated GIF of the denoised estimate "
              f"over the steps (at most {GIF_FRAMES} frames, then the result).")
@click.option("--device", default="auto", show_default=True)
def sample(model_dir, out, n, klass, classes, cfg, cfg_rescale, threshold, sampler, steps, grid, eta, seed, ema, npz,
           gif, device) -> None:
    """Generate images from a run directory or an exported model directory."""
    from difforge.pipeline import load_pipeline
    from difforge.train.loop import resolve_device

    try:
        pipe = load_pipeline(model_dir, ema=ema, device=resolve_device(device))
        labels = None
        if klass is not None and classes is not None:
            raise ValueError("give --class or --classes, not both")
        if pipe.num_classes:
            chosen = None
            if klass is not None:
                chosen = [pipe.parse_class(klass)]
            elif classes is not None:
                chosen = [pipe.parse_class(c) for c in classes.split(",") if c.strip()]
            k = len(chosen) if chosen else pipe.num_classes
            total = n or 10 * k
            labels = pipe.default_labels(per_class=-(-total // k), classes=chosen)[:total]
        elif klass is not None or classes is not None:
            raise ValueError("this model is unconditional: --class/--classes do not apply")
        from difforge.sampling import sampler_options

        options = {}
        if eta is not None:
            if "eta" not in sampler_options(sampler):
                takers = ", ".join(k for k in SAMPLER_NAMES if "eta" in sampler_options(k))
                raise ValueError(f"--eta applies to {takers}, not to {sampler}")
            options["eta"] = eta
        from tqdm.auto import tqdm

        sigmas = pipe.sigmas(sampler, steps, grid)
        n_steps = len(sigmas) - 1
        every = -(-n_steps // GIF_FRAMES)
        frames: dict[int, list] = {}
        total_n = len(labels) if labels is not None else (n or 64)
        batches = -(-total_n // 100)

        with tqdm(total=n_steps * batches, desc=f"sample ({sampler})", unit="step", dynamic_ncols=True) as bar:
            def on_step(d: dict) -> None:  # once per step (heun: per step, not per denoiser call)
                bar.update(1)
                # the last step's estimate is the result itself, added at the end
                if gif and d["i"] % every == 0 and d["i"] < n_steps - 1:
                    frames.setdefault(d["i"], []).append(pipe.to_images(d["denoised"]))

            images, labels = pipe.generate(n=total_n, labels=labels, cfg=cfg, sampler=sampler, steps=steps, grid=grid,
                                           seed=seed, cfg_rescale=cfg_rescale, threshold=threshold,
                                           callback=on_step, **options)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    path = pipe.save_grid(images, out, labels)
    click.echo(f"wrote {path} ({len(images)} images)")
    if npz:
        from difforge.io import save_npz

        click.echo(f"wrote {save_npz(npz, images, labels)}")
    if gif:
        import torch

        gif_frames = [torch.cat(frames[i]) for i in sorted(frames)] + [images]
        click.echo(f"wrote {pipe.save_gif(gif_frames, gif, labels)} ({len(gif_frames)} frames)")


# ---------------------------------------------------------------- export
@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, help="Directory to write model.safetensors and config.json to.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Export the EMA weights.")
def export(run_dir, out, ema) -> None:
    """Export a run's newest checkpoint as a standalone model directory."""
    from difforge.pipeline import export_model

    try:
        path = export_model(run_dir, out, ema=ema)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {path / 'model.safetensors'} and {path / 'config.json'}")


# ---------------------------------------------------------------- train-classifier
def _data_config(dataset, data_path):
    """A DataConfig from --dataset / --data, or None when neither is given."""
    from difforge.config import DataConfig

    if data_path is not None:
        if not Path(data_path).exists():
            raise FileNotFoundError(f"--data {data_path}: no such file or directory")
        if dataset is None:
            dataset = _guess_dataset(Path(data_path))
        return DataConfig(dataset=dataset, path=str(data_path))
    return DataConfig(dataset=dataset) if dataset is not None else None


@cli.command("train-classifier")
@click.option("--dataset", type=click.Choice(["fashion-mnist", "digits"]), help="Built-in dataset. [default: fashion-mnist]")
@click.option("--data", "data_path", type=click.Path(), help="Labelled image folder (sub-folders = classes), or a folder of Fashion-MNIST idx files.")
@click.option("--out", help="Directory for model.safetensors + classifier.json. [default: $DIFFORGE_CACHE/classifiers/"
              "<dataset-key>, DIFFORGE_CACHE defaulting to ~/.cache/difforge; `evaluate` looks there]")
@click.option("--epochs", type=int, help="Passes over the training split. [default: 5, more on small sets (>= 1200 steps, <= 100 epochs)]")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
def train_classifier(dataset, data_path, out, epochs, batch_size, seed, device) -> None:
    """Train the domain classifier that `evaluate` measures samples with.

    A small CNN on the training split; its accuracy is measured on the test split (else
    the validation split). `evaluate` trains one by itself when none is cached.
    """
    from difforge.config import ConfigError, DataConfig

    try:
        from difforge.data import load_dataset
        from difforge.eval.classifier import ClassifierConfig, classifier_dir, dataset_key
        from difforge.eval.classifier import train_classifier as train_clf
        from difforge.train.loop import resolve_device

        data = _data_config(dataset, data_path) or DataConfig()
        if epochs is not None and epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {epochs}")
        cfg = ClassifierConfig(epochs=epochs, batch_size=batch_size, seed=seed)
        clf = train_clf(load_dataset(data), cfg, dataset_key=dataset_key(data), data=data,
                        device=resolve_device(device), log=click.echo)
        path = clf.save(Path(out) if out else classifier_dir(data))
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    m = clf.meta
    click.echo(f"{m['test_accuracy']:.2%} accuracy on {m['eval_images']} {m['eval_split']} images after {m['epochs']} "
               f"epochs ({m['train_seconds']:g} s); wrote {path}")


# ---------------------------------------------------------------- evaluate
def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--cfg-sweep must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError("--cfg-sweep is empty")
    return values


@cli.command()
@click.argument("model_dir", type=click.Path(), required=False)
@click.option("--out", help="Report directory. [default: MODEL_DIR/eval]")
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Images to generate (class-balanced for a "
              "conditional model); the real-vs-real floor uses as many training images.")
@click.option("--npz", type=click.Path(dir_okay=False), help="Score these samples (images N,H,W,C uint8 and optional "
              "labels, as `sample --npz` writes) instead of sampling.")
@click.option("--cfg", type=float, help="Classifier-free guidance scale. [default: 3]")
@click.option("--cfg-sweep", help="Also sample and score N images at each of these guidance scales, e.g. 1,2,3,5.")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default="ddim", show_default=True)
@click.option("--steps", type=int, help="Sampler steps. [default: as for `sample`]")
@click.option("--schedule", "--grid", "grid", type=click.Choice(GRID_NAMES), help="Noise levels the steps visit. "
              "[default: as for `sample`]")
@click.option("--eta", type=float, help="Fresh noise per step, for ddim, euler-a and dpmpp-2m-sde.")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--dataset", type=click.Choice(["fashion-mnist", "digits"]), help="Real data to compare with. "
              "[default: the model's training data]")
@click.option("--data", "data_path", type=click.Path(), help="Real images to compare with (folder or idx folder).")
@click.option("--classifier", "classifier_path", type=click.Path(file_okay=False), help="Domain classifier directory. "
              "[default: the cached one for the data, trained on first use]")
@click.option("--inception", type=click.Path(dir_okay=False), help="TorchScript Inception-v3 (NVIDIA's "
              "inception-2015-12-05.pt) for the standard FID; never downloaded. [default: "
              "$DIFFORGE_CACHE/inception-2015-12-05.pt when present]")
@click.option("--k", "k", type=int, default=3, show_default=True, help="Neighbours for precision/recall radii.")
@click.option("--bpd", type=int, default=0, show_default=True, help="Bits/dim on this many test images: the DDPM "
              "variational bound (Ho et al. 2020); 0: skip.")
@click.option("--bpd-ode", is_flag=True, help="With --bpd, also the exact likelihood of the probability-flow ODE (slower).")
@click.option("--bpd-timesteps", type=int, default=100, show_default=True, help="VLB timesteps per image, stratified "
              "(an unbiased estimate of the sum); 0: all of them (exact sum, T network calls per image).")
@click.option("--memorization/--no-memorization", default=True, show_default=True, help="Nearest-training-image "
              "audit of the samples against held-out real images.")
@click.option("--device", default="auto", show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def evaluate(model_dir, out, n, npz, cfg, cfg_sweep, sampler, steps, grid, eta, seed, ema, dataset, data_path,
             classifier_path, inception, k, bpd, bpd_ode, bpd_timesteps, memorization, device, no_progress) -> None:
    """Measure a model: FD, KID, precision/recall, classifier score, conditional accuracy,
    per-class FD, each next to its real-vs-real floor at the same N.

    Writes report.json, report.md, samples.png and charts to --out. MODEL_DIR is a run or
    an exported model directory; with --npz and --dataset/--data it may be left out.
    """
    from difforge.config import ConfigError

    try:
        from difforge.eval.evaluate import EvalConfig, evaluate as run_eval
        from difforge.train.loop import resolve_device

        if out is None:
            if model_dir is None:
                raise ValueError("give --out DIR when there is no MODEL_DIR")
            out = str(Path(model_dir) / "eval")
        if inception is not None and not Path(inception).is_file():
            raise FileNotFoundError(f"--inception {inception}: no such file (difforge never downloads weights)")
        if k < 1:
            raise ValueError(f"--k must be >= 1, got {k}")
        sweep = _float_list(cfg_sweep) if cfg_sweep is not None else ()
        ecfg = EvalConfig(n=n, sampler=sampler, steps=steps, grid=grid, cfg=cfg, eta=eta, seed=seed, ema=ema,
                          cfg_sweep=sweep, k=k, bpd=bpd, bpd_ode=bpd_ode, memorization=memorization,
                          bpd_timesteps=bpd_timesteps or None)
        if bpd_timesteps < 0:
            raise ValueError(f"--bpd-timesteps must be >= 0, got {bpd_timesteps}")
        if bpd_ode and not bpd:
            raise ValueError("--bpd-ode needs --bpd N (the number of test images)")
        report = run_eval(model_dir, out, ecfg, data=_data_config(dataset, data_path), npz=npz,
                          classifier=classifier_path, inception=inception, device=resolve_device(device),
                          progress=not no_progress, log=click.echo)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    for space, m in report["metrics"].items():
        f = report["floor"][space]
        click.echo(f"{space}: FD {m['fd']:.4g} (floor {f['fd']:.4g}), KID {m['kid']:.3g} (floor {f['kid']:.3g}), "
                   f"precision {m['precision']:.3f}, recall {m['recall']:.3f}"
                   + (f", accuracy {m['conditional_accuracy']:.3f}" if "conditional_accuracy" in m else ""))
    if report["inception"]["status"] != "computed":
        click.echo(f"inception: {report['inception']['status']}")
    if report.get("likelihood"):
        lk = report["likelihood"]
        parts = ([f"VLB {lk['vlb']['large']['bpd']:.4g}"] if lk.get("vlb") else []) + (
            [f"ODE {lk['ode']['bpd']:.4g}"] if lk.get("ode") else [])
        click.echo(f"bits/dim on {lk['n']} {lk['split']} images: {', '.join(parts)}")
    if report.get("memorization"):
        m = report["memorization"]["pixel"]
        click.echo(f"memorization (pixels): {m['near_copy_fraction']:.2%} near-copies (held-out real: "
                   f"{m['heldout_fraction']:.2%}); median nearest-training distance {m['median_generated']:.4g} "
                   f"(held-out {m['median_heldout']:.4g})")
    click.echo(f"wrote {Path(out) / 'report.md'} and report.json (N = {report['n']})")


# ---------------------------------------------------------------- image tasks
def _task_options(sampler_default: str):
    """Options shared by inpaint, restore, denoise and upscale."""
    opts = [
        click.argument("model_dir", type=click.Path()),
        click.option("--out", required=True, help="Output: a PNG (one image), a grid PNG (several), or .npz."),
        click.option("--class", "klass", help="Class (index or name) for a class-conditional model. "
                     "[default: none, the unconditional model]"),
        click.option("--cfg", type=float, help="Classifier-free guidance scale with --class. [default: 3]"),
        click.option("--sampler", type=click.Choice(SAMPLER_NAMES), help=f"[default: {sampler_default}]"),
        click.option("--steps", type=int, help="Sampler steps (of the whole noise range)."),
        click.option("--eta", type=float, help="Fresh noise per step, for ddim and euler-a."),
        click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i."),
        click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run."),
        click.option("--device", default="auto", show_default=True),
    ]

    def wrap(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return wrap


def _common(model_dir, klass, cfg, sampler, steps, eta, seed, ema, device):
    from difforge.tasks.files import Common

    return Common(model_dir, klass, cfg, sampler, steps, seed, ema, device, eta)


@cli.command()
@_task_options("ddpm")
@click.option("--image", required=True, type=click.Path(), help="Image (PNG...) at the model's size, or an .npz batch.")
@click.option("--mask", required=True, help="Mask PNG (white = fill, black = keep) or a preset: "
              "center, left, right, top, bottom, strokes, lines.")
@click.option("--method", type=click.Choice(["repaint", "blend"]), default="repaint", show_default=True,
              help="RePaint (with resampling) or blended replacement at every step.")
@click.option("--jump-length", type=int, default=5, show_default=True, help="RePaint: levels per jump back.")
@click.option("--resample", type=int, default=5, show_default=True, help="RePaint: times each stretch is sampled.")
def inpaint(model_dir, out, klass, cfg, sampler, steps, eta, seed, ema, device, image, mask, method, jump_length,
            resample) -> None:
    """Fill the masked part of an image (RePaint, Lugmayr et al. 2022)."""
    from difforge.tasks.files import inpaint_files

    try:
        path = inpaint_files(_common(model_dir, klass, cfg, sampler, steps, eta, seed, ema, device), image, mask, out,
                             method, jump_length, resample)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {path}")


@cli.command()
@_task_options("ddim")
@click.option("--image", required=True, type=click.Path(), help="Image at the model's size, or an .npz batch.")
@click.option("--strength", required=True, type=float, help="Noise to add, in (0, 1]: 0.3 keeps most, 1 keeps nothing.")
def restore(model_dir, out, klass, cfg, sampler, steps, eta, seed, ema, device, image, strength) -> None:
    """Restore or edit an image by noising it part-way and sampling back (SDEdit)."""
    from difforge.tasks.files import restore_files

    try:
        path = restore_files(_common(model_dir, klass, cfg, sampler, steps, eta, seed, ema, device), image, strength, out)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {path}")


@cli.command()
@_task_options("ddim")
@click.option("--image", required=True, type=click.Path(), help="Noisy image at the model's size, or an .npz batch.")
@click.option("--sigma", required=True, type=float, help="Std of its Gaussian noise in [0, 1] pixel units (e.g. 0.1).")
def denoise(model_dir, out, klass, cfg, sampler, steps, eta, seed, ema, device, image, sigma) -> None:
    """Remove Gaussian noise of known std; --steps 1 (default) gives the posterior mean."""
    from difforge.tasks.files import denoise_files

    try:
        path = denoise_files(_common(model_dir, klass, cfg, sampler, steps, eta, seed, ema, device), image, sigma, out)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {path}")


@cli.command()
@_task_options("ddpm")
@click.option("--image", type=click.Path(), help="Low-resolution image (size / scale), or an .npz batch.")
@click.option("--scale", type=int, default=2, show_default=True, help="Upscaling factor.")
@click.option("--base", "base_dir", type=click.Path(), help="Cascade: generate the low-resolution images with this model.")
@click.option("--n", "n", type=int, default=8, show_default=True, help="Images to generate with --base.")
def upscale(model_dir, out, klass, cfg, sampler, steps, eta, seed, ema, device, image, scale, base_dir, n) -> None:
    """Super-resolution: with an SR model (train --task superres), or zero-shot (ILVR) with a generative one."""
    from difforge.tasks.files import upscale_files

    try:
        path = upscale_files(_common(model_dir, klass, cfg, sampler, steps, eta, seed, ema, device), image, scale, out,
                             base_dir, n)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("model_dir", type=click.Path())
@click.option("--a", "a", required=True, type=click.Path(), help="First image (or .npz batch).")
@click.option("--b", "b", required=True, type=click.Path(), help="Last image (or .npz batch of the same length).")
@click.option("--frames", type=int, default=8, show_default=True, help="Images from a to b, both included.")
@click.option("--out", required=True, help="Animated GIF to write; a strip PNG goes beside it.")
@click.option("--strip", type=click.Path(dir_okay=False), help="Strip PNG path. [default: OUT with .png]")
@click.option("--class", "klass", help="Class for a class-conditional model. [default: unconditional]")
@click.option("--steps", type=int, help="DDIM steps for inversion and decoding. [default: 50]")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--device", default="auto", show_default=True)
def interpolate(model_dir, a, b, frames, out, strip, klass, steps, ema, device) -> None:
    """In-between images: DDIM inversion of both, slerp of the latents, decoding."""
    from difforge.tasks.files import interpolate_files

    try:
        gif, png = interpolate_files(_common(model_dir, klass, None, None, steps, None, 0, ema, device), a, b, frames,
                                     out, strip)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {gif} and {png}")


# ---------------------------------------------------------------- serve
@cli.command()
@click.argument("model_dir", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; anything but loopback "
              "needs --token.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--token", "token_value", hidden=True, help="Refused: a token on the command line shows in `ps`.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="File holding the token that /v1/* and /metrics "
              "require as 'Authorization: Bearer TOKEN' (or set DIFFORGE_TOKEN).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, help="Another name clients may reach this server by "
              "(its Host header); repeatable. [default: localhost, 127.0.0.1, ::1 and --host; any for 0.0.0.0]")
@click.option("--max-n", type=int, default=16, show_default=True, help="Images per request.")
@click.option("--max-steps", type=int, default=1000, show_default=True, help="Sampler steps per request.")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Images sampled together on the device; "
              "concurrent requests with the same settings are merged up to this.")
@click.option("--queue-size", type=int, default=32, show_default=True, help="Requests waiting for the device; more "
              "get 503 with Retry-After.")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True, help="Seconds a request may "
              "take, queueing included; then 504.")
@click.option("--max-body", "max_body_bytes", type=int, default=4 * 1024 * 1024, show_default=True,
              help="Largest request body in bytes; larger gets 413.")
@click.option("--max-connections", type=int, default=64, show_default=True, help="Open connections at once; more "
              "get 503.")
@click.option("--read-timeout", "read_timeout_s", type=float, default=30.0, show_default=True,
              help="Seconds a request's headers and body may take to arrive.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--device", default="auto", show_default=True)
def serve(model_dir, host, port, token_value, token_file, allowed_hosts, max_n, max_steps, max_batch, queue_size,
          timeout_s, max_body_bytes, max_connections, read_timeout_s, ema, device) -> None:
    """Serve a run or exported model: JSON API, web page at /, /healthz, /readyz, /metrics.

    \b
    difforge serve runs/demo                      # http://127.0.0.1:8000/
    openssl rand -hex 16 > token && chmod 600 token
    difforge serve models/demo --host 0.0.0.0 --token-file token
    """
    import os

    if token_value is not None:
        _fail(ValueError("--token shows the token to every user of this machine (ps): use --token-file FILE or "
                         "DIFFORGE_TOKEN"))
    try:
        token = os.environ.get("DIFFORGE_TOKEN") or None
        if token_file is not None:
            if token is not None:
                raise ValueError("give --token-file or DIFFORGE_TOKEN, not both")
            token = Path(token_file).read_text().strip()
            if not token:
                raise ValueError(f"--token-file {token_file} is empty")
        from difforge.serve import ServeConfig, serve as run_server
        from difforge.serve.config import hosts_for_bind
        from difforge.train.loop import resolve_device

        config = ServeConfig(max_n=max_n, max_steps=max_steps, max_batch=max_batch, queue_size=queue_size,
                             timeout_s=timeout_s, max_body_bytes=max_body_bytes, token=token,
                             allowed_hosts=hosts_for_bind(host, tuple(allowed_hosts)), max_connections=max_connections,
                             read_timeout_s=read_timeout_s)
        run_server(model_dir, host=host, port=port, config=config, device=resolve_device(device), ema=ema,
                   log=click.echo)
    except (ValueError, FileNotFoundError, ImportError, OSError) as e:
        _fail(e)


# ---------------------------------------------------------------- report
@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", help="Directory for training.png, training.md and training.json. [default: RUN_DIR/report]")
def report(run_dir, out) -> None:
    """Plot a run's loss (train/val), learning rate and in-training FD into one PNG, with a
    markdown summary of the train/validation loss gap per epoch."""
    try:
        from difforge.eval.training_report import write_run_report

        summary = write_run_report(run_dir, out)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    where = Path(out) if out else Path(run_dir) / "report"
    gap = summary["loss_gap"]
    if gap and gap[-1]["gap"] is not None:
        click.echo(f"last epoch: train loss {gap[-1]['train_loss']:.4g}, val loss {gap[-1]['val_loss']:.4g} "
                   f"(gap {gap[-1]['gap']:+.3g})")
    click.echo(f"wrote {where / 'training.png'} and {where / 'training.md'}")


# ---------------------------------------------------------------- prepare / inspect
def _prepare_options(f):
    """The options `prepare` and `inspect SOURCE` share (how a source is cleaned and split)."""
    options = [
        click.option("--size", type=int, help="Square side of the stored images (center-crop, Lanczos resize). "
                     "[default: median shorter side, at most 64]"),
        click.option("--channels", type=click.Choice(["1", "3"]), help="1 grayscale or 3 RGB. "
                     "[default: 1 when every image is grayscale]"),
        click.option("--val", "val_fraction", type=float, default=0.1, show_default=True, help="Validation fraction."),
        click.option("--test", "test_fraction", type=float, default=0.1, show_default=True, help="Test fraction."),
        click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the hash split."),
        click.option("--near", "near_distance", type=int, default=4, show_default=True,
                     help="Near duplicates: perceptual hashes at most this many bits apart (of 64)..."),
        click.option("--near-mae", type=float, default=4.0, show_default=True,
                     help="...and mean-centred 32x32 thumbnails differing by at most this (gray levels) on average."),
        click.option("--outlier-z", type=float, default=8.0, show_default=True,
                     help="Flag images whose distance to their class's mean thumbnail has a robust z above this."),
        click.option("--max-aspect", type=float, default=3.0, show_default=True, help="Flag longer/shorter side above this."),
        click.option("--min-side", type=int, help="Flag images whose shorter side is below this. [default: size / 2]"),
        click.option("--drop-outliers", is_flag=True, help="Remove flagged outliers instead of only reporting them."),
        click.option("--drop-near-duplicates", is_flag=True, help="Remove the later file of each near-duplicate pair."),
        click.option("--max-pixels", type=int, default=64_000_000, show_default=True,
                     help="Quarantine images with more pixels than this (decompression bombs)."),
        click.option("--workers", type=int, default=0, show_default=True,
                     help="Decoding processes (0: one per core for 5000+ images)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _prepare_config(kw: dict):
    from difforge.data.prepare import PrepareConfig

    channels = kw.pop("channels")
    return PrepareConfig(channels=None if channels is None else int(channels), **kw)


@cli.command()
@click.argument("source", type=click.Path())
@click.argument("out_dir", type=click.Path())
@_prepare_options
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR when it already holds a prepared store.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def prepare(source, out_dir, overwrite, no_progress, **kw) -> None:
    """Clean, resize and split SOURCE into a store that `train --data OUT_DIR` reads.

    SOURCE is an image folder (sub-folders = classes, or flat), a .zip of images, a
    folder of idx files, or a .csv/.jsonl manifest with path and label columns. Unusable
    files are quarantined, exact duplicates removed, near duplicates and outliers
    reported; `difforge inspect OUT_DIR` shows all of it.
    """
    import time

    from difforge.data.prepare import prepare_store

    start = time.perf_counter()
    try:
        path, result = prepare_store(source, out_dir, _prepare_config(kw), overwrite=overwrite,
                                     progress=not no_progress, log=click.echo)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        _fail(e)
    r = result.report
    counts = ", ".join(f"{k} {len(v)}" for k, v in result.arrays.items())
    click.echo(f"kept {r['kept']} of {r['candidates']} files ({counts}); quarantined {len(r['quarantined'])}, "
               f"duplicates removed {len(r['duplicates'])}, near-duplicate pairs "
               f"{r['near_duplicates']['pairs_found']} ({r['near_duplicates']['pairs_across_splits']} across splits), "
               f"outliers {len(r['outliers'])}")
    click.echo(f"wrote {path} in {time.perf_counter() - start:.1f} s; details: difforge inspect {path}")


@cli.command()
@click.argument("target", type=click.Path())
@click.option("--sheets", type=click.Path(file_okay=False), help="Folder for the contact sheets. "
              "[default: STORE/contact_sheets, or ./NAME-contact-sheets for a source]")
@click.option("--verify", is_flag=True, help="Also check the store's arrays against their SHA-256 in the manifest.")
@_prepare_options
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def inspect(target, sheets, verify, no_progress, **kw) -> None:
    """Report on a prepared store, or on a source (prepared in memory, nothing stored):
    counts per class and split, sizes and colours, removals and flags with reasons, and a
    contact-sheet PNG per class. Cleaning options apply to a source only."""
    from difforge.data.inspect import inspect as run_inspect

    try:
        if not Path(target).exists():
            raise FileNotFoundError(f"{target}: no such file or directory")
        lines, sheets_written = run_inspect(target, sheets, _prepare_config(kw), verify=verify,
                                            progress=not no_progress, log=click.echo)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo("\n".join(lines))
    if sheets_written:
        click.echo(f"contact sheets: {len(sheets_written)} PNG(s) in {sheets_written[0].parent}")


def main(argv: list[str] | None = None) -> None:
    """Entry point; `main([...])` runs a command in-process (tests) and raises SystemExit."""
    cli.main(args=argv, prog_name="difforge", standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
