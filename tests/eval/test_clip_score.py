"""The domain CLIP: a short training on fashion-colour-rendered images separates matched from
shuffled captions, the CLIP score against a hand computation, save / load, retrieval, the
commands and their one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import run
from difforge.data import fashion_colour as fc
from difforge.data.dataset import DatasetBundle
from difforge.eval.clip import (
    CLIPConfig,
    clip_score,
    clip_scores,
    dataset_clip_score,
    load_clip,
    retrieval_accuracy,
    train_clip,
)


def _rendered(n: int, seed: int):
    """fashion-colour's renderer on stand-in garments (a textured block; the real set needs the
    Fashion-MNIST files and a minute to load): colour, size and position are as in the set."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 4:24, 6:22] = torch.randint(60, 256, (n, 1, 20, 16), generator=g, dtype=torch.uint8)
    return fc.render_fashion_colour(images, torch.arange(n) % 10, seed=seed)


@pytest.fixture(scope="module")
def trained():
    bundle = DatasetBundle(train=_rendered(1024, 0), val=None, test=_rendered(256, 1), native_size=32, channels=3,
                           class_names=list(fc.GARMENTS))
    cfg = CLIPConfig(steps=60, batch_size=64, widths=(8, 16, 32), embed_dim=32, lr=3e-3, eval_images=256)
    return train_clip(bundle, cfg), bundle


def test_short_training_scores_matched_pairs_above_shuffled_ones(trained):
    clip, bundle = trained
    score = clip.meta["clip_score"]
    assert score["n"] == 256 and score["matched"] > score["shuffled"] + 20, score
    r = clip.meta["retrieval"]
    assert r["batch_image_to_text"] > 2 * r["batch_chance"], r
    assert clip.meta["eval_split"] == "test" and clip.meta["steps"] == 60
    # the Python function gives the same figure on the same pairs
    test = bundle.test
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    same = dataset_clip_score(clip, test, seed=0)
    assert clip_score(clip, test.images[pick], [test.captions[i] for i in pick.tolist()]) == pytest.approx(
        same["matched"], rel=1e-9)


class _Fixed:
    """Stands in for a DomainCLIP with given embeddings."""

    def __init__(self, img, txt):
        self.img, self.txt = torch.tensor(img), torch.tensor(txt)

    def embed_images(self, images):
        return self.img[: len(images)]

    def embed_texts(self, prompts):
        return self.txt[: len(prompts)]


def test_clip_score_is_100_max_cos_0_averaged_by_hand():
    fake = _Fixed([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-0.8, 0.6]])
    images, prompts = torch.zeros(4, 1, 2, 2, dtype=torch.uint8), ["a", "b", "c", "d"]
    # cosines 1, 0, 0.8, -0.8 -> 100, 0, 80, 0 (negative clamped)
    np.testing.assert_allclose(clip_scores(fake, images, prompts), [100.0, 0.0, 80.0, 0.0], rtol=1e-6)
    assert clip_score(fake, images, prompts) == pytest.approx(45.0, rel=1e-6)
    with pytest.raises(ValueError, match="4 images and 3 prompts"):
        clip_score(fake, images, prompts[:3])


def test_scores_follow_the_embeddings_and_save_load_round_trips(trained, tmp_path):
    clip, bundle = trained
    images, prompts = bundle.test.images[:8], bundle.test.captions[:8]
    with torch.no_grad():
        from difforge.io.space import to_model_input

        e_i = clip.net.embed_images(to_model_input(images, 32)).double()
        e_t = clip.net.embed_text(clip.conditioner(prompts)).double()
    np.testing.assert_allclose(clip_scores(clip, images, prompts), (100 * (e_i * e_t).sum(1).clamp(min=0)).numpy(),
                               rtol=1e-5, atol=1e-4)
    clip.save(tmp_path / "c")
    again = load_clip(tmp_path / "c")
    assert torch.equal(again.embed_images(images), clip.embed_images(images))
    assert torch.equal(again.embed_texts(prompts), clip.embed_texts(prompts))
    assert again.meta == json.loads(json.dumps(clip.meta))


def test_scoring_refuses_long_prompts_and_wrong_images(trained):
    clip, bundle = trained
    with pytest.raises(ValueError, match="over the limit of 64"):
        clip_score(clip, bundle.test.images[:1], ["x" * 100])
    with pytest.raises(ValueError, match="this CLIP model takes 3x32x32"):
        clip_score(clip, torch.zeros(1, 1, 32, 32, dtype=torch.uint8), ["a red bag"])
    with pytest.raises(ValueError, match="no captions"):
        dataset_clip_score(clip, bundle.test.replace(captions=None))


