"""`difforge evaluate`, `difforge train-classifier` and `difforge report`."""

from __future__ import annotations

from pathlib import Path

import click

from difforge.cli.common import (
    DATASET_NAMES,
    GRID_NAMES,
    SAMPLER_NAMES,
    _fail,
    cli,
    data_config,
    no_progress_option,
    parse_interval,
)
from difforge.defaults import DEFAULT_CFG, DEFAULT_CFG_TEXT, DEFAULT_SAMPLER


@cli.command("train-classifier")
@click.option("--dataset", type=click.Choice(DATASET_NAMES), help="Built-in dataset. [default: fashion-mnist]")
@click.option("--data", "data_path", type=click.Path(), help="Labelled image folder (sub-folders = classes), "
              "or a folder of Fashion-MNIST idx files.")
@click.option("--out", help="Directory for model.safetensors + classifier.json. [default: $DIFFORGE_CACHE/classifiers/"
              "<dataset-key>, DIFFORGE_CACHE defaulting to ~/.cache/difforge; `evaluate` looks there]")
@click.option("--epochs", type=int, help="Passes over the training split. "
              "[default: 5, more on small sets (>= 1200 steps, <= 100 epochs)]")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a classifier already in the output folder.")
@no_progress_option
def train_classifier(dataset, data_path, out, epochs, batch_size, seed, device, overwrite, no_progress) -> None:
    """Train the domain classifier that `evaluate` measures samples with.

    A small CNN on the training split; its accuracy is measured on the test split (else
    the validation split). `evaluate` trains one by itself when none is cached.
    """
    from difforge.config import ConfigError, DataConfig

    try:
        from difforge.data import load_dataset
        from difforge.eval.classifier import (
            ClassifierConfig,
            check_classifier_dir,
            classifier_dir,
            dataset_key,
            summary_line,
        )
        from difforge.eval.classifier import train_classifier as train_clf
        from difforge.runtime import resolve_device

        data = data_config(dataset, data_path) or DataConfig()
        if epochs is not None and epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {epochs}")
        target = check_classifier_dir(Path(out) if out else classifier_dir(data), overwrite=overwrite)
        cfg = ClassifierConfig(epochs=epochs, batch_size=batch_size, seed=seed)
        clf = train_clf(load_dataset(data), cfg, dataset_key=dataset_key(data), data=data,
                        device=resolve_device(device), log=click.echo, progress=not no_progress)
        path = clf.save(target)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    click.echo(f"{summary_line(clf.meta)}; wrote {path}")


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
@click.option("--out", help="Report directory. [default: MODEL_DIR/eval, or NPZ-eval beside an --npz file]")
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Images to generate (class-balanced for a "
              "conditional model); the real-vs-real floor uses as many training images.")
@click.option("--npz", type=click.Path(dir_okay=False), help="Score these samples (images N,H,W,C uint8 and optional "
              "labels, as `sample --npz` writes) instead of sampling.")
@click.option("--cfg", type=float, help=f"Classifier-free guidance scale. [default: {DEFAULT_CFG:g} for classes, "
              f"{DEFAULT_CFG_TEXT:g} for prompts]")
@click.option("--cfg-interval", help="LO,HI: guide only at noise levels sigma in [LO, HI]; all: at every level. "
              "[default: as for `sample`]")
@click.option("--cfg-sweep", help="Also sample and score N images at each of these guidance scales, e.g. 1,2,3,5.")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default=DEFAULT_SAMPLER, show_default=True)
@click.option("--steps", type=int, help="Sampler steps. [default: as for `sample`]")
@click.option("--schedule", "--grid", "grid", type=click.Choice(GRID_NAMES), help="Noise levels the steps visit. "
              "[default: as for `sample`]")
@click.option("--eta", type=float, help="Fresh noise per step, for ddim, euler-a and dpmpp-2m-sde.")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--dataset", type=click.Choice(DATASET_NAMES), help="Real data to compare with. "
              "[default: the model's training data]")
@click.option("--data", "data_path", type=click.Path(), help="Real images to compare with (folder or idx folder).")
@click.option("--classifier", "classifier_path", type=click.Path(file_okay=False), help="Domain classifier directory. "
              "[default: the cached one for the data, trained on first use]")
@click.option("--inception", type=click.Path(dir_okay=False), help="TorchScript Inception-v3 (NVIDIA's "
              "inception-2015-12-05.pt) for the standard FID; never downloaded. [default: "
              "$DIFFORGE_CACHE/inception-2015-12-05.pt when present]")
@click.option("--reference", type=click.Path(dir_okay=False), help="Measure the classifier-space FD against these "
              "feature statistics (.npz with mu and sigma, as --save-reference and the cache write them) instead "
              "of the reference split's.")
@click.option("--save-reference", type=click.Path(dir_okay=False), help="Also write the reference split's "
              "classifier-feature statistics (mu, sigma) to this .npz. [always cached in "
              "$DIFFORGE_CACHE/references/]")
