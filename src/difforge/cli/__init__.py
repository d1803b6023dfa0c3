"""The `difforge` command: one module per family of sub-commands, each of which parses its
options, builds a config and makes one call into the library.

  common.py    the click group, UserError, the names the option choices offer
  train.py     train (options made from the config dataclasses, plus --set)
  sample.py    sample, export
  interop.py   import (diffusers models), push (to the Hugging Face Hub)
  evaluate.py  evaluate, train-classifier, report
  clip.py      train-clip, clip-score
  unclip.py    train-prior, unclip, variations
  tasks.py     inpaint, restore, denoise, upscale, interpolate
  video.py     sample-video
  video_eval.py  evaluate-video
  data.py      prepare, inspect
  serve.py     serve

Importing the package registers every command; none imports torch until it runs.
"""

from __future__ import annotations

from difforge.cli import (  # noqa: F401  (registers the commands)
    clip,
    data,
    evaluate,
    interop,
    sample,
    serve,
    tasks,
    train,
    unclip,
    video,
    video_eval,
)
from difforge.cli.common import (  # noqa: F401  (the names other modules and tests use)
    DATASET_NAMES,
    FRAMEWORK_NAMES,
    GIF_FRAMES,
    GRID_NAMES,
    IMAGE_SUFFIXES,
    SAMPLER_NAMES,
    UserError,
    _fail,
    cli,
)


def main(argv: list[str] | None = None) -> None:
    """Entry point; `main([...])` runs a command in-process (tests) and raises SystemExit."""
    cli.main(args=argv, prog_name="difforge", standalone_mode=True)
