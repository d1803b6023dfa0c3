"""The captions of a training or validation split, encoded once for text-to-image training.

A caption set repeats itself (the built-in fashion-colour set has 60 000 images and a few
thousand distinct captions), so only the distinct captions are encoded, by the model's
conditioner (`TextPrompts.conditioner`): byte tokens for the scratch encoder (which the
network then encodes), frozen MiniLM embeddings for minilm (cached on disk in the run
directory, as large-scale trainers cache text embeddings). A batch's conditioning is the
rows of its images' captions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from difforge.models.conditioning import TextPrompts
from difforge.models.text import TextCond


class CaptionTable:
    """`rows(idx)`: the encoded captions of images `idx` (a TextCond on the CPU)."""

    def __init__(self, spec: TextPrompts, captions: Sequence[str], cache_dir: Path | None = None,
                 log: Callable[[str], None] | None = None):
        first: dict[str, int] = {}
        index = [first.setdefault(c, len(first)) for c in captions]
        distinct = list(first)
        self.index = torch.tensor(index, dtype=torch.long)
        conditioner = spec.conditioner(truncate=True)  # training captions longer than the limit are cut
        if spec.encoder == "minilm":
            from difforge.models.minilm import encode_captions

            if log:
                log(f"encoding {len(distinct)} distinct captions with {spec.encoder} (cached in {cache_dir})")
            self.table = encode_captions(conditioner, distinct, cache_dir=cache_dir)
        else:
            self.table = conditioner(distinct)
        self.distinct = len(distinct)

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, idx: torch.Tensor | Sequence[int] | slice) -> TextCond:
        return self.table[self.index[idx]]
