"""Does a text-to-image model trained on fashion-colour draw what its prompts say?

Three prompt sets (`difforge.data.fashion_colour`): seen garment x colour pairs in the
training phrasing, held-out pairs (compositions never seen together in training) and
paraphrases (phrasings and synonyms never used in training). Each prompt draws one image
(image i seeded seed + i, per set); garment (`eval.garment`), colour, size and position
are measured from its pixels (`eval.attributes`) and compared with what the prompt says:
per attribute, "garment+colour" (the pair the prompt's key words name) and "all", every
attribute right in the same image (an average of attributes hides failures; Okawa et al.
2023). The same measurement on real images gives the ceiling (`real_image_accuracy`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from difforge.data.fashion_colour import (
    AttributePrompt,
    compositional_prompts,
    paraphrase_prompts,
    prompt_targets,
    seen_prompts,
)
from difforge.eval.attributes import attribute_accuracy, measure_attributes

PROMPT_SETS: dict[str, Callable[[], list[AttributePrompt]]] = {
    "seen": seen_prompts,
    "held-out pairs": compositional_prompts,
    "paraphrases": paraphrase_prompts,
}


def spread(prompts: Sequence, k: int) -> list:
    """k items spread evenly over `prompts` (all of them when k >= their number); deterministic."""
    if k < 1:
        raise ValueError(f"prompts per set must be >= 1, got {k}")
    if k >= len(prompts):
        return list(prompts)
    step = len(prompts) / k
    return [prompts[int(i * step)] for i in range(k)]


def prompt_set_accuracy(pipe, prompts: Sequence[AttributePrompt], garment_classifier=None, *, seed: int = 0,
                        **generate) -> tuple[dict[str, float], torch.Tensor]:
    """Sample one image per prompt with `pipe` (`generate` goes to `pipe.generate`), measure
    it and compare with the prompt: (accuracies as `attribute_accuracy`, the images)."""
    images, _ = pipe.generate(prompts=[p.text for p in prompts], seed=seed, **generate)
    measured = measure_attributes(images, garment_classifier=garment_classifier)
    return attribute_accuracy(measured, prompt_targets(list(prompts))), images


def prompt_following(pipe, garment_classifier=None, *, per_set: int, seed: int = 0,
                     log: Callable[[str], None] | None = None, clip=None, **generate) -> dict[str, dict]:
    """Each of `PROMPT_SETS`, `per_set` prompts spread over it: {set name: {"prompts": k,
    "of": set size, "seconds": sampling time, "accuracy": {attribute: share right, ...,
    "garment+colour", "all"}}}. Without `garment_classifier`, garment is not measured
    (and "all" covers colour, size and position). With `clip` (a domain CLIP,
    `models.clip.DomainCLIP`), each set also gets "clip_score": the CLIP score of its images
    against their prompts (`eval.clip.clip_score`)."""
    out = {}
    for name, make in PROMPT_SETS.items():
        every = make()
        chosen = spread(every, per_set)
        t0 = time.perf_counter()
        acc, images = prompt_set_accuracy(pipe, chosen, garment_classifier, seed=seed, **generate)
        out[name] = {"prompts": len(chosen), "of": len(every), "seconds": round(time.perf_counter() - t0, 1),
                     "accuracy": acc}
        if clip is not None:
            from difforge.eval.clip import clip_score

            out[name]["clip_score"] = clip_score(clip, images, [p.text for p in chosen])
        if log:
            log(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
                + (f", CLIP score {out[name]['clip_score']:.2f}" if clip is not None else ""))
    return out


def real_image_accuracy(ds, garment_classifier=None) -> dict[str, float]:
    """The measurement's accuracy on real fashion-colour images (a split with `attributes`):
    the ceiling of the accuracies of generated ones."""
    if ds.attributes is None:
        raise ValueError(f"{ds.name} has no attributes to compare the measurement with")
    measured = measure_attributes(ds.images, garment_classifier=garment_classifier)
    return attribute_accuracy(measured, ds.attributes)