@click.option("--k", "k", type=int, default=3, show_default=True, help="Neighbours for precision/recall radii.")
@click.option("--bpd", type=int, default=0, show_default=True, help="Bits/dim on this many test images: the DDPM "
              "variational bound (Ho et al. 2020); 0: skip.")
@click.option("--bpd-ode", is_flag=True,
              help="With --bpd, also the exact likelihood of the probability-flow ODE (slower).")
@click.option("--bpd-timesteps", type=int, default=100, show_default=True, help="VLB timesteps per image, stratified "
              "(an unbiased estimate of the sum); 0: all of them (exact sum, T network calls per image).")
@click.option("--memorization/--no-memorization", default=True, show_default=True, help="Nearest-training-image "
              "audit of the samples against held-out real images.")
@click.option("--prompts-per-set", type=int, help="Text models of fashion-colour: prompts sampled from each prompt "
              "set (seen, held-out pairs, paraphrases), spread over it. [default: N, at most the set]")
@click.option("--garment-classifier", "garment_classifier", type=click.Path(file_okay=False), help="Text models of "
              "fashion-colour: the garment classifier directory. [default: the cached one, trained on first use]")
@click.option("--clip", "clip_dir", type=click.Path(), help="Text models: also the CLIP score of the samples "
              "against their prompts under this domain CLIP (a `difforge train-clip` folder), per prompt set, next "
              "to the same score of real captioned images.")
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a report already in --out.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def evaluate(model_dir, out, npz, cfg_sweep, dataset, data_path, classifier_path, inception, reference,
             save_reference, garment_classifier, clip_dir, device, overwrite, no_progress, **settings) -> None:
    """Measure a model: FD, KID, precision/recall, classifier score, conditional accuracy,
    per-class FD, each next to its real-vs-real floor at the same N.

    A text-to-image model samples from the captions of training images; one trained on
    fashion-colour is also scored on its prompt sets: the share of images with the garment,
    colour, size and position each prompt asks for.

    Writes report.json, report.md, samples.png and charts to --out. MODEL_DIR is a run or
    an exported model directory; with --npz and --dataset/--data it may be left out.
    """
    from difforge.config import ConfigError

    try:
        from difforge.eval.evaluate import evaluate as run_eval
        from difforge.eval.report import summary_lines
        from difforge.runtime import resolve_device

        if out is None:
            if model_dir is None and npz is None:
                raise ValueError("give a MODEL_DIR, or --npz FILE with --dataset/--data")
            if model_dir is not None and not Path(model_dir).exists():
                from difforge.hub import is_hub_model

                if is_hub_model(model_dir):  # the cache's folders are not ours to write in
                    raise ValueError(f"{model_dir} is a Hub model in the local cache: give --out for the report")
            out = str(Path(model_dir) / "eval") if model_dir is not None else str(Path(npz).with_suffix("")) + "-eval"
        if inception is not None and not Path(inception).is_file():
            raise FileNotFoundError(f"--inception {inception}: no such file (difforge never downloads weights)")
        ecfg = _eval_config(cfg_sweep, **settings)
        report = run_eval(model_dir, out, ecfg, data=data_config(dataset, data_path), npz=npz,
                          classifier=classifier_path, inception=inception, device=resolve_device(device),
                          progress=not no_progress, log=click.echo, overwrite=overwrite, reference=reference,
                          save_reference=save_reference, garment_classifier=garment_classifier, clip=clip_dir)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    for line in summary_lines(report):
        click.echo(line)
    click.echo(f"wrote {Path(out) / 'report.md'} and report.json (N = {report['n']})")


def _eval_config(cfg_sweep: str | None, *, k: int, bpd: int, bpd_ode: bool, bpd_timesteps: int,
                 cfg_interval: str | None = None, **settings):
    """The EvalConfig of the options, checked."""
    from difforge.eval.evaluate import EvalConfig

    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    sweep = _float_list(cfg_sweep) if cfg_sweep is not None else ()
    ecfg = EvalConfig(cfg_sweep=sweep, cfg_interval=parse_interval(cfg_interval), k=k, bpd=bpd, bpd_ode=bpd_ode,
                      bpd_timesteps=bpd_timesteps or None, **settings)
    if bpd_timesteps < 0:
        raise ValueError(f"--bpd-timesteps must be >= 0, got {bpd_timesteps}")
    if bpd_ode and not bpd:
        raise ValueError("--bpd-ode needs --bpd N (the number of test images)")
    return ecfg


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", help="Directory for training.png, training.md and training.json. [default: RUN_DIR/report]")
def report(run_dir, out) -> None:
    """Plot a run's loss (train/val), learning rate and in-training FD into one PNG, with a
    markdown summary of the train/validation loss gap per epoch."""
    try:
        from difforge.eval.training_report import summary_lines, write_run_report

        summary = write_run_report(run_dir, out)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    where = Path(out) if out else Path(run_dir) / "report"
    for line in summary_lines(summary):
        click.echo(line)
    click.echo(f"wrote {where / 'training.png'} and {where / 'training.md'}")
