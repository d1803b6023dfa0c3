"""`difforge sample-video`: clips from a video model, with any frames given."""

from __future__ import annotations

import click

from difforge.cli.common import GRID_NAMES, SAMPLER_NAMES, _fail, cli, no_progress_option

SCHEMES = ("autoregressive", "hierarchical")  # difforge.tasks.long_video.SCHEMES (a test checks they agree)


@cli.command("sample-video")
@click.argument("model_dir", type=click.Path())
@click.option("--out", default="clip.gif", show_default=True, help="Video to write: .gif or .mp4 (the clips side "
              "by side).")
@click.option("--frames", type=int, help="Frames per clip. More than the model's clip length T makes a long video "
              "window by window (--scheme); an RVD model rolls out frame by frame to any length. [default: the "
              "model's T]")
@click.option("--scheme", type=click.Choice(SCHEMES), help="How a video longer than T is made: autoregressive (each "
              "window conditions on the last --context frames made and makes the next T - K) or hierarchical "
              "(keyframes over the whole length first, then the frames between them). [default: autoregressive "
              "when --frames > T]")
@click.option("--context", type=int, help="Frames each window of a long video conditions on (1..T-1). "
              "[default: T/2]")
@click.option("--n", "n", type=int, default=1, show_default=True, help="Clips in all.")
@click.option("--class", "klass", help="The class of every clip (index or name). [default: unconditional]")
@click.option("--given", help="Which frames are given: first:K (predict the rest), last:K, every:K (interpolate: "
              "frames 0, K, 2K, ... given) or frames:I,J,... (infill the others).")
@click.option("--given-frames", help="Comma-separated image files: the given frames in order (with --given, its "
              "frames; alone, the first frames). [default: from --given-video, else held-out clips of the model's "
              "built-in dataset or `prepare` store]")
@click.option("--given-video", type=click.Path(dir_okay=False), help="A .gif or .mp4 whose frames (at the model's "
              "frame size) supply the given frames.")
@click.option("--cfg", type=float, help="Classifier-free guidance scale (1: none). [default: 3 with classes, else 1]")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default="ddim", show_default=True)
@click.option("--steps", type=int, help="Sampler steps. [default: the sampler's, 50 for ddim]")
@click.option("--schedule", "--grid", "grid", type=click.Choice(GRID_NAMES), help="Noise levels the steps visit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Clip i uses seed + i.")
@click.option("--fps", type=int, default=8, show_default=True, help="Frames per second of the video.")
@click.option("--frames-png", type=click.Path(dir_okay=False),
              help="Also write a PNG with one row of frames per clip.")
@click.option("--per-frame", is_flag=True, help="Make every frame on its own through the spatial layers only "
              "(stunet-space-down): the model as an image model applied frame by frame, to compare with its clips.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--device", default="auto", show_default=True)
