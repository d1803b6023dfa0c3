"""fashion-colour: Fashion-MNIST garments drawn in colour at 32x32 RGB, with captions.

A captioned set for text-to-image training at CPU scale, generated deterministically from
a seed (nothing is downloaded beyond Fashion-MNIST itself). Every image is one garment on a
black background with three attributes a caption states and an evaluation can measure:

- colour: one of `COLOURS`, eight saturated hues (HSV saturation and value 1), at least 30
  degrees apart; the garment's gray levels scale the colour (texture is kept, hue is exact
  up to uint8 rounding);
- size: "small" (the 28x28 garment scaled to 16x16, antialiased) or "large" (the garment at
  its native 28x28), each with probability 1/2;
- position: large garments are centred; small ones sit, with equal probability, in the
  centre or one of the four corners of the image (`POSITIONS`; the 16x16 box is 1 pixel
  from the image's edges in the corners, see `POSITION_BOXES`).

Captions use one of `TRAIN_TEMPLATES` (drawn per image), the garment names of `GARMENTS`,
the colour names, "small" / "large" and, for small garments, the position ("in the top
left", ", top left"); large garments' captions name no position. Examples: "a small red
sneaker in the top left", "large blue bag", "an orange sneaker, small, centre".

Evaluation material, never seen in training:
- compositional: the garment x colour pairs of `HELDOUT_PAIRS` never occur in the training
  split (their images draw another colour); `compositional_prompts` asks for them;
- paraphrases: `PARAPHRASE_TEMPLATES` (other word orders and framings) and `SYNONYMS`
  (other words for colours, sizes, positions and garments) are never used in a training
  caption; `paraphrase_prompts` builds prompts from them for seen pairs.
Every prompt carries its intended attributes (`AttributePrompt`); `prompt_targets` turns a
list into the tensors `difforge.eval.attributes` compares measurements with.

The dataset's labels are the garment classes; its `attributes` hold "garment", "colour",
"size" and "position" per image (indices into `GARMENTS`, `COLOURS`, `SIZES`,
`POSITIONS`). No disk cache: rendering 60 000 images takes about a second on one core
(reading Fashion-MNIST's gzip files takes longer).

Do not train with horizontal flips on this set: a flip moves "top left" garments to the
top right without changing their captions.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from difforge.data.dataset import ImageDataset

NAME = "fashion-colour"
IMAGE_SIZE = 32
LARGE_SIDE = 28  # the garment's box side when large (Fashion-MNIST's native size)
SMALL_SIDE = 16  # ... and when small

GARMENTS = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
_PLURAL = frozenset({"trousers", "pants"})  # nouns that take no indefinite article


@dataclass(frozen=True)
class NamedColour:
    """A caption colour: its name, its hue in degrees and its RGB at full value."""

    name: str
    hue: float
    rgb: tuple[int, int, int]


def _colour(name: str, hue: float) -> NamedColour:
    r, g, b = colorsys.hsv_to_rgb(hue / 360, 1.0, 1.0)
    return NamedColour(name, hue, (round(r * 255), round(g * 255), round(b * 255)))


COLOURS = tuple(_colour(n, h) for n, h in (
    ("red", 0), ("orange", 30), ("yellow", 60), ("green", 120),
    ("cyan", 180), ("blue", 240), ("purple", 280), ("pink", 320),
))  # fmt: skip
COLOUR_NAMES = tuple(c.name for c in COLOURS)
SIZES = ("small", "large")
SMALL, LARGE = 0, 1
POSITIONS = ("centre", "top left", "top right", "bottom left", "bottom right")
# (row, column) of the top-left pixel of the garment's box, per position; large garments
# use (2, 2) (centred), small ones these boxes of SMALL_SIDE pixels
POSITION_BOXES = ((8, 8), (1, 1), (1, 15), (15, 1), (15, 15))
LARGE_BOX = ((IMAGE_SIZE - LARGE_SIDE) // 2,) * 2

# Garment x colour pairs absent from the training split (each garment and colour at most once)
HELDOUT_PAIRS = (
    ("t-shirt", "blue"), ("trousers", "yellow"), ("pullover", "pink"), ("dress", "green"),
    ("coat", "red"), ("sandal", "purple"), ("sneaker", "orange"), ("bag", "cyan"),
)  # fmt: skip

# Caption templates. Fields: {a} the indefinite article of the next word (none for plural
# garments), {size}, {colour}, {garment}, {where} (" in the top left"; "" for large) and
# {where_list} (", top left"; "" for large).
TRAIN_TEMPLATES = (
    "{a} {size} {colour} {garment}{where}",
    "{size} {colour} {garment}{where}",
    "{a} {colour} {garment}, {size}{where_list}",
    "{a} {size} {garment}, {colour}{where_list}",
)
PARAPHRASE_TEMPLATES = (  # never used in training captions
    "a picture of {a} {size} {colour} {garment}{where}",
    "{a} {garment} in {colour}, {size}{where_list}",
    "{a} {size} {garment} coloured {colour}{where}",
)
_WHERE = {p: f" in the {p}" for p in POSITIONS}
_WHERE_LIST = {p: f", {p}" for p in POSITIONS}
# Other words for the training vocabulary: never in a training caption
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {"red": ("scarlet",), "orange": ("tangerine",), "yellow": ("lemon",), "green": ("emerald",),
               "cyan": ("turquoise",), "blue": ("cobalt",), "purple": ("violet",), "pink": ("fuchsia",)},
    "size": {"small": ("tiny", "little"), "large": ("big", "huge")},
    "position": {"centre": ("middle",), "top left": ("upper left",), "top right": ("upper right",),
                 "bottom left": ("lower left",), "bottom right": ("lower right",)},
    "garment": {"t-shirt": ("tee",), "trousers": ("pants",), "pullover": ("sweater",), "coat": ("jacket",),
                "shirt": ("blouse",), "sneaker": ("trainer",), "bag": ("handbag",), "ankle boot": ("bootie",)},
}


@dataclass(frozen=True)
class AttributePrompt:
    """A prompt and the attributes an image generated from it should have (indices into
    `GARMENTS`, `COLOURS`, `SIZES`, `POSITIONS`); `form` says how it is phrased."""

    text: str
    garment: int
    colour: int
    size: int
    position: int
    form: str


def _views() -> list[tuple[int, int]]:
    """(size, position) of every image layout: small in each position, then large (centred)."""
    return [(SMALL, p) for p in range(len(POSITIONS))] + [(LARGE, 0)]


def _articles(text: str, plural: bool) -> str:
    """Resolve the "{a}" marks: nothing before a plural noun phrase, else "an" before a
    vowel, "a" otherwise."""
    if plural:
        return text.replace("\x00 ", "")
    return re.sub("\x00 (?=(.))", lambda m: "an " if m.group(1) in "aeiou" else "a ", text)


def phrase(template: str, garment: str, colour: str, size: str, position: str | None) -> str:
    """`template` filled with these words; `position` None for a large (centred) garment."""
    text = template.format(a="\x00", size=size, colour=colour, garment=garment,
                           where="" if position is None else _WHERE.get(position, f" in the {position}"),
                           where_list="" if position is None else _WHERE_LIST.get(position, f", {position}"))
    return _articles(text, garment in _PLURAL)


def caption(garment: int, colour: int, size: int, position: int, template: int = 0) -> str:
    """The training caption of these attributes in `TRAIN_TEMPLATES[template]`."""
    return phrase(TRAIN_TEMPLATES[template], GARMENTS[garment], COLOUR_NAMES[colour], SIZES[size],
                  None if size == LARGE else POSITIONS[position])


def _caption_table() -> list[str]:
    """Every training caption, at index ((garment * colours + colour) * views + view) * templates + template."""
    return [caption(g, c, s, p, t) for g in range(len(GARMENTS)) for c in range(len(COLOURS))
            for s, p in _views() for t in range(len(TRAIN_TEMPLATES))]


def all_training_captions() -> frozenset[str]:
    """Every caption the training templates and words can give, for every garment x colour
    pair (held-out pairs included): a superset of the training split's captions."""
    return frozenset(_caption_table())


