"""fashion-colour: rendering, captions, held-out pairs and paraphrases, load_dataset."""

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from difforge.config import DATASETS, DataConfig
from difforge.data import FASHION_MNIST_ROOT, load_dataset, write_idx
from difforge.data import fashion_colour as fc


def _garments(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random stand-ins for Fashion-MNIST: uint8 (n, 1, 28, 28) with a bright centre, labels 0..9."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 4:24, 6:22] = torch.randint(60, 256, (n, 1, 20, 16), generator=g, dtype=torch.uint8)
    return images, torch.arange(n) % 10


def test_same_seed_same_dataset_other_seed_other():
    images, labels = _garments(3000)
    a = fc.render_fashion_colour(images, labels, seed=5)
    b = fc.render_fashion_colour(images, labels, seed=5)
    c = fc.render_fashion_colour(images, labels, seed=6)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert all(torch.equal(a.attributes[k], b.attributes[k]) for k in a.attributes)
    assert not torch.equal(a.attributes["colour"], c.attributes["colour"]) and a.captions != c.captions
    assert a.images.shape == (3000, 3, 32, 32) and a.images.dtype == torch.uint8 and a.name == "fashion-colour"
    assert a.class_names == list(fc.GARMENTS) and torch.equal(a.labels, labels)
    assert torch.equal(a.attributes["garment"], labels)


def test_attributes_are_spread_and_captions_state_them():
    images, labels = _garments(4000)
    ds = fc.render_fashion_colour(images, labels, seed=0, heldout=())
    at = ds.attributes
    assert at["colour"].bincount(minlength=8).min() > 4000 / 8 * 0.8  # every colour, about uniform
    assert abs(float(at["size"].double().mean()) - 0.5) < 0.05
    assert (at["position"][at["size"] == fc.LARGE] == 0).all()  # large: centred
    assert at["position"][at["size"] == fc.SMALL].bincount(minlength=5).min() > 4000 / 10 * 0.8
    templates_used = set()
    for i in range(len(ds)):
        g, c, s, p = (int(at[k][i]) for k in ("garment", "colour", "size", "position"))
        options = [fc.caption(g, c, s, p, t) for t in range(len(fc.TRAIN_TEMPLATES))]
        assert ds.captions[i] in options
        templates_used.add(options.index(ds.captions[i]))
        words = ds.captions[i]
        assert fc.COLOUR_NAMES[c] in words and fc.SIZES[s] in words and fc.GARMENTS[g] in words
        assert (fc.POSITIONS[p] in words) == (s == fc.SMALL)
    assert templates_used == set(range(len(fc.TRAIN_TEMPLATES)))


def test_pixels_are_the_tinted_garment_in_its_box():
    images, labels = _garments(400)
    ds = fc.render_fashion_colour(images, labels, seed=1)
    at = ds.attributes
    for i in range(len(ds)):
        rgb = torch.tensor(fc.COLOURS[int(at["colour"][i])].rgb, dtype=torch.int32)
        if int(at["size"][i]) == fc.LARGE:
            (r, c), side = fc.LARGE_BOX, fc.LARGE_SIDE
            want = (images[i, 0].to(torch.int32)[None] * rgb[:, None, None] + 127) // 255
            assert torch.equal(ds.images[i, :, r:r + side, c:c + side].to(torch.int32), want)
        else:
            (r, c), side = fc.POSITION_BOXES[int(at["position"][i])], fc.SMALL_SIDE
        outside = ds.images[i].clone()
        outside[:, r:r + side, c:c + side] = 0
        assert (outside == 0).all()  # black background
        assert ds.images[i, :, r:r + side, c:c + side].max() > 0
        zero = [ch for ch in range(3) if rgb[ch] == 0]
        assert (ds.images[i, zero] == 0).all()  # the tint never adds a channel the colour lacks


def test_articles_and_plurals():
    red, orange = fc.COLOUR_NAMES.index("red"), fc.COLOUR_NAMES.index("orange")
    trousers, boot = fc.GARMENTS.index("trousers"), fc.GARMENTS.index("ankle boot")
    assert fc.caption(trousers, red, fc.SMALL, 1, 0) == "small red trousers in the top left"
    assert fc.caption(boot, orange, fc.LARGE, 0, 2) == "an orange ankle boot, large"
    assert fc.caption(boot, red, fc.SMALL, 0, 3) == "a small ankle boot, red, centre"
    assert fc.caption(7, 5, fc.LARGE, 0, 1) == "large blue sneaker"


def test_heldout_pairs_never_in_training_split_but_in_test():
    images, labels = _garments(20_000)
    train = fc.render_fashion_colour(images, labels, seed=0)
    test = fc.render_fashion_colour(images, labels, seed=1, heldout=())
    held = fc.heldout_pair_indices()
    assert len(held) == len(set(held)) == 8
    assert len({g for g, _ in held}) == 8 and len({c for _, c in held}) == 8  # each garment / colour once
    pairs = lambda ds: set(zip(ds.attributes["garment"].tolist(), ds.attributes["colour"].tolist()))  # noqa: E731
    assert pairs(train).isdisjoint(held)
    assert len(pairs(train)) == 10 * 8 - 8  # every other pair does occur
    assert set(held) <= pairs(test)
    heldout_phrases = {f"{fc.COLOUR_NAMES[c]} {fc.GARMENTS[g]}" for g, c in held}
    assert not any(p in cap for cap in train.captions for p in heldout_phrases)
    with pytest.raises(ValueError, match="unknown colour 'mauve'"):
        fc.render_fashion_colour(images[:10], labels[:10], seed=0, heldout=(("bag", "mauve"),))
    with pytest.raises(ValueError, match="at most one held-out colour"):
        fc.render_fashion_colour(images[:10], labels[:10], seed=0, heldout=(("bag", "red"), ("bag", "blue")))


def test_prompt_lists_and_their_attributes():
    held = set(fc.heldout_pair_indices())
    comp, seen, para = fc.compositional_prompts(), fc.seen_prompts(), fc.paraphrase_prompts()
    assert len(comp) == 8 * 6 and len(seen) == 72 * 6
    assert all((p.garment, p.colour) in held for p in comp)
    assert not any((p.garment, p.colour) in held for p in seen + para)
    for p in comp + seen:  # training phrasing, held-out pair or not
        assert p.text == fc.caption(p.garment, p.colour, p.size, p.position, 0)
    forms = {p.form for p in para}
    assert forms == {f"paraphrase-template:{j}" for j in range(3)} | {f"synonym:{k}" for k in fc.SYNONYMS}
    targets = fc.prompt_targets(para)
    assert set(targets) == {"garment", "colour", "size", "position"} and targets["colour"].dtype == torch.int64
    assert targets["size"].tolist() == [p.size for p in para]
    assert fc.prompt_targets(fc.compositional_prompts(2))["garment"].tolist() == [p.garment for p in comp]


def test_paraphrases_never_equal_a_training_caption():
    training = fc.all_training_captions()
    assert len(training) == 10 * 8 * 6 * len(fc.TRAIN_TEMPLATES) - 8 * 6  # no article: trousers' 0 and 1 agree
    para = fc.paraphrase_prompts()
    assert len(para) > 400 and not any(p.text in training for p in para)
    # no synonym is a word of any training caption, and no paraphrase framing appears in one
    words = {w for t in training for w in re.findall(r"[\w-]+", t)}
    for kind, table in fc.SYNONYMS.items():
        for word, others in table.items():
            for other in others:
                assert not set(other.split()) <= words, (kind, other)
    assert not any("picture of" in t or " coloured " in t or re.search(r" in (red|blue|green)\b", t) for t in training)
    # each synonym prompt differs from the training caption of its attributes by the synonym only
    for p in para:
        if p.form.startswith("synonym:"):
            assert p.text != fc.caption(p.garment, p.colour, p.size, p.position, 0)


def _fake_fashion(root: Path, n: int = 200) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 5:23, 5:23] = rng.integers(80, 256, (n, 18, 18), dtype=np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def test_load_dataset_fashion_colour_keeps_captions_through_the_split(tmp_path):
    assert "fashion-colour" in DATASETS
    _fake_fashion(tmp_path)
    b = load_dataset(DataConfig(dataset="fashion-colour", path=str(tmp_path), val_fraction=0.2))
    assert len(b.train) == 160 and len(b.val) == 40 and len(b.test) == 200
    assert b.native_size == 32 and b.channels == 3 and b.class_names == list(fc.GARMENTS)
    whole, _ = fc.load_fashion_colour(tmp_path)
    for part in (b.train, b.val):
        assert len(part.captions) == len(part)
        for i in range(len(part)):  # each caption still states its own image's attributes
            g, c, s, p = (int(part.attributes[k][i]) for k in ("garment", "colour", "size", "position"))
            assert part.captions[i] in {fc.caption(g, c, s, p, t) for t in range(len(fc.TRAIN_TEMPLATES))}
    assert sorted(b.train.captions + b.val.captions) == sorted(whole.captions)
    assert b.test.captions is not None and b.test.attributes is not None
    with pytest.raises(ValueError, match="cannot give 1"):
        load_dataset(DataConfig(dataset="fashion-colour", path=str(tmp_path), channels=1))


def test_real_fashion_mnist_renders_quickly():
    if not Path(FASHION_MNIST_ROOT).is_dir():
        pytest.skip(f"{FASHION_MNIST_ROOT} absent (apt-get install dataset-fashion-mnist)")
    from difforge.data import load_fashion_mnist

    train, _ = load_fashion_mnist()
    start = time.perf_counter()
    ds = fc.render_fashion_colour(train.images, train.labels, seed=0)
    took = time.perf_counter() - start  # about 1.3 s on one busy core
    assert len(ds) == 60_000 and took < 20, took
    again, _ = fc.load_fashion_colour()
    assert torch.equal(again.images, ds.images) and again.captions == ds.captions
