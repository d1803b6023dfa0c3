"""Text super-resolution (Imagen's super-resolution stages): a model conditioned on the
low-resolution image and on the caption. Training from the CLI on a captioned folder, the
card, export and loading; upscaling with prompts in Python and from the CLI; the cascade
with a text base model; the one-line errors.

A closed-form "model" (Gaussian data whose mean is the conditioning image plus a shift the
prompt chooses) pins the guidance: the prompt against the empty or the negative prompt,
the conditioning image in both passes. An untrained tiny text SR UNet with random weights
pins batches against single images, the prompt and the image reaching the output, and
guidance scale 1 against the conditional model sampled by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from captioned_squares import write_captioned_squares
from cli_runner import run
from difforge import tasks
from difforge.diffusion import make_schedule
from difforge.io.space import from_uint8
from difforge.model_files import export_model
from difforge.models import build_model
from difforge.models.card import ModelCard
from difforge.models.conditioning import TextLowResImage, TextPrompts, conditioning_from_dict
from difforge.models.text import BYTE_OFFSET
from difforge.models.text_image import TextImageCond
from difforge.pipeline import load_pipeline
from difforge.sampling import ClampDenoiser, get_sampler, per_sample_generators, randn_like
from model_cards import pipeline, random_tiny_net, tiny_card

SR = TextLowResImage(2, "scratch", max_tokens=16, width=32, layers=1, heads=2)
SHIFT = {"u": 0.2, "d": -0.2}  # a prompt's first letter -> the shift of its images from the conditioning image
SD = 0.3


def _low(n: int, seed: int = 0) -> torch.Tensor:
    """n low-resolution RGB images (4x4, the x2 model's input) in [-0.3, 0.3]."""
    return (torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) - 0.5) * 0.6


def test_the_conditioning_spec_round_trips_and_builds_a_text_sr_network(tmp_path):
    d = SR.to_dict()
    assert d == {"kind": "text-low-res-image", "scale": 2, "encoder": "scratch", "max_tokens": 16, "width": 32,
                 "layers": 1, "heads": 2}
    assert conditioning_from_dict(d) == SR and SR.task == "superres"
    assert SR != TextPrompts("scratch", 16, 32, 1, 2)  # a text generator is another kind
    assert SR.network_kwargs(3)["cond_channels"] == 3 and SR.network_kwargs(3)["context_dim"] == 32
    minilm = TextLowResImage(4, "minilm", 64)  # a frozen encoder: the card keeps the choice (no weights needed)
    card = tiny_card(size=16, channels=3, conditioning=minilm)
    card.save(tmp_path / "config.json")
    assert ModelCard.load(tmp_path / "config.json").conditioning == minilm
    assert minilm.network_kwargs(3) == {"num_classes": None, "context_dim": 384, "pooled_dim": 384,
                                        "text_encoder": None, "cond_channels": 3}
    with pytest.raises(ValueError, match="scale must be >= 2"):
        TextLowResImage(1, "scratch", 16)
    with pytest.raises(ValueError, match="unknown text encoder"):
        TextLowResImage(2, "t5", 16)
    net = build_model("tiny", in_channels=3, **SR.network_kwargs(3))
    text = SR.conditioner()(["a", "bb"])
    for bad, message in ((text, "needs a TextImageCond"), (torch.zeros(2, 3, 8, 8), "needs a TextImageCond")):
        with pytest.raises(ValueError, match=message) as e:
            net(torch.zeros(2, 3, 8, 8), torch.zeros(2), bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"must be \(2, C, H, W\)"):
        TextImageCond(text, torch.zeros(3, 3, 8, 8))


def test_text_image_cond_is_a_batch():
    text = SR.conditioner()(["a", "bb", "ccc"])
    image = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 8, 8)
    c = TextImageCond(text, image)
    assert len(c) == 3 and torch.equal(c[1].image, image[1:2]) and torch.equal(c[1].text.ids, text[1].ids)
    assert torch.equal(c[torch.tensor([2, 0])].image, image[[2, 0]])
    both = TextImageCond.cat([c[:1], c[2:]])
    assert torch.equal(both.image, image[[0, 2]]) and both.text.ids.shape == (2, 5)  # "ccc" + BOS/EOS


