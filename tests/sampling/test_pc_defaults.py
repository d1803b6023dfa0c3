"""Predictor-corrector sampling takes its corrector's signal-to-noise ratio from the
model's noise process when none is given (`corrector_snr`; Song et al.'s 0.16 for every
process until a VP value is measured)."""

import pytest
import torch

from model_cards import pipeline, tiny_card


def _pipe(framework):
    torch.manual_seed(0)
    card = tiny_card(framework=framework)
    net = card.build_network().eval()
    with torch.no_grad():  # a non-zero output layer: the score, and so the corrector's step, is not 0
        for p in net.out_conv.parameters():
            p.normal_(0, 0.05)
    return pipeline(net, card)


@pytest.mark.parametrize("framework", ["ddpm", "vp-sde", "subvp-sde", "ve-sde", "ncsn", "edm"])
def test_the_default_snr_comes_from_the_process(framework):
    pipe = _pipe(framework)
    assert pipe.sampler_defaults("pc", {}) == {"snr": pipe.process.corrector_snr}
    assert pipe.sampler_defaults("pc", {"snr": 0.3}) == {"snr": 0.3}  # what the user gives is kept
    assert pipe.sampler_defaults("reverse-sde", {}) == {}  # no corrector by default: nothing to fill in
    assert pipe.sampler_defaults("ddim", {"eta": 0.5}) == {"eta": 0.5}


def test_generate_uses_it(monkeypatch):
    pipe = _pipe("ddpm")
    monkeypatch.setattr(type(pipe.process), "corrector_snr", 0.05)
    a, _ = pipe.generate(n=2, sampler="pc", steps=4, seed=3)
    b, _ = pipe.generate(n=2, sampler="pc", steps=4, seed=3, snr=0.05)
    c, _ = pipe.generate(n=2, sampler="pc", steps=4, seed=3, snr=0.16)
    assert torch.equal(a, b) and not torch.equal(a, c)