def _index(names: tuple[str, ...], name: str, what: str) -> int:
    if name not in names:
        raise ValueError(f"unknown {what} {name!r}; expected one of {list(names)}")
    return names.index(name)


def heldout_pair_indices(pairs: tuple[tuple[str, str], ...] = HELDOUT_PAIRS) -> list[tuple[int, int]]:
    """`pairs` of (garment, colour) names as (garment index, colour index)."""
    return [(_index(GARMENTS, g, "garment"), _index(COLOUR_NAMES, c, "colour")) for g, c in pairs]


def _draw_colours(labels: torch.Tensor, heldout: list[tuple[int, int]], g: torch.Generator) -> torch.Tensor:
    """A colour index per image, uniform over the colours its garment may have."""
    k = len(COLOURS)
    banned = torch.full((len(GARMENTS),), k, dtype=torch.int64)  # k: no colour banned
    for garment, colour in heldout:
        if banned[garment] != k:
            raise ValueError(f"at most one held-out colour per garment; {GARMENTS[garment]!r} has two")
        banned[garment] = colour
    ban = banned[labels]
    allowed = k - (ban < k).to(torch.int64)
    c = (torch.rand(len(labels), generator=g, dtype=torch.float64) * allowed).floor().to(torch.int64)
    return c + (c >= ban).to(torch.int64)  # skip the banned colour