class ShiftedGaussianEps(nn.Module):
    """The exact eps-prediction for data x0 ~ N(image + shift(prompt), SD^2) per pixel:
    with x = x0 + sigma n and mu = image + shift, D = mu + a (x - mu), a = SD^2 / (SD^2 + sigma^2)."""

    num_classes = None

    def __init__(self):
        super().__init__()
        self.schedule = make_schedule("linear", 1000)

    def forward(self, x_vp, t, cond):
        first = cond.text.ids[:, 1] - BYTE_OFFSET  # the byte after BOS (EOS for the empty prompt)
        shift = sum(m * (first == ord(c)).double() for c, m in SHIFT.items()).view(-1, 1, 1, 1)
        mu = cond.image.double() + shift
        sigma = self.schedule.t_to_sigma(t.double()).view(-1, 1, 1, 1)
        x = x_vp.double() * (1 + sigma**2).sqrt()
        return ((x - mu) * sigma / (sigma**2 + SD**2)).to(x_vp.dtype)


def _ddim_closed_form(x: torch.Tensor, mu: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DDIM (eta 0) with the exact Gaussian denoiser: x - mu shrinks by (SD^2 + s s') / (SD^2 + s^2) per step."""
    x = x.double()
    for s, t in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        x = mu + (x - mu) * (SD**2 + s * t) / (SD**2 + s * s)
    return x


@pytest.mark.parametrize("prompts, negative, cfg, shifts", [
    (["up", "down"], None, 2.0, [0.4, -0.4]),  # guided from the empty prompt (shift 0): 0 + 2 (s - 0)
    (["up"], "down", 2.0, [0.6, 0.6]),  # one prompt for both, from the negative prompt: -0.2 + 2 (0.2 + 0.2)
    (None, None, None, [0.0, 0.0]),  # no prompt: the empty prompt, unguided
    (None, "down", 1.5, [0.1, 0.1]),  # no prompt, away from a negative one: -0.2 + 1.5 (0 + 0.2)
    (["down", "up"], None, 1.0, [-0.2, 0.2]),  # cfg 1: the plain conditional model
])
def test_guidance_compares_prompts_with_the_same_image_in_both_passes(prompts, negative, cfg, shifts):
    """CFG on Gaussians of one variance is the Gaussian of the guided mean: the image (in
    both branches, so it is not scaled) plus shift_null + cfg (shift - shift_null)."""
    pipe = pipeline(ShiftedGaussianEps(), tiny_card(channels=3, conditioning=SR))
    low, steps, seed = _low(2), 10, 4
    out = tasks.upscale(pipe, low, 2, prompts=prompts, negative_prompt=negative, cfg=cfg, sampler="ddim",
                        steps=steps, seed=seed, clip=False)
    sigmas = pipe.sigmas("ddim", steps)
    up = SR.from_low(low, 8)
    start = randn_like(up, per_sample_generators(range(seed, seed + 2))).double() * pipe.model.prior_std(
        float(sigmas[0]))
    mu = up.double() + torch.tensor(shifts, dtype=torch.float64).view(-1, 1, 1, 1)
    want = _ddim_closed_form(start, mu, sigmas).clamp(-1, 1)  # images come back in [-1, 1]
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=0)


def _text_sr_net(seed: int = 0):
    return random_tiny_net(SR, seed=seed)


@pytest.fixture(scope="module")
def sr_pipe():
    return pipeline(*_text_sr_net())


def test_a_batch_is_each_image_alone_and_prompt_and_image_both_condition(sr_pipe):
    low, prompts, kw = _low(2), ["a red square", "a blue bag"], dict(steps=4, seed=5)
    both = tasks.upscale(sr_pipe, low, 2, prompts=prompts, **kw)
    assert both.shape == (2, 3, 8, 8) and both.abs().max() <= 1
    alone = [tasks.upscale(sr_pipe, low[i:i + 1], 2, prompts=[p], steps=4, seed=5 + i) for i, p in enumerate(prompts)]
    torch.testing.assert_close(both, torch.cat(alone), atol=1e-4, rtol=0)  # image i: its prompt and seed + i
    other_prompt = tasks.upscale(sr_pipe, low[:1], 2, prompts=["a blue bag"], **kw)
    assert (other_prompt - alone[0]).abs().max() > 1e-3  # the prompt reaches the output
    other_image = tasks.upscale(sr_pipe, _low(1, seed=9), 2, prompts=["a red square"], **kw)
    assert (other_image - alone[0]).abs().max() > 1e-3  # so does the low-resolution image
    negative = tasks.upscale(sr_pipe, low[:1], 2, prompts=["a red square"], negative_prompt="a blue bag", **kw)
    assert (negative - alone[0]).abs().max() > 1e-3
    # pixels (uint8) in, pixels out; one prompt for all images
    u8 = tasks.upscale(sr_pipe, torch.full((2, 3, 4, 4), 128, dtype=torch.uint8), 2, prompts=["a red square"], **kw)
    assert u8.dtype == torch.uint8 and u8.shape == (2, 3, 8, 8)


def test_guidance_scale_1_is_the_conditional_model_sampled_by_hand(sr_pipe):
    low, prompts, steps, seed = _low(2, seed=1), ["a red square", "a blue bag"], 4, 2
    out = tasks.upscale(sr_pipe, low, 2, prompts=prompts, cfg=1, steps=steps, seed=seed, negative_prompt="xyz")
    sigmas = sr_pipe.sigmas("ddpm", steps)
    up = SR.from_low(low, 8)
    cond = TextImageCond(SR.conditioner()(prompts), up)
    gens = per_sample_generators(range(seed, seed + 2))
    x = randn_like(up, gens) * sr_pipe.model.prior_std(float(sigmas[0]))
    with torch.no_grad():
        want = get_sampler("ddpm")(ClampDenoiser(sr_pipe.model), x, sigmas, generator=gens, cond=cond)
    torch.testing.assert_close(out, want.clamp(-1, 1), atol=1e-6, rtol=0)
    guided = tasks.upscale(sr_pipe, low, 2, prompts=prompts, cfg=3, steps=steps, seed=seed)
    assert (guided - out).abs().max() > 1e-3


def test_no_prompt_is_the_empty_prompt_unguided(sr_pipe):
    low, kw = _low(2, seed=3), dict(steps=3, seed=1)
    none = tasks.upscale(sr_pipe, low, 2, **kw)
    assert torch.equal(none, tasks.upscale(sr_pipe, low, 2, prompts=[""], cfg=1, **kw))
    assert torch.equal(none, sr_pipe.upscale(low, prompts=[""], cfg=1, **kw))


def test_prompt_errors_are_one_line(sr_pipe, make_sr_pipe):
    plain = make_sr_pipe()
    low1, low3 = torch.zeros(2, 1, 4, 4), _low(2)
    cases = [
        (lambda: tasks.upscale(plain, low1, 2, prompts=["a"], steps=2), "not a text-to-image model: it takes no "
         "prompt"),
        (lambda: tasks.upscale(plain, low1, 2, negative_prompt="a", steps=2), "not a text-to-image model"),
        (lambda: plain.upscale(low1, prompts=["a"], steps=2), "not a text-to-image model: it takes no prompt"),
        (lambda: tasks.upscale(sr_pipe, low3, 2, prompts=["a", "b", "c"], steps=2), "got 3 prompts for 2 images"),
        (lambda: tasks.upscale(sr_pipe, low3, 2, prompts=["x" * 40], steps=2), "token"),
        (lambda: tasks.upscale(sr_pipe, low3, 2, labels=torch.tensor([0, 0]), steps=2), "no class labels"),
        (lambda: sr_pipe.generate(2, prompts=["a"]), "super-resolution model: use `difforge upscale`"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- end to end: train, export, the CLI, a cascade


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """16 RGB 8x8 squares, each a colour and a caption naming it (metadata.jsonl)."""
    return write_captioned_squares(tmp_path_factory.mktemp("captioned"))


@pytest.fixture(scope="module")
def trained(captioned, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "textsr"
    assert run(["train", "--data", str(captioned), "--model", "tiny", "--task", "superres", "--scale", "2",
                "--text-encoder", "scratch", "--set", "model.max_tokens=32", "--max-steps", "3", "--batch-size", "8",
                "--sample-every", "0", "--no-progress", "--out", str(out)]) == 0
    return out


def test_a_text_sr_model_trains_records_its_card_and_exports(trained, tmp_path):
    card = ModelCard.load(trained / "model.json")
    assert card.task == "superres" and card.conditioning == TextLowResImage(2, "scratch", 32)
    assert card.network_kwargs()["cond_channels"] == 3 and card.num_classes is None
    assert set(card.prompts) <= {"a red square", "a blue square"}
    assert (trained / "samples" / "final.png").is_file()  # truth, low-res, upscaled with the held-out captions
    pipe = load_pipeline(trained)
    assert pipe.takes_text
    low = _low(2)
    y = tasks.upscale(pipe, low, 2, prompts=["a red square"], steps=3)
    assert y.shape == (2, 3, 8, 8)
    export_model(trained, tmp_path / "exported")
    again = load_pipeline(tmp_path / "exported")
    assert again.card.conditioning == card.conditioning and again.takes_text
    assert torch.equal(tasks.upscale(again, low, 2, prompts=["a red square"], steps=3), y)


def test_cli_upscale_with_prompts_is_the_python_call(trained, tmp_path, capsys):
    low = torch.randint(0, 256, (1, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    png = tmp_path / "low.png"
    Image.fromarray(low[0].permute(1, 2, 0).numpy()).save(png)
    out = tmp_path / "up.png"
    assert run(["upscale", str(trained), "--image", str(png), "--prompt", "a red square", "--negative-prompt",
                "a blue square", "--cfg", "2", "--steps", "4", "--out", str(out), "--no-progress"]) == 0, \
        capsys.readouterr().err
    want = tasks.upscale(load_pipeline(trained), low, 2, prompts=["a red square"], negative_prompt="a blue square",
                         cfg=2, steps=4)
    assert np.array_equal(np.asarray(Image.open(out)), want[0].permute(1, 2, 0).numpy())


def test_cli_cascade_gives_the_prompt_to_both_text_models(trained, tmp_path, capsys):
    from safetensors.torch import save_file

    base = tmp_path / "base"
    base.mkdir()
    card = tiny_card(channels=3, conditioning=TextPrompts("scratch", 32, width=32, layers=1, heads=2))
    torch.manual_seed(0)
    save_file(card.build_network().state_dict(), base / "model.safetensors")
    card.save(base / "config.json")
    out = tmp_path / "cascade.npz"
    assert run(["upscale", str(trained), "--base", str(base), "--n", "2", "--prompt", "a red square", "--steps", "3",
                "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    got = torch.from_numpy(np.load(out)["images"]).permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    images, _ = load_pipeline(base).generate(n=2, prompts=["a red square"], seed=0)
    low = torch.nn.functional.interpolate(from_uint8(images), size=(4, 4), mode="area")
    sr = load_pipeline(trained)
    want = tasks.upscale(sr, low, 2, prompts=["a red square"], steps=3)
    assert torch.equal(got, from_uint8_like(want))
    without = tasks.upscale(sr, low, 2, steps=3)  # the upscaler's own prompt matters: not the empty prompt
    assert not torch.equal(from_uint8_like(without), got)


def from_uint8_like(x: torch.Tensor) -> torch.Tensor:
    from difforge.io.space import to_uint8

    return to_uint8(x)