def test_retrieval_counts_a_repeated_caption_as_right():
    """Two pairs share a caption: retrieving either copy is right, so the chance level counts both."""
    ds = _rendered(4, 0).replace(captions=["a", "a", "b", "c"])
    fake = _Fixed([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]],
                  [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # distinct captions a, b, c
    fake.embed_texts = lambda prompts: torch.tensor(
        [{"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}[p] for p in prompts])
    r = retrieval_accuracy(fake, ds, batch_size=4)
    # image->text: images 0, 1 find "a" (right), 2 finds "b" (right), 3 finds "b" (wrong)
    assert r["batch_image_to_text"] == pytest.approx(0.75) and r["caption_image_to_text"] == pytest.approx(0.75)
    assert r["batch_chance"] == pytest.approx((2 + 2 + 1 + 1) / 16) and r["caption_chance"] == pytest.approx(1 / 3)
    # text->image: captions a, a pick image 0 (right), b picks image 2 (right), c picks image 0 (wrong)
    assert r["batch_text_to_image"] == pytest.approx(0.75)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """20 RGB 8x8 squares, red or blue, with a caption naming the colour (metadata.jsonl)."""
    root = tmp_path_factory.mktemp("captioned")
    lines = []
    for i in range(20):
        name, rgb = [("red", (220, 30, 30)), ("blue", (30, 30, 220))][i % 2]
        a = np.zeros((8, 8, 3), np.uint8)
        a[2:6, 2:6] = rgb
        Image.fromarray(a).save(root / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": f"a {name} square"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_train_clip_and_clip_score_commands(captioned, tmp_path, capsys):
    out = tmp_path / "clip"
    args = ["train-clip", "--data", str(captioned), "--out", str(out), "--steps", "3", "--batch-size", "8",
            "--device", "cpu"]
    assert run(args) == 0
    text = capsys.readouterr().out
    assert "clip step 3/3" in text and "image->text top-1" in text and f"wrote {out}" in text
    meta = json.loads((out / "clip.json").read_text())
    assert meta["format"] == "difforge-clip" and meta["eval_split"] == "val" and meta["steps"] == 3
    assert (out / "model.safetensors").is_file()
    before = (out / "model.safetensors").read_bytes()
    assert run(args) == 1  # refused: already a CLIP model there
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert run([*args[:3], "--out", str(tmp_path / "mine"), *args[5:]]) == 1
    assert "holds no CLIP model" in capsys.readouterr().err

    assert run(["clip-score", str(out), "--data", str(captioned), "--split", "train", "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    assert "CLIP score" in line and "shuffled" in line and "18 train pairs" in line
    assert run(["clip-score", str(out), "--device", "cpu"]) == 0  # the recorded training data, its held-out split
    assert "on 2 val pairs of folder" in capsys.readouterr().out


def test_commands_refuse_bad_input_in_one_line(captioned, tmp_path, capsys):
    assert run(["train-clip", "--data", str(captioned), "--out", str(tmp_path / "a"), "--steps", "0"]) == 1
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert run(["train-clip", "--dataset", "digits", "--out", str(tmp_path / "b"), "--steps", "1"]) == 1
    assert "no captions" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert run(["clip-score", str(tmp_path / "none"), "--data", str(captioned)]) == 1
    assert "no CLIP model" in capsys.readouterr().err


def test_a_minilm_clip_trains_its_projection_and_loads_back(captioned, tmp_path, capsys):
    """The frozen MiniLM path (the `text` extra, installed with `test`): only the projection and the
    image tower are saved, and a loaded model embeds prompts as the trained one did."""
    out = tmp_path / "m"
    assert run(["train-clip", "--data", str(captioned), "--out", str(out), "--steps", "2", "--batch-size", "8",
                "--text-encoder", "minilm", "--device", "cpu"]) == 0
    assert "encoding 2 distinct captions with the frozen MiniLM" in capsys.readouterr().out
    clip = load_clip(out)
    assert clip.net.text_encoder is None and clip.meta["arch"]["text_encoder"] == "minilm"
    from safetensors.torch import load_file

    assert not any("encoder" in k for k in load_file(out / "model.safetensors"))
    e = clip.embed_texts(["a red square", "a blue square"])
    assert torch.allclose(e.norm(dim=1), torch.ones(2)) and not torch.allclose(e[0], e[1])
