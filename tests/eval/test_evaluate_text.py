"""`difforge evaluate` on a text-to-image model of fashion-colour, end to end on a tiny
model and a 200-garment stand-in for Fashion-MNIST: FD from the training captions, the
prompt sets' attribute accuracies, the guidance sweep, and the one-line refusals."""

import json

import numpy as np
import pytest

from cli_runner import run
from difforge.config import load_config
from difforge.data import load_dataset
from difforge.defaults import DEFAULT_CFG_TEXT as CFG  # evaluate's guidance scale for prompts
from difforge.eval.classifier import ClassifierConfig, classifier_dir, dataset_key, train_classifier
from difforge.eval.garment import garment_classifier_dir, load_or_train_garment_classifier
from garment_squares import write_garment_squares

ATTRIBUTE_KEYS = {"garment", "colour", "size", "position", "garment+colour", "all"}
SETS = ["seen", "held-out pairs", "paraphrases"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 2-step text model and both classifiers (one epoch each) in a private DIFFORGE_CACHE."""
    root = tmp_path_factory.mktemp("text-eval")
    write_garment_squares(root / "fm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFORGE_CACHE", str(root / "cache"))
        assert run(["train", "--dataset", "fashion-colour", "--set", f"data.path={root / 'fm'}", "--model", "tiny",
                    "--text-encoder", "scratch", "--max-steps", "2", "--batch-size", "8", "--sample-every", "0",
                    "--checkpoint-every", "0", "--out", str(root / "run"), "--no-progress",
                    "--set", "train.final_grid=false"]) == 0
        data = load_config(root / "run" / "config.yaml").data
        bundle = load_dataset(data)
        quick = ClassifierConfig(epochs=1, batch_size=32)
        train_classifier(bundle, quick, dataset_key=dataset_key(data), data=data).save(classifier_dir(data))
        load_or_train_garment_classifier(data, cfg=quick, bundle=bundle)
        assert (garment_classifier_dir(data) / "classifier.json").is_file()
    return root


@pytest.fixture
def cache(setup, monkeypatch):
    monkeypatch.setenv("DIFFORGE_CACHE", str(setup / "cache"))
    return setup


def test_evaluate_a_text_model_reports_fd_and_the_prompt_sets(cache, tmp_path, capsys):
    out = tmp_path / "ev"
    assert run(["evaluate", str(cache / "run"), "--n", "6", "--steps", "2", "--prompts-per-set", "3",
                "--cfg-sweep", f"1,{CFG:g}", "--no-memorization", "--out", str(out), "--no-progress",
                "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "classifier: FD" in text and f"prompt following at guidance {CFG:g}" in text and "held-out pairs" in text
    r = json.loads((out / "report.json").read_text())
    assert r["n"] == 6 and r["floor_n"] == 6 and r["sampling"]["text"] and r["sampling"]["cfg"] == CFG
    assert r["sampling"]["prompts"] == "captions of training images"
    assert np.isfinite(r["metrics"]["classifier"]["fd"]) and np.isfinite(r["floor"]["classifier"]["fd"])
    assert sum(row["n"] for row in r["per_class"]) == 6  # the classes of the captions' images
    pf = r["prompt_following"]
    assert pf["cfg"] == CFG and list(pf["sets"]) == SETS
    assert [s["prompts"] for s in pf["sets"].values()] == [3, 3, 3]
    assert pf["sets"]["held-out pairs"]["of"] == 48 and pf["sets"]["seen"]["of"] == 432
    for row in [*(s["accuracy"] for s in pf["sets"].values()), pf["ceiling"]["accuracy"]]:
        assert set(row) == ATTRIBUTE_KEYS
        assert row["all"] <= min(row[k] for k in ("garment", "colour", "size", "position"))
        assert row["garment+colour"] <= min(row["garment"], row["colour"])
    assert all(round(v * 3, 9) in (0, 1, 2, 3) for s in pf["sets"].values() for v in s["accuracy"].values())
    g = pf["garment_classifier"]
    assert g["input"] == "max(R,G,B)" and 0 <= g["test_accuracy"] <= 1 and g["eval_images"] == 200
    # the ceiling measures the 200 real test images (its garment: the classifier's held-out accuracy; the
    # stand-in garments are 18 px squares, so their size is not always measurable, but their hue is)
    assert pf["ceiling"]["n"] == 200 and pf["ceiling"]["accuracy"]["garment"] == pytest.approx(g["test_accuracy"])
    assert pf["ceiling"]["accuracy"]["colour"] == 1.0
    assert [row["cfg"] for row in r["cfg_sweep"]] == [1.0, CFG]
    assert r["cfg_sweep"][1]["fd"] == pytest.approx(r["metrics"]["classifier"]["fd"])  # the default reuses them
    assert r["cfg_sweep"][1]["prompt_sets"] == {k: s["accuracy"] for k, s in pf["sets"].items()}
    assert set(r["cfg_sweep"][0]["prompt_sets"]) == set(SETS)
    md = (out / "report.md").read_text()
    assert "## Prompt following" in md and "(ceiling)" in md and "garment+colour" in md
    assert "Prompt sets at each guidance scale" in md
    assert (out / "cfg_sweep.png").stat().st_size > 0


def test_options_that_do_not_apply_are_one_line_errors(cache, tmp_path, capsys):
    base = ["evaluate", str(cache / "run"), "--n", "4", "--no-progress", "--out"]
    assert run([*base, str(tmp_path / "a"), "--prompts-per-set", "0"]) != 0
    assert "--prompts-per-set must be >= 1" in capsys.readouterr().err
    assert run([*base, str(tmp_path / "b"), "--prompts-per-set", "3", "--dataset", "fashion-mnist"]) != 0
    err = capsys.readouterr().err
    assert "applies to text-to-image models of fashion-colour only" in err and len(err.strip().splitlines()) == 1
    npz = tmp_path / "s.npz"
    np.savez(npz, images=np.zeros((4, 32, 32, 3), np.uint8))
    assert run([*base, str(tmp_path / "c"), "--npz", str(npz), "--garment-classifier", str(tmp_path / "g")]) != 0
    assert "does not apply to --npz" in capsys.readouterr().err


def test_the_clip_score_evaluate_reports_is_clip_score_of_the_same_images(cache, tmp_path, capsys):
    from difforge.data.fashion_colour import seen_prompts
    from difforge.eval.clip import CLIPConfig, clip_score, load_clip, train_clip
    from difforge.eval.prompts import spread
    from difforge.pipeline import load_pipeline

    data = load_config(cache / "run" / "config.yaml").data
    bundle = load_dataset(data)
    tiny = CLIPConfig(steps=3, batch_size=16, widths=(8, 16), embed_dim=16, eval_images=32)
    train_clip(bundle, tiny).save(tmp_path / "clip")
    out = tmp_path / "ev"
    assert run(["evaluate", str(cache / "run"), "--n", "4", "--steps", "2", "--prompts-per-set", "3",
                "--cfg-sweep", f"1,{CFG:g}", "--no-memorization", "--clip", str(tmp_path / "clip"), "--out", str(out),
                "--no-progress", "--device", "cpu"]) == 0
    assert "CLIP score" in capsys.readouterr().out
    r = json.loads((out / "report.json").read_text())
    clip, pipe = load_clip(tmp_path / "clip"), load_pipeline(cache / "run")
    prompts = [p.text for p in spread(seen_prompts(), 3)]
    images, _ = pipe.generate(prompts=prompts, cfg=CFG, steps=2, seed=0)  # evaluate's default sampler
    pf = r["prompt_following"]
    assert pf["sets"]["seen"]["clip_score"] == pytest.approx(clip_score(clip, images, prompts), abs=1e-9)
    assert pf["ceiling"]["clip_score"] == pytest.approx(clip_score(clip, bundle.test.images, bundle.test.captions))
    images_1, _ = pipe.generate(prompts=prompts, cfg=1.0, steps=2, seed=0)
    sweep = {row["cfg"]: row for row in r["cfg_sweep"]}
    assert sweep[1.0]["prompt_set_clip_scores"]["seen"] == pytest.approx(clip_score(clip, images_1, prompts))
    assert sweep[CFG]["prompt_set_clip_scores"] == {name: s["clip_score"] for name, s in pf["sets"].items()}
    cs = r["clip_score"]
    assert cs["n"] == 4 and 0 <= cs["samples"] <= 100 and 0 <= cs["floor"] <= 100 and sweep[CFG]["clip_score"] == \
        pytest.approx(cs["samples"])
    assert "## CLIP score" in (out / "report.md").read_text()


def test_clip_option_errors_are_one_line(cache, tmp_path, capsys):
    base = ["evaluate", str(cache / "run"), "--n", "4", "--no-progress", "--out"]
    assert run([*base, str(tmp_path / "a"), "--clip", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err
    assert "--clip" in err and "no CLIP model" in err and len(err.strip().splitlines()) == 1
    npz = tmp_path / "s.npz"
    np.savez(npz, images=np.zeros((4, 32, 32, 3), np.uint8))
    assert run([*base, str(tmp_path / "b"), "--npz", str(npz), "--clip", str(tmp_path / "nowhere")]) != 0
    assert "does not apply to --npz" in capsys.readouterr().err
