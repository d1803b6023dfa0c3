"""`difforge prepare` and `difforge inspect`."""

from __future__ import annotations

from pathlib import Path

import click

from difforge.cli.common import _fail, cli, no_progress_option


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
        click.option("--max-aspect", type=float, default=3.0, show_default=True,
                     help="Flag longer/shorter side above this."),
        click.option("--min-side", type=int, help="Flag images whose shorter side is below this. [default: size / 2]"),
        click.option("--drop-outliers", is_flag=True, help="Remove flagged outliers instead of only reporting them."),
        click.option("--drop-near-duplicates", is_flag=True,
                     help="Remove the later file of each near-duplicate pair."),
        click.option("--max-pixels", type=int, help="Quarantine images with more pixels than this (decompression "
                     "bombs). [default: difforge.io.decode.MAX_PIXELS, 64 million]"),
        click.option("--workers", type=int, default=0, show_default=True,
                     help="Decoding processes (0: one per core for 5000+ images)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _prepare_config(kw: dict):
    from difforge.data.prepare import PrepareConfig

    channels = kw.pop("channels")
    if kw.get("max_pixels") is None:  # the decoder's own limit
        kw.pop("max_pixels", None)
    return PrepareConfig(channels=None if channels is None else int(channels), **kw)


@cli.command()
@click.argument("source", type=click.Path())
@click.argument("out_dir", type=click.Path())
@_prepare_options
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR when it already holds a prepared store.")
@click.option("--format", "layout", type=click.Choice(["arrays", "shards"]), default="arrays", show_default=True,
              help="Store the splits as .npy arrays, or as WebDataset-layout tar shards (OUT_DIR/SPLIT/000000.tar: "
              "KEY.png, KEY.txt caption, KEY.cls label).")
@click.option("--shard-size", type=int, help="Samples per tar shard with --format shards. [default: 1000]")
@click.option("--clip-frames", type=int, help="SOURCE is videos: cut them into clips of this many frames "
              "(a store of clips for video models).")
@click.option("--fps", type=float, help="With --clip-frames: resample every video to this frame rate (frames "
              "dropped or repeated by timestamp). [default: every decoded frame]")
@click.option("--clip-stride", type=int, help="With --clip-frames: frames from one clip's start to the next's. "
              "[default: --clip-frames, non-overlapping]")
@no_progress_option
def prepare(source, out_dir, overwrite, layout, shard_size, clip_frames, fps, clip_stride, no_progress, **kw) -> None:
    """Clean, resize and split SOURCE into a store that `train --data OUT_DIR` reads.

    SOURCE is an image folder (sub-folders = classes, or flat; captions from a
    metadata.jsonl or .txt files), a .zip of images, a folder of idx files, a .csv/.jsonl
    manifest with path and label columns, or tar shards (a folder of .tar, one .tar, or a
    brace pattern). Unusable files are quarantined, exact duplicates removed, near
    duplicates and outliers reported; `difforge inspect OUT_DIR` shows all of it.

    With --clip-frames N, SOURCE is a folder of videos (.mp4, .webm, .mov, .avi, .mkv,
    .gif; sub-folders = classes) and of frame folders (a folder of numbered images is one
    video), or one video file: each video is resampled to --fps, resized to --size and cut
    into clips of N frames; unreadable and too short videos are reported and skipped, and
    all clips of a video go to the same split (docs/video.md, "Your own videos").
    """
    import time

    from difforge.data.inspect import prepare_summary
    from difforge.data.prepare import prepare_store

    start = time.perf_counter()
    try:
        if clip_frames is not None:
            from difforge.data.video_prepare import ClipConfig, prepare_clips_store

            if layout != "arrays" or shard_size is not None:
                raise ValueError("--format shards holds images; a store of clips is written as arrays")
            path, result = prepare_clips_store(source, out_dir, _prepare_config(kw),
                                               ClipConfig(clip_frames, fps, clip_stride), overwrite=overwrite,
                                               progress=not no_progress, log=click.echo)
        elif fps is not None or clip_stride is not None:
            raise ValueError("--fps and --clip-stride apply to videos: give --clip-frames N as well")
        else:
            path, result = prepare_store(source, out_dir, _prepare_config(kw), overwrite=overwrite,
                                         progress=not no_progress, log=click.echo, layout=layout,
                                         shard_size=shard_size)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        _fail(e)
    click.echo(prepare_summary(result))
    click.echo(f"wrote {path} in {time.perf_counter() - start:.1f} s; details: difforge inspect {path}")


@cli.command()
@click.argument("target", type=click.Path())
@click.option("--sheets", type=click.Path(file_okay=False), help="Folder for the contact sheets. "
              "[default: STORE/contact_sheets, or ./NAME-contact-sheets for a source]")
@click.option("--verify", is_flag=True, help="Also check the store's arrays against their SHA-256 in the manifest.")
@_prepare_options
@no_progress_option
def inspect(target, sheets, verify, no_progress, **kw) -> None:
    """Report on a prepared store, or on a source (prepared in memory, nothing stored):
    counts per class and split, sizes and colours, removals and flags with reasons, and a
    contact-sheet PNG per class. Cleaning options apply to a source only."""
    from difforge.data.inspect import inspect as run_inspect

    try:
        if not Path(target).exists() and "{" not in target:  # a brace pattern names tar shards
            raise FileNotFoundError(f"{target}: no such file or directory")
        lines, sheets_written = run_inspect(target, sheets, _prepare_config(kw), verify=verify,
                                            progress=not no_progress, log=click.echo)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo("\n".join(lines))
    if sheets_written:
        click.echo(f"contact sheets: {len(sheets_written)} PNG(s) in {sheets_written[0].parent}")
