"""`inspect` on a hand-built result: counts, statistics and contact-sheet contents."""

import numpy as np
from PIL import Image

from difforge.data.inspect import SHEET_CELL, _channel_stats, contact_sheets, prepare_summary, summary
from difforge.data.prepare import Prepared


def _prepared(rng):
    arrays = {"train": rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8),
              "val": rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8),
              "test": np.zeros((0, 3, 8, 8), np.uint8)}
    labels = {"train": np.array([0, 1, 1, 0, 1]), "val": np.array([1, 0]), "test": np.zeros(0, np.int64)}
    shas = iter(f"{k:064x}" for k in rng.permutation(7))
    items = {s: {"source": [f"{s}/{i}.png" for i in range(len(a))], "sha256": [next(shas) for _ in range(len(a))],
                 "phash": ["0" * 16] * len(a), "width": [8 + i for i in range(len(a))],
                 "height": [8] * len(a), "mode": ["RGB"] * len(a)} for s, a in arrays.items()}
    report = {"candidates": 9, "decoded": 8, "kept": 7,
              "quarantined": [{"source": "x.png",
                               "reason": "UnidentifiedImageError: cannot identify image file '/d/x.png'"}],
              "duplicates": [{"source": "train/9.png", "duplicate_of": "train/0.png", "sha256": "0",
                              "label_conflict": ["a", "b"]}],
              "near_duplicates": {"max_distance": 4, "max_mae": 4.0, "pairs_found": 1, "pairs_across_splits": 1,
                                  "images_involved": 2,
                                  "pairs": [{"a": "train/1.png", "b": "val/0.png", "distance": 2, "mae": 1.5,
                                             "splits": ["train", "val"]}]},
              "outliers": [{"source": "train/4.png", "split": "train",
                            "reasons": ["tiny: 3x3, shorter side under 4"]}],
              "outliers_removed": False}
    settings = {"size": 8, "channels": 3, "val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0}
    return Prepared(arrays, labels, items, ["a", "b"], settings, {"path": "/d", "kind": "folder"}, report)


def test_summary_counts_and_statistics():
    p = _prepared(np.random.default_rng(0))
    text = "\n".join(summary(p))
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line[:1] in ("a", "b", "(")}
    assert rows["a"] == ["2", "1", "0", "3", "33.3", "0.0"] and rows["b"] == ["3", "1", "0", "4", "25.0", "0.0"]
    assert rows["(all)"] == ["5", "2", "0", "7", "28.6", "0.0"]
    assert "stored widths: min 8, median 9, max 12" in text
    x = np.concatenate([p.arrays["train"], p.arrays["val"]]).astype(float)
    assert f"red mean {x[:, 0].mean():.1f} std {x[:, 0].std():.1f}" in text
    assert "1 x UnidentifiedImageError: cannot identify image file FILE" in text
    assert "train/9.png = train/0.png (labels 'a' vs 'b')" in text
    assert ("1 pair(s) over 2 image(s), 1 across splits" in text
            and "outliers flagged, kept: 1 image(s): tiny 1" in text)


def test_prepare_summary_is_one_line_of_counts():
    assert prepare_summary(_prepared(np.random.default_rng(0))) == (
        "kept 7 of 9 files (train 5, val 2, test 0); quarantined 1, duplicates removed 1, near-duplicate pairs 1 "
        "(1 across splits), outliers 1")


def test_channel_stats_exact_in_chunks():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (50, 3, 4, 4), dtype=np.uint8), rng.integers(0, 256, (3, 3, 4, 4), dtype=np.uint8)
    mean, std = _channel_stats([a, b], chunk=7)
    flat = np.concatenate([a, b]).transpose(1, 0, 2, 3).reshape(3, -1).astype(float)
    np.testing.assert_allclose(mean, flat.mean(1), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(1), rtol=1e-9)


def test_contact_sheets_sample_by_hash_and_pair_up(tmp_path):
    p = _prepared(np.random.default_rng(2))
    written = {f.name for f in contact_sheets(p, tmp_path)}
    assert written == {"00-a.png", "01-b.png", "outliers.png", "near_duplicates.png"}
    scale = SHEET_CELL // 8
    # class a's first cell is its image with the smallest content hash
    cands = [(p.items[s]["sha256"][i], s, i) for s in ("train", "val") for i in range(len(p.arrays[s]))
             if p.labels[s][i] == 0]
    _, s, i = min(cands)
    sheet = np.asarray(Image.open(tmp_path / "00-a.png"))
    cell = sheet[2 * scale : 10 * scale : scale, 2 * scale : 10 * scale : scale]  # pad 2, then 8 px, nearest x scale
    np.testing.assert_array_equal(cell, p.arrays[s][i].transpose(1, 2, 0))
    pair = np.asarray(Image.open(tmp_path / "near_duplicates.png"))
    right = pair[2 * scale : 10 * scale : scale, 12 * scale : 20 * scale : scale]
    np.testing.assert_array_equal(right, p.arrays["val"][0].transpose(1, 2, 0))
