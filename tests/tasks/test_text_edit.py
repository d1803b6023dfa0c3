"""Editing with a text model: inpaint and restore (and the other tasks, through the same
set-up) with prompts, a negative prompt and guidance; the CLI; the one-line errors.

A closed-form text "model" (Gaussian data whose mean depends on the prompt) pins what the
prompts, the negative prompt and the guidance scale do; an untrained tiny text UNet with
random weights pins the known pixels, per-image prompts and seeds, and the CLI paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cli_runner import run
from difforge import tasks
from difforge.diffusion import make_schedule
from difforge.models.conditioning import TextPrompts
from difforge.models.text import BYTE_OFFSET
from difforge.sampling import per_sample_generators, randn_like
from difforge.tasks.common import grid_from
from difforge.tasks.restore import strength_sigma
from model_cards import pipeline, random_tiny_net, tiny_card

TEXT = TextPrompts("scratch", max_tokens=16, width=32, layers=1, heads=2)
MEANS = {"u": 0.2, "d": -0.2}  # a prompt's first letter -> the mean of its images; else (the empty prompt) 0
SD = 0.3


class PromptGaussianEps(nn.Module):
    """The exact eps-prediction for data x0 ~ N(mu(prompt), SD^2) per pixel: with
    x = x0 + sigma n, D = mu + a (x - mu), a = SD^2 / (SD^2 + sigma^2)."""

    num_classes = None

    def __init__(self):
        super().__init__()
        self.schedule = make_schedule("linear", 1000)

    def forward(self, x_vp, t, cond):
        first = cond.ids[:, 1] - BYTE_OFFSET  # the byte after BOS (EOS for the empty prompt)
        mu = sum(m * (first == ord(c)).double() for c, m in MEANS.items()).view(-1, 1, 1, 1)
        sigma = self.schedule.t_to_sigma(t.double()).view(-1, 1, 1, 1)
        x = x_vp.double() * (1 + sigma**2).sqrt()
        return ((x - mu) * sigma / (sigma**2 + SD**2)).to(x_vp.dtype)


@pytest.fixture(scope="module")
def gaussian_text_pipe():
    return pipeline(PromptGaussianEps(), tiny_card(channels=3, conditioning=TEXT))


def _text_net(seed: int = 0):
    return random_tiny_net(TEXT, seed=seed)


@pytest.fixture(scope="module")
def text_pipe():
    net, card = _text_net()
    return pipeline(net, card)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)


def _ddim_closed_form(x: torch.Tensor, mu: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DDIM (eta 0) with the exact Gaussian denoiser: each step x <- D + s'/s (x - D), so
    x - mu shrinks by (SD^2 + s s') / (SD^2 + s^2) per step."""
    x, mu = x.double(), mu.view(-1, 1, 1, 1)
    for s, t in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        x = mu + (x - mu) * (SD**2 + s * t) / (SD**2 + s * s)
    return x


@pytest.mark.parametrize("prompts, negative, cfg, means", [
    (["up", "down"], None, 2.0, [0.4, -0.4]),  # guided from the empty prompt (mean 0): 0 + 2 (mu - 0)
    (["up"], "down", 2.0, [0.6, 0.6]),  # one prompt for both; from the negative prompt: -0.2 + 2 (0.2 + 0.2)
    (None, None, None, [0.0, 0.0]),  # no prompt: the empty prompt, unguided
    (["down", "up"], None, 1.0, [-0.2, 0.2]),  # cfg 1: the plain conditional model
])
def test_restore_with_prompts_is_sdedit_towards_the_guided_mean(gaussian_text_pipe, prompts, negative, cfg, means):
    """CFG on Gaussians of one variance is the Gaussian of the guided mean
    mu_null + cfg (mu - mu_null): SDEdit with ddim lands where the closed form says."""
    pipe, strength, steps, seed = gaussian_text_pipe, 0.1, 20, 3
    image = torch.full((2, 3, 8, 8), 0.1)
    out = tasks.restore(pipe, image, strength, prompts=prompts, negative_prompt=negative, cfg=cfg, sampler="ddim",
                        steps=steps, seed=seed)
    sigma = strength_sigma(pipe, strength)
    start = image.double() + sigma * randn_like(image, per_sample_generators(range(seed, seed + 2))).double()
    want = _ddim_closed_form(start, torch.tensor(means, dtype=torch.float64), grid_from(pipe, "ddim", steps, sigma))
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=0)


def test_inpaint_with_prompts_keeps_the_known_pixels_and_each_image_is_its_prompt_alone(text_pipe):
    x, m = _images(2), tasks.make_mask("center", 8)
    kw = dict(method="repaint", steps=4, jump_length=2, resample=2)
    both = tasks.inpaint(text_pipe, x, m, prompts=["a red square", "a blue bag"], seed=5, **kw)
    assert both.dtype == torch.uint8
    keep = (m == 0).expand_as(x)
    assert torch.equal(both[keep], x[keep])  # the known pixels exactly
    alone = [tasks.inpaint(text_pipe, x[i : i + 1], m, prompts=[p], seed=5 + i, **kw)
             for i, p in enumerate(["a red square", "a blue bag"])]
    assert torch.equal(both, torch.cat(alone))  # image i: its own prompt and seed + i, whatever the batch
    other = tasks.inpaint(text_pipe, x[:1], m, prompts=["a blue bag"], seed=5, **kw)
    assert not torch.equal(other, alone[0])  # the prompt reaches the filled region
    negative = tasks.inpaint(text_pipe, x[:1], m, prompts=["a red square"], negative_prompt="a blue bag", seed=5,
                             **kw)
    assert torch.equal(negative[keep[:1]], x[:1][keep[:1]]) and not torch.equal(negative, alone[0])


