"""Where difforge may write: checks on output folders and files, made before any work.

The rule for folders: a command writes into a folder that is missing or empty, or that
already holds what this command makes (one of ours); it replaces one of ours only when
asked (`--overwrite`), and it never writes into, let alone deletes, a folder of the
user's own files. Files: the path is not a folder and its folder can be created and
written. Both raise `OutputError` (a ValueError) with one line naming the problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


class OutputError(ValueError):
    """An output path that difforge will not (or cannot) write to."""


def _writable_ancestor(path: Path, what: str) -> None:
    """The nearest existing ancestor of `path` must be a folder we can write into."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: cannot write in {parent} (permission denied)")


def check_output_dir(path: str | Path, *, holds: str, is_ours: Callable[[Path], bool], overwrite: bool = False,
                     what: str = "--out", allow_ours: bool = False) -> Path:
    """Check that a command that makes a `holds` (e.g. "run", "prepared store") may write
    its folder `path`; returns it as a Path. Nothing is written.

    Refused: a file; a non-empty folder that is not one of ours (`is_ours`); one of ours
    unless `overwrite` (or `allow_ours`, for commands that add to their own folder, such
    as a resumed run).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} is a file, not a folder")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputError(f"{what} {p}: cannot write in it (permission denied)")
        if any(p.iterdir()):
            if not is_ours(p):
                raise OutputError(f"{what} {p} is not empty and holds no {holds}: refusing to write into a folder of "
                                  f"other files; give a new or empty folder")
            if not (overwrite or allow_ours):
                raise OutputError(f"{what} {p} already holds a {holds}; pass --overwrite to replace it")
    else:
        _writable_ancestor(p, what)
    return p


def check_output_file(path: str | Path, *, what: str = "--out", suffixes: tuple[str, ...] = ()) -> Path:
    """Check that the file `path` can be written (its folder is created if missing); with
    `suffixes`, that it ends in one of them. Returns it as a Path; nothing is written."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a folder; give a file name")
    if suffixes and p.suffix.lower() not in suffixes:
        raise OutputError(f"{what} {p}: expected a file ending in {' or '.join(suffixes)}")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"{what} {p}: cannot overwrite it (permission denied)")
    _writable_ancestor(p, what)
    return p


def save_weights_and_meta(directory: str | Path, module, meta: dict, weights: str, meta_name: str) -> Path:
    """Write `module`'s state dict to `weights` (safetensors) and `meta` to `meta_name` (JSON)
    in `directory` (created if missing). The old meta file goes first and the new one comes
    last, each file through a temporary name in the folder renamed over the old one: a
    folder holding the meta file is complete, and nothing else in it is touched."""
    import json
    import tempfile

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    (directory / meta_name).unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{weights}-", dir=directory)
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, directory / weights)
        fd, tmp = tempfile.mkstemp(prefix=f".{meta_name}-", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(meta, indent=2))
        os.replace(tmp, directory / meta_name)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return directory