@no_progress_option
def sample_video(model_dir, out, frames, scheme, context, n, klass, given, given_frames, given_video, cfg, sampler,
                 steps, grid, seed, fps, frames_png, per_frame, ema, device, no_progress) -> None:
    """Generate clips from a video model (a run directory or an exported model).

    With --frames above the model's clip length T, or --scheme, the video is made window by
    window: every window is T frames of the video, some already made (given to the model),
    the others new."""
    from difforge.io.outputs import check_output_file
    from difforge.io.video import video_suffix
    from difforge.pipeline import load_pipeline
    from difforge.runtime import resolve_device

    try:
        video_suffix(out)
        check_output_file(out, suffixes=(".gif", ".mp4"))
        if frames_png:
            check_output_file(frames_png, what="--frames-png", suffixes=(".png",))
        if n < 1:
            raise ValueError(f"--n must be >= 1, got {n}")
        if given_frames and given_video:
            raise ValueError("give --given-frames or --given-video, not both")
        if per_frame and (given or given_frames or given_video or scheme or context or frames):
            raise ValueError("--per-frame makes each frame of one clip on its own: no --given, --given-frames, "
                             "--given-video, --frames, --scheme or --context")
        pipe = load_pipeline(model_dir, ema=ema, device=resolve_device(device))
        if not pipe.takes_clips:
            raise ValueError(f"{model_dir} is an image model: use `difforge sample`")
        t = pipe.card.frames
        length = t if frames is None else frames
        if pipe.residual_video:
            if scheme is not None or context is not None:
                raise ValueError("--scheme and --context make long videos from a frame-conditioned model; an RVD "
                                 "model rolls out frame by frame to any --frames")
        elif length < t:
            raise ValueError(f"--frames {frames}: this model makes clips of {t} frames (more are made window by "
                             "window; fewer are not)")
        if scheme is None and not pipe.residual_video and (length > t or context is not None):
            scheme = "autoregressive"
        labels = None if klass is None else torch_long([pipe.parse_class(klass)])
        clips, mask = _given(pipe, n, given, given_frames, given_video, length, model_dir)
        from tqdm.auto import tqdm

        from difforge.io.space import to_uint8

        windows = 1
        if scheme is not None:
            from difforge.tasks.long_video import plan

            windows = len(plan(scheme, length, t, context, [] if mask is None else mask.nonzero().flatten().tolist()))
        steps_total = (len(pipe.sigmas(sampler, steps, grid)) - 1) * windows
        if pipe.residual_video and mask is not None:  # one sampler run per frame made
            steps_total *= length - int(mask.sum())
        with tqdm(total=steps_total * -(-n // 16), desc="sample-video", unit="step", disable=no_progress) as bar:
            options = dict(cfg=cfg, sampler=sampler, steps=steps, grid=grid, seed=seed,
                           callback=lambda d: bar.update(1))
            if scheme is None:
                out_clips, _ = pipe.generate_video(n, labels, given=clips, mask=mask, per_frame=per_frame,
                                                   **options)
            else:
                from difforge.tasks.long_video import sample_long_video

                out_clips = to_uint8(sample_long_video(pipe, length, n, labels, scheme=scheme, context=context,
                                                       given=clips, mask=mask, **options))
        path = pipe.save_video(out_clips, out, fps=fps)
        if frames_png:
            pipe.save_video_grid(out_clips, frames_png)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(e)
    given_note = "" if mask is None else f", frames {mask.nonzero().flatten().tolist()} given"
    scheme_note = "" if scheme is None else f"; {scheme}, {windows} window(s) of {t}"
    click.echo(f"wrote {path} ({n} clip(s) of {length} frames{given_note}{scheme_note})")


def torch_long(values):
    import torch

    return torch.tensor(values, dtype=torch.long)


def _given(pipe, n: int, given: str | None, files: str | None, video: str | None, t: int, model_dir=None):
    """(given clips (1 or n, C, t, h, w) float in [-1, 1], mask (t,)) or (None, None), for
    videos of t frames; an RVD model's given clips may hold only the given first frames."""
    import torch

    from difforge.models.frames import parse_given

    c, size = pipe.card.channels, pipe.card.native_size
    if given is None and files is None and video is None:
        return None, None
    if files is not None:
        paths = [p.strip() for p in files.split(",") if p.strip()]
        if not paths:
            raise ValueError("--given-frames names no file")
        mask = parse_given(given, t) if given is not None else parse_given(f"first:{len(paths)}", t)
        if int(mask.sum()) != len(paths):
            raise ValueError(f"--given-frames: {len(paths)} file(s) for the {int(mask.sum())} given frame(s)")
        from difforge.io.decode import read_image

        clip = torch.zeros(1, c, t, size, size)
        for k, p in zip(mask.nonzero().flatten().tolist(), paths):
            try:
                arr = torch.from_numpy(read_image(p, c))
            except ValueError as e:
                raise ValueError(f"--given-frames {p}: {e}") from None
            if tuple(arr.shape[:2]) != (size, size):
                raise ValueError(f"--given-frames {p} is {arr.shape[1]}x{arr.shape[0]}; this model's frames are "
                                 f"{size}x{size}")
            clip[0, :, k] = arr.permute(2, 0, 1).float() / 127.5 - 1
        return clip, mask
    if given is None:
        raise ValueError("--given-video needs --given (which of its frames are given)")
    mask = parse_given(given, t)
    if video is not None:
        from difforge.io.video import read_video

        arr = torch.from_numpy(read_video(video))  # (T', H, W, 3)
        need = int(mask.sum()) if pipe.residual_video else t
        if arr.shape[0] < need or tuple(arr.shape[1:3]) != (size, size):
            raise ValueError(f"--given-video {video} is {arr.shape[0]} frames of {arr.shape[2]}x{arr.shape[1]}; "
                             f"this model needs at least {need} frames of {size}x{size}")
        arr = arr[:need].permute(3, 0, 1, 2).float()  # (3, T, H, W)
        arr = arr.mean(0, keepdim=True) if c == 1 else arr
        return (arr / 127.5 - 1)[None], mask
    clip_frames = pipe.card.frames  # a long video: the held-out clips give its first frames only
    if mask[clip_frames:].any():
        whose = "store's" if pipe.card.dataset == "prepared" else "built-in"
        raise ValueError(f"--given {given}: the {whose} held-out clips have {clip_frames} frames; give later "
                         "frames with --given-frames or --given-video")
    held = _store_held_out(pipe, n, model_dir) if pipe.card.dataset == "prepared" else _held_out(pipe, n)
    held = held[:, :, :t]  # an RVD rollout may be shorter than the clips
    held = torch.cat([held, held.new_zeros(*held.shape[:2], t - held.shape[2], *held.shape[3:])], dim=2)
    return held, mask


def _store_held_out(pipe, n: int, model_dir):
    """The first n clips of the test split (else the val split) of the `prepare` store a run
    was trained on (its config.yaml names it), as float clips."""
    from pathlib import Path

    from difforge.config import load_config
    from difforge.data.store import load_store

    run_config = Path(model_dir) / "config.yaml" if model_dir is not None else None
    if run_config is None or not run_config.is_file():
        raise ValueError("--given needs the given frames: --given-frames or --given-video (this model was trained "
                         "on a prepared store, and only a run directory records which)")
    path = load_config(run_config).data.path
    try:
        _, splits = load_store(path)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"--given: the run's store: {e}; give --given-frames or --given-video") from None
    split = next((s for s in ("test", "val") if splits.get(s) is not None), None)
    if split is None:
        raise ValueError(f"--given: the store {path} has no test or val clips; give --given-frames or --given-video")
    held = splits[split]
    if n > len(held):
        raise ValueError(f"--n {n}: the store {path} has {len(held)} held-out ({split}) clips")
    shape = (pipe.card.frames, pipe.card.native_size)
    if (held.frames, held.size) != shape:
        raise ValueError(f"--given: the store {path} holds clips of {held.frames} frames of {held.size}x{held.size}; "
                         f"this model makes {shape[0]} frames of {shape[1]}x{shape[1]}")
    clips = held.images[:n].float() / 127.5 - 1
    if clips.shape[1] != pipe.card.channels:
        clips = clips.expand(-1, pipe.card.channels, -1, -1, -1)
    return clips


def _held_out(pipe, n: int):
    """The first n held-out clips of the model's built-in dataset, as float clips."""
    from difforge.config import VIDEO_DATASETS

    name = pipe.card.dataset
    if name not in VIDEO_DATASETS:
        raise ValueError("--given needs the given frames: --given-frames or --given-video (this model's dataset "
                         f"{name!r} has no built-in clips)")
    from difforge.data.idx import load_fashion_mnist
    from difforge.data.moving import TEST_CLIPS, moving_clips

    _, source = load_fashion_mnist()
    count = min(TEST_CLIPS, len(source))
    if n > count:
        raise ValueError(f"--n {n}: the built-in set has {count} held-out clips")
    test = moving_clips(source, count, seed=1)  # the test split of data/moving.py's load_moving_fashion_mnist
    clips = test.images[:n].float() / 127.5 - 1
    if clips.shape[1] != pipe.card.channels:
        clips = clips.expand(-1, pipe.card.channels, -1, -1, -1)
    return clips