def test_a_text_model_without_a_prompt_edits_unconditionally(text_pipe):
    """No prompt is the empty prompt, unguided: the same as prompts=[""] at cfg 1."""
    x, m = _images(1, seed=1), tasks.make_mask("left", 8)
    kw = dict(method="blend", steps=3, seed=2)
    assert torch.equal(tasks.inpaint(text_pipe, x, m, **kw), tasks.inpaint(text_pipe, x, m, prompts=[""], cfg=1, **kw))
    r = dict(sampler="ddim", steps=4, seed=2)
    unconditional = tasks.restore(text_pipe, x, 0.5, prompts=[""], cfg=1, **r)
    assert torch.equal(tasks.restore(text_pipe, x, 0.5, **r), unconditional)


def test_prompt_errors_are_one_line(text_pipe, tiny_cond_pipe, tiny_pipe):
    x3, m = _images(2), tasks.make_mask("center", 8)
    x1 = torch.zeros(2, 1, 8, 8)
    cases = [
        (lambda: tasks.inpaint(tiny_cond_pipe, x1, m, prompts=["a"], steps=2), "not a text-to-image model"),
        (lambda: tasks.restore(tiny_pipe, x1, 0.5, prompts=["a"], steps=2), "not a text-to-image model"),
        (lambda: tasks.restore(tiny_cond_pipe, x1, 0.5, negative_prompt="a", steps=2), "needs a text-to-image model"),
        (lambda: tasks.inpaint(text_pipe, x3, m, labels=torch.tensor([0]), steps=2), "prompts, not class labels"),
        (lambda: tasks.inpaint(text_pipe, x3, m, prompts=["a", "b", "c"], steps=2), "got 3 prompts for 2 images"),
        (lambda: tasks.restore(text_pipe, x3, 0.5, prompts=["x" * 40], steps=2), "token"),
        (lambda: tasks.restore(text_pipe, x3, 0.5, prompts="a red square", steps=2), "list of strings"),
        (lambda: text_pipe.parse_class("0"), "prompts, not class labels"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("text-model")
    net, card = _text_net()
    save_file(net.state_dict(), d / "model.safetensors")
    card.save(d / "config.json")
    return d


@pytest.fixture(scope="module")
def rgb_png(tmp_path_factory):
    d = tmp_path_factory.mktemp("png")
    Image.fromarray(_images(1)[0].permute(1, 2, 0).numpy()).save(d / "a.png")
    return d / "a.png"


def test_cli_inpaint_and_restore_with_prompts(text_model_dir, rgb_png, tmp_path, capsys):
    out = tmp_path / "in.png"
    assert run(["inpaint", str(text_model_dir), "--image", str(rgb_png), "--mask", "center", "--method", "blend",
                "--steps", "3", "--prompt", "a red square", "--negative-prompt", "a blue bag", "--cfg", "2",
                "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    src, res = np.asarray(Image.open(rgb_png)), np.asarray(Image.open(out))
    keep = tasks.make_mask("center", 8)[0, 0].numpy() == 0
    assert res.shape == (8, 8, 3) and np.array_equal(res[keep], src[keep])
    # the same as the Python call with the same prompt, guidance and seed
    pipe = pipeline(*_text_net())
    want = tasks.inpaint(pipe, torch.from_numpy(src.copy()).permute(2, 0, 1)[None], tasks.make_mask("center", 8),
                         method="blend", steps=3, prompts=["a red square"], negative_prompt="a blue bag", cfg=2)
    assert np.array_equal(res, want[0].permute(1, 2, 0).numpy())
    for argv in (["--prompt", "a red square"], []):
        out = tmp_path / f"re{len(argv)}.png"
        assert run(["restore", str(text_model_dir), "--image", str(rgb_png), "--strength", "0.4", "--steps", "4",
                    *argv, "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
        assert np.asarray(Image.open(out)).shape == (8, 8, 3)


def test_cli_prompt_errors_are_one_line(text_model_dir, rgb_png, tmp_path, capsys):
    from safetensors.torch import save_file

    class_dir = tmp_path / "class-model"
    class_dir.mkdir()
    card = tiny_card(channels=3, num_classes=3)
    save_file(card.build_network().state_dict(), class_dir / "model.safetensors")
    card.save(class_dir / "config.json")
    cases = [
        (["inpaint", str(class_dir), "--image", str(rgb_png), "--mask", "center", "--prompt", "a red square"],
         "not a text-to-image model"),
        (["restore", str(class_dir), "--image", str(rgb_png), "--strength", "0.5", "--negative-prompt", "a"],
         "needs a text-to-image model"),
        (["inpaint", str(text_model_dir), "--image", str(rgb_png), "--mask", "center", "--class", "0"],
         "prompts, not class labels"),
        (["restore", str(text_model_dir), "--image", str(rgb_png), "--strength", "0.5", "--prompt", "a",
          "--prompt", "b"], "got 2 prompts for 1 images"),
    ]
    for argv, message in cases:
        assert run([*argv, "--steps", "2", "--out", str(tmp_path / "x.png"), "--no-progress"]) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
