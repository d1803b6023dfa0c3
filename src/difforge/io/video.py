"""Clips out to files and back: GIF (PIL), MP4 (PyAV, the optional `video` extra), and a
PNG grid of frames; video files in, frame by frame with their times (`video_frames`).

A clip is uint8 (C, T, H, W); a batch (N, C, T, H, W) is written as one video whose frame
t lays the N clips' frames t side by side (`make_grid`), or as one PNG with a row of T
frames per clip.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from difforge.io.images import _to_pil, make_grid

VIDEO_SUFFIXES = (".gif", ".mp4")
DEFAULT_FPS = 8  # frames per second of written videos (sample-video --fps, the server's GIFs)


def _check_clips(clips: torch.Tensor) -> None:
    if not isinstance(clips, torch.Tensor) or clips.dtype != torch.uint8 or clips.ndim != 5:
        got = f"{clips.dtype} {tuple(clips.shape)}" if isinstance(clips, torch.Tensor) else type(clips).__name__
        raise ValueError(f"expected uint8 clips (N, C, T, H, W), got {got}")


def video_suffix(path: str | Path) -> str:
    """The output's suffix, checked: a one-line error for anything but .gif and .mp4."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"cannot write a video to {str(path)!r}: the file name must end in "
                         f"{' or '.join(VIDEO_SUFFIXES)}")
    return suffix


def frame_arrays(clips: torch.Tensor, nrow: int | None = None, scale: int = 1) -> list[np.ndarray]:
    """The video's frames as uint8 (H', W', C) arrays: frame t is the grid of every clip's frame t."""
    _check_clips(clips)
    nrow = nrow or min(len(clips), 8)
    out = []
    for t in range(clips.shape[2]):
        grid = make_grid(clips[:, :, t], nrow, pad=2 if len(clips) > 1 else 0)
        out.append(grid.repeat(scale, 0).repeat(scale, 1) if scale > 1 else grid)
    return out


def gif_bytes(clips: torch.Tensor, *, fps: int = DEFAULT_FPS, scale: int = 1, nrow: int | None = None) -> bytes:
    """uint8 clips (N, C, T, H, W) as the bytes of one looping GIF (the clips side by side),
    what `write_video` writes to a .gif file."""
    import io

    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    pics = [_to_pil(f) for f in frame_arrays(clips, nrow, scale)]
    buf = io.BytesIO()
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=round(1000 / fps), loop=0)
    return buf.getvalue()


def write_video(clips: torch.Tensor, path: str | Path, *, fps: int = DEFAULT_FPS, scale: int = 1,
                nrow: int | None = None) -> Path:
    """Write uint8 clips (N, C, T, H, W) as one video at `fps` frames per second: a looping
    GIF (PIL), or an MP4 (H.264, yuv420p, through PyAV: `pip install 'difforge[video]'`).
    `scale` enlarges pixels (nearest)."""
    path = Path(path)
    suffix = video_suffix(path)
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        path.write_bytes(gif_bytes(clips, fps=fps, scale=scale, nrow=nrow))
        return path
    _write_mp4(frame_arrays(clips, nrow, scale), path, fps)
    return path


