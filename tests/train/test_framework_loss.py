"""The one training loss (`Denoiser.loss`) of every framework: against its definition on
the same draws (the DDPM eps case against Ho et al.'s q_sample form too); min-SNR
weighting; noise per sample of the global batch; and every framework trains a few steps
and samples through the CLI."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difforge.cli import main
from difforge.diffusion import q_sample
from difforge.diffusion.frameworks import ALLOWED_PREDICTIONS, FRAMEWORKS, FrameworkSpec, make_process
from difforge.models.card import ModelCard
from difforge.models.denoiser import Denoiser


class Affine(nn.Module):
    """A fixed nonlinear 'network' of its inputs, so the loss depends on everything it is given."""

    def forward(self, x, c_noise, cond=None):
        return torch.tanh(0.3 * x + 1e-3 * c_noise.view(-1, 1, 1, 1))


X0 = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1


def loss_of(framework: str, prediction: str | None = None, seed: int = 3, min_snr_gamma=None, **kw) -> torch.Tensor:
    process = make_process(FrameworkSpec(framework, min_snr_gamma=min_snr_gamma))
    den = Denoiser(Affine(), process, prediction or ALLOWED_PREDICTIONS[framework][0])
    return den.loss(kw.pop("x0", X0), None, generator=torch.Generator().manual_seed(seed), **kw)


def test_ddpm_eps_is_ho_et_al_algorithm_1():
    """Uniform integer t (0 included), then the noise, from the generator; the network sees
    q_sample's x_t and t; the loss is the eps MSE (Ho et al. 2020, Algorithm 1)."""
    process = make_process(FrameworkSpec("ddpm"))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (6,), generator=g)
    eps = torch.randn(X0.shape, generator=g)
    pred = Affine()(q_sample(process.discrete, X0, t, eps), t.float())
    expected = torch.mean((pred - eps) ** 2)
    assert loss_of("ddpm").item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("framework, prediction", [(f, p) for f in FRAMEWORKS for p in ALLOWED_PREDICTIONS[f]])
def test_loss_is_the_mse_to_the_target_on_the_same_draws(framework, prediction):
    loss = loss_of(framework, prediction, seed=5)
    # the same draws, in the documented order: noise levels, then the noise
    noise = make_process(FrameworkSpec(framework))
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
    c_in = noise.precondition(sigma, prediction).c_in.view(-1, 1, 1, 1)
    out = Affine()((c_in * x).float(), noise.c_noise(sigma).float())
    expected = ((out.double() - target) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_min_snr_weighting():
    plain = loss_of("vp-sde", "x0", seed=1)
    huge = loss_of("vp-sde", "eps", seed=1, min_snr_gamma=1e30)
    eps = loss_of("vp-sde", "eps", seed=1)
    assert huge.item() == pytest.approx(eps.item(), rel=1e-6)  # min(SNR, inf) / SNR = 1
    small = loss_of("vp-sde", "x0", seed=1, min_snr_gamma=1e-3)
    assert small.item() < 1e-2 * plain.item()  # every weight min(SNR, 1e-3) <= 1e-3
    with pytest.raises(ValueError, match="min-SNR weighting applies to"):
        make_process(FrameworkSpec("edm", min_snr_gamma=5.0))


@pytest.mark.parametrize("framework", ["edm", "ncsn", "ddpm"])
def test_noise_is_drawn_per_sample_of_the_global_batch(framework):
    # two halves with rows= give the same per-sample losses as the whole batch
    pred = "v" if framework == "ddpm" else None
    whole = loss_of(framework, pred, seed=7)
    halves = [loss_of(framework, pred, seed=7, x0=X0[r], rows=r, global_batch=6) for r in (slice(0, 3), slice(3, 6))]
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
    card = ModelCard.load(run / "model.json")
    assert (card.framework == framework
            and card.diffusion.min_snr_gamma == (5.0 if "--min-snr-gamma" in extra else None))
    assert card.prediction == (extra[1] if extra[:1] == ["--prediction"] else ALLOWED_PREDICTIONS[framework][0])
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
