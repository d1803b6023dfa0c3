"""`difforge evaluate-video`: a video model's clips against the real ones."""

from __future__ import annotations

from pathlib import Path

import click

from difforge.cli.common import GRID_NAMES, SAMPLER_NAMES, _fail, cli, no_progress_option


@cli.command("evaluate-video")
@click.argument("model_dir", type=click.Path())
@click.option("--out", help="Report directory. [default: MODEL_DIR/eval-video]")
@click.option("--n", "n", type=int, default=100, show_default=True, help="Clips to generate (class-balanced for a "
              "conditional model); the floor uses as many real training clips, --given the first N test clips.")
@click.option("--given", multiple=True, help="Also score prediction / interpolation: first:K, last:K, every:K or "
              "frames:I,J,... of the first N test clips given; PSNR and SSIM of the frames made. Repeatable.")
@click.option("--cfg", type=float, help="Classifier-free guidance scale (1: none). [default: as for sample-video]")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default="ddim", show_default=True)
@click.option("--steps", type=int, help="Sampler steps. [default: the sampler's, 50 for ddim]")
@click.option("--schedule", "--grid", "grid", type=click.Choice(GRID_NAMES), help="Noise levels the steps visit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Clip i uses seed + i.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--classifier", "classifier_path", type=click.Path(file_okay=False), help="The Fashion-MNIST domain "
              "classifier the frames are scored with. [default: the cached one, trained on first use]")
@click.option("--video-classifier", "video_classifier", type=click.Path(file_okay=False), help="The video "
              "classifier of the video FD. [default: $DIFFORGE_CACHE/classifiers/<dataset-key>-video, trained on "
              "first use]")
@click.option("--per-frame", is_flag=True, help="Score clips whose frames are each made on its own through the "
              "spatial layers only (stunet-space-down): what the temporal layers add.")
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a report already in --out.")
@no_progress_option
def evaluate_video(model_dir, out, n, given, cfg, sampler, steps, grid, seed, ema, classifier_path, video_classifier,
                   per_frame, device, overwrite, no_progress) -> None:
    """Measure a video model: per-frame FD, identity consistency, motion, a video FD, each
    next to its real-vs-real floor; with --given, PSNR and SSIM of predicted frames.

    Writes report.json, report.md, samples.png (and given-*.png) to --out (docs/video.md).
    """
    try:
        from difforge.eval.video import VideoEvalConfig, evaluate_video, summary_lines
        from difforge.runtime import resolve_device

        out = out or str(Path(model_dir) / "eval-video")
        ecfg = VideoEvalConfig(n=n, given=tuple(given), sampler=sampler, steps=steps, grid=grid, cfg=cfg, seed=seed,
                               ema=ema, per_frame=per_frame)
        report = evaluate_video(model_dir, out, ecfg, classifier=classifier_path, video_classifier=video_classifier,
                                device=resolve_device(device), progress=not no_progress, log=click.echo,
                                overwrite=overwrite)
    except (ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    for line in summary_lines(report):
        click.echo(line)
    click.echo(f"wrote {Path(out) / 'report.md'} and report.json (N = {report['n']})")