def render_fashion_colour(
    garments: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    heldout: tuple[tuple[str, str], ...] = HELDOUT_PAIRS,
) -> ImageDataset:
    """Draw `garments` (uint8 (N, 1, 28, 28), Fashion-MNIST classes `labels`) in colour.

    Colours (avoiding the `heldout` garment x colour pairs), sizes, positions and caption
    templates are drawn from a generator seeded with `seed`, so the result depends only on
    the inputs and the seed. Returns uint8 (N, 3, 32, 32) images, the garment labels,
    one caption per image and the attributes "garment", "colour", "size", "position".
    """
    if garments.dtype != torch.uint8 or garments.ndim != 4 or tuple(garments.shape[1:]) != (1, 28, 28):
        raise ValueError(f"garments must be uint8 (N, 1, 28, 28), got {garments.dtype} {tuple(garments.shape)}")
    labels = labels.to(torch.int64)
    n = len(garments)
    if labels.shape != (n,) or (n and (int(labels.min()) < 0 or int(labels.max()) >= len(GARMENTS))):
        raise ValueError(f"labels must be {n} garment classes in 0..{len(GARMENTS) - 1}")
    g = torch.Generator().manual_seed(seed)
    colour = _draw_colours(labels, heldout_pair_indices(heldout), g)
    size = torch.randint(0, 2, (n,), generator=g)
    position = torch.randint(0, len(POSITIONS), (n,), generator=g) * (size == SMALL)
    template = torch.randint(0, len(TRAIN_TEMPLATES), (n,), generator=g)

    gray = torch.zeros(n, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    large = torch.nonzero(size == LARGE).flatten()
    r, c = LARGE_BOX
    gray[large, r:r + LARGE_SIDE, c:c + LARGE_SIDE] = garments[large, 0]
    for p, (r, c) in enumerate(POSITION_BOXES):
        idx = torch.nonzero((size == SMALL) & (position == p)).flatten()
        if len(idx):
            small = F.interpolate(garments[idx].double(), size=(SMALL_SIDE, SMALL_SIDE), mode="bilinear",
                                  antialias=True, align_corners=False)  # float64: no ties decided by rounding noise
            gray[idx, r:r + SMALL_SIDE, c:c + SMALL_SIDE] = (small[:, 0] + 0.5).floor().clamp(0, 255).to(torch.uint8)

    images = torch.zeros(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    levels = torch.arange(256, dtype=torch.int32)
    for k, col in enumerate(COLOURS):  # the tint gray * rgb / 255, rounded, as a lookup table per channel
        idx = torch.nonzero(colour == k).flatten()
        if len(idx) == 0:
            continue
        sub = gray[idx]
        for ch, v in enumerate(col.rgb):
            if v:
                images[idx, ch] = sub if v == 255 else ((levels * v + 127) // 255).to(torch.uint8)[sub.long()]

    view = torch.where(size == LARGE, len(POSITIONS), position)
    key = ((labels * len(COLOURS) + colour) * (len(POSITIONS) + 1) + view) * len(TRAIN_TEMPLATES) + template
    table = _caption_table()
    return ImageDataset(
        images=images,
        labels=labels.clone(),
        class_names=list(GARMENTS),
        name=NAME,
        captions=[table[k] for k in key.tolist()],
        attributes={"garment": labels.clone(), "colour": colour, "size": size, "position": position},
    )


def load_fashion_colour(root: str | Path | None = None, *, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """fashion-colour as (train 60k, test 10k), from Fashion-MNIST's train and t10k parts.

    `root` is the Fashion-MNIST folder (see `load_fashion_mnist`). The training split
    never holds a `HELDOUT_PAIRS` pair; the test split draws every pair (seed + 1), so it
    has reference images of the held-out pairs too.
    """
    from difforge.data.idx import load_fashion_mnist

    train, test = load_fashion_mnist(root)
    return (render_fashion_colour(train.images, train.labels, seed=seed),
            render_fashion_colour(test.images, test.labels, seed=seed + 1, heldout=()))


def _prompt(template: str, g: int, c: int, s: int, p: int, form: str, *, garment: str | None = None,
            colour: str | None = None, size: str | None = None, position: str | None = None) -> AttributePrompt:
    text = phrase(template, garment or GARMENTS[g], colour or COLOUR_NAMES[c], size or SIZES[s],
                  None if s == LARGE else position or POSITIONS[p])
    return AttributePrompt(text, g, c, s, p, form)


def _pairs(heldout: bool) -> list[tuple[int, int]]:
    held = set(heldout_pair_indices())
    every = [(g, c) for g in range(len(GARMENTS)) for c in range(len(COLOURS))]
    return [gc for gc in every if (gc in held) == heldout]


def seen_prompts(template: int = 0) -> list[AttributePrompt]:
    """Training phrasing for every pair the training split has, in every size and position
    (the in-distribution reference for `compositional_prompts`)."""
    return [_prompt(TRAIN_TEMPLATES[template], g, c, s, p, f"train:{template}")
            for g, c in _pairs(heldout=False) for s, p in _views()]


def compositional_prompts(template: int = 0) -> list[AttributePrompt]:
    """Training phrasing for the `HELDOUT_PAIRS`, in every size and position: garment x
    colour combinations the model never saw together."""
    return [_prompt(TRAIN_TEMPLATES[template], g, c, s, p, f"held-out-pair:{template}")
            for g, c in _pairs(heldout=True) for s, p in _views()]


def paraphrase_prompts() -> list[AttributePrompt]:
    """Prompts for seen pairs in phrasings never used in training: each of
    `PARAPHRASE_TEMPLATES` with the training words, and `TRAIN_TEMPLATES[0]` with each
    kind of `SYNONYMS` (colour, size, position, garment) in turn. Each seen pair appears
    once per form, its size and position cycling through the six layouts."""
    views = _views()
    out: list[AttributePrompt] = []
    for i, (g, c) in enumerate(_pairs(heldout=False)):
        for j, template in enumerate(PARAPHRASE_TEMPLATES):
            s, p = views[(i + j) % len(views)]
            out.append(_prompt(template, g, c, s, p, f"paraphrase-template:{j}"))
        for j, kind in enumerate(SYNONYMS):
            s, p = views[(i + j + len(PARAPHRASE_TEMPLATES)) % len(views)]
            if kind == "position" and s == LARGE:
                s, p = SMALL, i % len(POSITIONS)  # a large garment's caption has no position
            word = {"colour": COLOUR_NAMES[c], "size": SIZES[s], "position": POSITIONS[p],
                    "garment": GARMENTS[g]}[kind]
            choices = SYNONYMS[kind].get(word)
            if not choices:
                continue  # a garment without a synonym
            out.append(_prompt(TRAIN_TEMPLATES[0], g, c, s, p, f"synonym:{kind}",
                               **{kind: choices[i % len(choices)]}))
    return out


def prompt_targets(prompts: list[AttributePrompt]) -> dict[str, torch.Tensor]:
    """The intended attributes of `prompts` as int64 (N,) tensors, keyed like the dataset's
    `attributes` ("garment", "colour", "size", "position")."""
    return {k: torch.tensor([getattr(p, k) for p in prompts], dtype=torch.int64)
            for k in ("garment", "colour", "size", "position")}


def example_prompts() -> list[str]:
    """One training-style prompt per garment, each large and in the next colour (skipping a
    held-out pair): the rows of a text model's preview grid."""
    heldout = set(heldout_pair_indices())
    out = []
    for g in range(len(GARMENTS)):
        c = g % len(COLOURS)
        while (g, c) in heldout:
            c = (c + 1) % len(COLOURS)
        out.append(caption(g, c, LARGE, 0))
    return out
