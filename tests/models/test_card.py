"""The model card: version 1 descriptions (fixtures written before the card) load as typed
cards, version 2 round-trips, errors are one line; the conditioning specs and their null
values; the architecture's recorded kwargs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from difforge.diffusion.frameworks import FrameworkSpec
from difforge.models.card import VERSION, Architecture, ModelCard
from difforge.models.conditioning import ClassLabels, LowResImage, Unconditional, conditioning_from_dict
from model_cards import tiny_card

FIXTURES = Path(__file__).parents[1] / "fixtures"
DIGITS = tuple(str(k) for k in range(10))


@pytest.mark.parametrize("path, framework, prediction, conditioning, gamma", [
    ("run-ddpm/model.json", "ddpm", "eps", ClassLabels(10), None),
    ("model-sr3/config.json", "ddpm", "eps", LowResImage(2), None),
    ("cards/edm.json", "edm", "edm", Unconditional(), None),
    ("cards/vp-sde-v-minsnr.json", "vp-sde", "v", ClassLabels(10), 5.0),
    ("cards/ncsn.json", "ncsn", "eps", Unconditional(), None),
    ("cards/subvp-sde-x0.json", "subvp-sde", "x0", ClassLabels(10), None),
    ("cards/ve-sde.json", "ve-sde", "eps", Unconditional(), None),
    ("cards/ddpm-cosine-v.json", "ddpm", "v", Unconditional(), None),
])
def test_version_1_descriptions_load_and_round_trip(path, framework, prediction, conditioning, gamma, tmp_path):
    card = ModelCard.load(FIXTURES / path)
    assert (card.framework, card.prediction, card.conditioning) == (framework, prediction, conditioning)
    assert card.diffusion.min_snr_gamma == gamma and card.diffusion.timesteps == 1000
    assert card.class_names == (DIGITS if card.num_classes else None)
    assert (card.image_size, card.native_size, card.channels, card.dataset) == (8, 8, 1, "digits")
    assert card.architecture == Architecture.of_preset("tiny")
    assert card.diffusion.schedule == ("cosine" if "cosine" in path else "linear")
    d = card.to_dict()
    assert d["format"] == "difforge-model" and d["version"] == VERSION == 2
    assert ModelCard.from_dict(json.loads(json.dumps(d))) == card
    assert ModelCard.load(card.save(tmp_path / "card.json")) == card


def test_exported_version_1_card_keeps_step_and_weights():
    card = ModelCard.load(FIXTURES / "model-ddpm" / "config.json")
    assert (card.step, card.weights) == (2, "ema")
    assert card == ModelCard.load(FIXTURES / "run-ddpm" / "model.json").exported(2, "ema")
    assert card.num_classes == 10 and card.class_names == DIGITS and card.conditioning.null_label == 10


def test_oldest_descriptions_are_ddpm_and_the_serve_test_model_loads():
    # before frameworks existed: no "framework" key in "diffusion"
    old = {"format": "difforge-model", "version": 1, "model": {"preset": "tiny", "in_channels": 1, "num_classes": 3},
           "diffusion": {"timesteps": 1000, "schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
           "prediction": "eps", "image_size": 8, "native_size": 8, "channels": 1, "class_names": ["a", "b", "c"]}
    card = ModelCard.from_dict(old)
    assert card.diffusion == FrameworkSpec() and card.conditioning == ClassLabels(3)
    assert card.class_names == ("a", "b", "c")
    assert card.dataset is None and card.step is None


@pytest.mark.parametrize("change, message", [
    ({"format": "other"}, "not a difforge model description"),
    ({"version": 4}, "version 4 is newer than this difforge reads"),
    ({"image_size": None}, "lacks 'image_size'"),
    ({"diffusion": {"framework": "ddim"}}, "unknown framework 'ddim'"),
    ({"diffusion": {"framework": "edm", "min_snr_gamma": 5}, "prediction": None}, "min-SNR weighting applies to"),
    ({"diffusion": {"steps": 10}}, "unknown diffusion setting(s) ['steps']"),
    ({"prediction": "v", "diffusion": {"framework": "ncsn"}}, "framework 'ncsn' trains prediction ['eps'], not 'v'"),
    ({"conditioning": {"kind": "video"}}, "unknown conditioning kind 'video'"),
    ({"conditioning": {"kind": "text", "max_tokens": 8}}, "lacks 'encoder'"),
    ({"conditioning": {"kind": "text", "encoder": "clip", "max_tokens": 8}}, "unknown text encoder 'clip'"),
    ({"architecture": {"preset": "huge"}}, "unknown model 'huge'"),
])
def test_bad_cards_are_one_line_errors(change, message):
    d = {**tiny_card().to_dict(), **change}
    if d.get("image_size", 0) is None:
        del d["image_size"]
    with pytest.raises(ValueError) as e:
        ModelCard.from_dict(d)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_recorded_architecture_kwargs_build_that_network():
    base = tiny_card()
    wider = ModelCard(Architecture("tiny", {**base.architecture.kwargs, "base_channels": 16}), 8, 8, 1)
    again = ModelCard.from_dict(json.loads(json.dumps(wider.to_dict())))
    assert again.architecture.kwargs["base_channels"] == 16 and again.architecture.kwargs["channel_mults"] == (1, 2)
    count = lambda card: sum(p.numel() for p in card.build_network().parameters())  # noqa: E731
    assert count(again) > count(base)


def test_conditioning_kinds_know_their_null_and_network_inputs():
    labels = ClassLabels(4)
    assert torch.equal(labels.null(3), torch.full((3,), 4))
    assert labels.network_kwargs(1) == {"num_classes": 4}
    dropped = labels.drop(torch.arange(4).repeat(50), 0.5, torch.Generator().manual_seed(0))
    assert set(dropped.tolist()) == {0, 1, 2, 3, 4} and 60 < int((dropped == 4).sum()) < 140
    assert Unconditional().null(3) is None and Unconditional().network_kwargs(3) == {"num_classes": None}
    sr = LowResImage(2)
    assert sr.network_kwargs(3) == {"num_classes": None, "cond_channels": 3} and sr.task == "superres"
    with pytest.raises(ValueError, match="no null condition"):
        sr.null(2)
    for spec in (labels, Unconditional(), sr):
        assert conditioning_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        tiny_card(num_classes=3, class_names=("a", "b"))
    # a model that learned no null class (imported from diffusers): no null, no dropout, same network
    bare = ClassLabels(4, has_null=False)
    assert bare.to_dict() == {"kind": "class-labels", "num_classes": 4, "null_label": None}
    assert conditioning_from_dict(json.loads(json.dumps(bare.to_dict()))) == bare
    assert labels.to_dict() == {"kind": "class-labels", "num_classes": 4, "null_label": 4}  # unchanged format
    assert bare.network_kwargs(1) == labels.network_kwargs(1) and bare.drop(torch.arange(4), 0.0) is not None
    for refused in (lambda: bare.null(2), lambda: bare.drop(torch.arange(4), 0.1)):
        with pytest.raises(ValueError, match="needs a null class, which this model did not learn"):
            refused()
    with pytest.raises(ValueError, match="must divide the image size 9"):
        LowResImage(2).check(9, 9)


def test_card_builds_the_model_object():
    card = tiny_card(num_classes=3, framework="vp-sde", prediction="v")
    den = card.denoiser()
    assert den.process.name == "vp-sde" and den.prediction == "v" and den.net.num_classes == 3
    x = torch.zeros(2, 1, 8, 8)
    assert den(x, 1.0, torch.tensor([0, 3])).shape == x.shape
    assert tiny_card(framework="edm").prediction == "edm"  # the framework's default target