def _write_mp4(frames: list[np.ndarray], path: Path, fps: int) -> None:
    try:
        import av
    except ImportError:
        raise ValueError("writing MP4 needs PyAV: pip install 'difforge[video]' (or write a .gif)") from None
    h, w = frames[0].shape[:2]
    he, we = h + h % 2, w + w % 2  # yuv420p needs even sides
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = we, he, "yuv420p"
        for f in frames:
            rgb = np.repeat(f, 3, axis=-1) if f.shape[-1] == 1 else f
            rgb = np.pad(rgb, ((0, he - h), (0, we - w), (0, 0)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


READ_SUFFIXES = (".gif", ".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v")  # what `video_frames` reads
GIF_DEFAULT_MS = 100  # a GIF frame without a duration (or 0 ms) is shown this long, as browsers do


@dataclass(frozen=True)
class TimedFrame:
    """One decoded frame: shown from `start` for `duration` seconds (exact fractions; None
    where the file gives no time), pixels as a Pillow "L" or "RGB" image at the stored size."""

    start: Fraction | None
    duration: Fraction | None
    image: object  # PIL.Image.Image


def video_frames(path: str | Path, *, max_pixels: int | None = None, background: int = 255
                 ) -> Iterator[TimedFrame]:
    """Decode a video file frame by frame (nothing but the current frame is held): GIF
    through Pillow (times from the frames' durations, transparency over `background`), the
    other `READ_SUFFIXES` through PyAV (the first video stream; times from the presentation
    timestamps, relative to the first frame). A frame wider x higher than `max_pixels` is
    refused before decoding. Raises ValueError with one line for a file that cannot be read,
    including one that fails part-way."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise ValueError(f"cannot read video {path}: the file name must end in {', '.join(READ_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read video {path}: empty file")
    try:
        if suffix == ".gif":
            yield from _gif_frames(path, max_pixels, background)
        else:
            yield from _av_frames(path, max_pixels)
    except ImportError:
        raise ValueError(f"reading {suffix} needs PyAV: pip install 'difforge[video]'") from None
    except MemoryError:
        raise
    except Exception as e:  # PIL / PyAV errors of a corrupt file
        raise ValueError(f"cannot read video {path}: {_why(e, path)}") from None


def _why(e: BaseException, path: Path) -> str:
    """A decoder's error as one short line, without the errno and file name PyAV adds
    (the caller names the file)."""
    text = getattr(e, "strerror", None) or str(e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    return text.replace(f": '{path}'", "").replace(f" '{path}'", "")[:200]


def _check_pixels(w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise ValueError(f"{w}x{h} frames are over the {max_pixels}-pixel limit")


def _gif_frames(path: Path, max_pixels: int | None, background: int) -> Iterator[TimedFrame]:
    from PIL import ImageSequence

    from difforge.io.decode import MAX_PIXELS, ImageError, _to_l_or_rgb, open_image

    t = Fraction(0)
    try:
        im = open_image(path, max_pixels=max_pixels or MAX_PIXELS)
    except ImageError as e:  # without the decoder's list of image formats
        raise ValueError(str(e).split("; send ")[0]) from None
    with im:
        for frame in ImageSequence.Iterator(im):
            ms = frame.info.get("duration") or GIF_DEFAULT_MS
            d = Fraction(int(round(ms)), 1000)
            yield TimedFrame(t, d, _to_l_or_rgb(frame.copy(), background))
            t += d


def _av_frames(path: Path, max_pixels: int | None) -> Iterator[TimedFrame]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        _check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
        tb, rate = stream.time_base, stream.average_rate
        t0 = None
        for i, frame in enumerate(container.decode(stream)):
            _check_pixels(frame.width, frame.height, max_pixels)
            if frame.pts is not None and tb is not None:
                t = Fraction(frame.pts) * tb
            else:
                t = Fraction(i) / rate if rate else None
            if t is not None:
                t0 = t if t0 is None else t0
                t -= t0
            d = Fraction(frame.duration) * tb if frame.duration and tb is not None else None
            yield TimedFrame(t, d, frame.to_image())


def read_video(path: str | Path) -> np.ndarray:
    """A video file's frames (any of `READ_SUFFIXES`) as uint8 (T, H, W, 3); a one-line
    error for a file that cannot be read."""
    frames = [np.asarray(f.image.convert("RGB")) for f in video_frames(path)]
    if not frames:
        raise ValueError(f"cannot read video {path}: no frames")
    return np.stack(frames)


def save_frames_grid(clips: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    """uint8 clips (N, C, T, H, W) as one PNG: row i is clip i's T frames."""
    _check_clips(clips)
    n, c, t, h, w = clips.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(make_grid(clips.transpose(1, 2).reshape(n * t, c, h, w), t), scale).save(path)
    return path
