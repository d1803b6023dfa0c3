"""Framework losses: DDPM eps is exactly `ddpm_loss`; the other targets against their
definitions on the same draws; min-SNR weighting; noise per sample of the global batch;
and every framework trains a few steps and samples through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from difforge.cli import main
from difforge.diffusion import make_schedule
from difforge.diffusion.frameworks import ALLOWED_PREDICTIONS, FRAMEWORKS, make_noise
from difforge.train.objective import ddpm_loss, framework_loss


class Affine(nn.Module):
    """A fixed nonlinear 'network' of its inputs, so the loss depends on everything it is given."""

    def forward(self, x, c_noise, cond=None):
        return torch.tanh(0.3 * x + 1e-3 * c_noise.view(-1, 1, 1, 1))


X0 = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_ddpm_eps_is_exactly_ddpm_loss():
    sched = make_schedule("linear", 1000)
    a = ddpm_loss(Affine(), sched, X0, None, torch.Generator().manual_seed(3))
    b = framework_loss(Affine(), make_noise({"framework": "ddpm"}), X0, None, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("framework, prediction", [(f, p) for f in FRAMEWORKS for p in ALLOWED_PREDICTIONS[f]])
def test_loss_is_the_mse_to_the_target_on_the_same_draws(framework, prediction):
    noise = make_noise({"framework": framework})
    g = torch.Generator().manual_seed(5)
    loss = framework_loss(Affine(), noise, X0, None, g, prediction=prediction, min_snr_gamma=None)
    # the same draws, in the documented order: noise levels, then the noise
    g = torch.Generator().manual_seed(5)
    sigma = noise.sample_sigmas(6, g)
    n = torch.randn(X0.shape, generator=g)
    s = sigma.view(-1, 1, 1, 1)
    x = X0.double() + s * n.double()
    a = 1 / torch.sqrt(1 + s**2)
    target = {"eps": n.double(), "x0": X0.double(), "v": a * n.double() - s * a * X0.double()}.get(prediction)
    if prediction == "edm":
        sd2 = 0.25
        target = (X0.double() - sd2 / (s**2 + sd2) * x) / (s * 0.5 / torch.sqrt(s**2 + sd2))
    c_in = noise.c_in(sigma).view(-1, 1, 1, 1)
    out = Affine()((c_in * x).float(), noise.c_noise(sigma).float())
    expected = ((out.double() - target) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_min_snr_weighting():
    noise = make_noise({"framework": "vp-sde"})
    plain = framework_loss(Affine(), noise, X0, None, torch.Generator().manual_seed(1), prediction="x0")
    huge = framework_loss(Affine(), noise, X0, None, torch.Generator().manual_seed(1), prediction="eps",
                          min_snr_gamma=1e30)
    eps = framework_loss(Affine(), noise, X0, None, torch.Generator().manual_seed(1), prediction="eps")
    assert huge.item() == pytest.approx(eps.item(), rel=1e-6)  # min(SNR, inf) / SNR = 1
    small = framework_loss(Affine(), noise, X0, None, torch.Generator().manual_seed(1), prediction="x0",
                           min_snr_gamma=1e-3)
    assert small.item() < 1e-2 * plain.item()  # every weight min(SNR, 1e-3) <= 1e-3


@pytest.mark.parametrize("framework", ["edm", "ncsn", "ddpm"])
def test_noise_is_drawn_per_sample_of_the_global_batch(framework):
    # two halves with rows= give the same per-sample losses as the whole batch
    noise = make_noise({"framework": framework})
    pred = "v" if framework == "ddpm" else ALLOWED_PREDICTIONS[framework][0]
    whole = framework_loss(Affine(), noise, X0, None, torch.Generator().manual_seed(7), prediction=pred)
    halves = [framework_loss(Affine(), noise, X0[r], None, torch.Generator().manual_seed(7), prediction=pred,
                             rows=r, global_batch=6) for r in (slice(0, 3), slice(3, 6))]
    assert whole.item() == pytest.approx(sum(h.item() for h in halves) / 2, rel=1e-6)


@pytest.mark.parametrize("framework, extra, sampler", [
    ("ncsn", [], "langevin"), ("vp-sde", ["--prediction", "v", "--min-snr-gamma", "5"], "pc"),
    ("subvp-sde", ["--prediction", "x0"], "reverse-sde"), ("ve-sde", [], "pc"), ("edm", [], "heun"),
    ("ddpm", ["--prediction", "v"], "ddim"),
])
def test_each_framework_trains_and_samples_through_the_cli(tmp_path, framework, extra, sampler):
    torch.set_num_threads(1)
    run = tmp_path / framework
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "3", "--batch-size", "16",
              "--out", str(run), "--no-progress", "--sample-every", "0", "--unconditional",
              "--framework", framework, *extra])
    assert e.value.code == 0
    info = json.loads((run / "model.json").read_text())
    assert info["diffusion"]["framework"] == framework
    assert info["prediction"] == (extra[1] if extra[:1] == ["--prediction"] else ALLOWED_PREDICTIONS[framework][0])
    out = tmp_path / f"{framework}.png"
    with pytest.raises(SystemExit) as e:
        main(["sample", str(run), "--sampler", sampler, "--steps", "4", "--n", "3", "--out", str(out)])
    assert e.value.code == 0 and out.stat().st_size > 0
    from difforge.pipeline import load_pipeline

    images, _ = load_pipeline(run).generate(n=2, sampler=sampler, steps=4)
    assert images.dtype == torch.uint8 and images.shape[0] == 2


@pytest.mark.parametrize("args, message", [
    (["--framework", "ncsn", "--prediction", "v"], "framework 'ncsn' trains prediction ['eps'], not 'v'"),
    (["--framework", "edm", "--min-snr-gamma", "5"], "min-SNR weighting applies to"),
    (["--framework", "vp-sde", "--schedule", "cosine"], "'vp-sde' is the continuous linear schedule"),
    (["--min-snr-gamma", "-1"], "min_snr_gamma must be > 0"),
])
def test_bad_framework_settings_are_one_line_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "1", "--out", str(tmp_path / "r"),
              *args])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()
