"""Latent diffusion end to end on the digits set (8x8): train-autoencoder, the latent scale
(closed form, and the same for any number of processes), the cached latents equal to the
ones encoded per batch, training and sampling a latent model, export, and the errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cli_runner import run
from difforge.config import ConfigError, DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig, validate
from difforge.data import load_dataset
from difforge.models.autoencoder import load_autoencoder
from difforge.pipeline import load_pipeline
from difforge.train import distributed
from difforge.train.autoencoder import AutoencoderConfig, latent_scale, train_autoencoder
from difforge.train.latents import LatentSource
from difforge.train.loop import train

DIGITS = DataConfig(dataset="digits")


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "ae"
    cfg = AutoencoderConfig(data=DIGITS, factor=2, latent_channels=2, base_channels=8, steps=30, batch_size=32,
                            fd=False)
    train_autoencoder(cfg, out, device="cpu", progress=False, log=lambda *a: None)
    return out


def test_train_autoencoder_writes_a_measured_card(ae_dir):
    ae, card = load_autoencoder(ae_dir)
    assert (card.image_size, card.native_size, card.latent_size, card.latent_channels) == (8, 8, 4, 2)
    assert card.step == 30 and card.dataset == "digits"
    assert 5 < card.metrics["psnr"] < 60
    images = load_dataset(DIGITS).train.images
    assert card.scale == pytest.approx(latent_scale(ae, images[:10_000], 8, distributed.World()), rel=1e-9)


class _Fixed(torch.nn.Module):
    """An 'autoencoder' whose posterior is known: mean = the image's first pixel, logvar given."""

    def __init__(self, logvar):
        super().__init__()
        self.logvar = logvar

    def encode(self, x):
        mean = x[:, :1, :1, :1].expand(-1, 1, 2, 2)
        return mean, torch.full_like(mean, self.logvar)


def test_latent_scale_is_one_over_the_std_in_closed_form():
    images = torch.tensor([0, 255] * 50, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 4, 4).contiguous()
    # means -1 and +1 (model space), no posterior noise (exp(-30 / 2) ~ 3e-7): std 1
    assert latent_scale(_Fixed(-30.0), images, 4, distributed.World()) == pytest.approx(1.0, rel=1e-5)
    # with posterior std 2 added: variance 1 + 4, up to sampling error of 400 values
    assert latent_scale(_Fixed(math.log(4.0)), images, 4, distributed.World()) == pytest.approx(5 ** -0.5, rel=0.1)


def test_latent_scale_is_the_same_for_any_number_of_processes(ae_dir, monkeypatch):
    ae, _ = load_autoencoder(ae_dir)
    images = load_dataset(DIGITS).train.images[:700]
    one = latent_scale(ae, images, 8, distributed.World(), batch_size=100)
    parts = []  # each rank's sums, added as the all-reduce would
    monkeypatch.setattr(distributed, "sum_all", lambda v, world: parts.append(v.clone()) or v)
    for rank in range(3):
        latent_scale(ae, images, 8, distributed.World(rank, 3), batch_size=100)
    total = sum(parts)
    n, s1, s2 = total.tolist()
    assert one == pytest.approx(1 / math.sqrt(s2 / n - (s1 / n) ** 2), rel=1e-12)


def test_cached_latents_equal_the_latents_encoded_per_batch(ae_dir, tmp_path):
    ae, card = load_autoencoder(ae_dir)
    images = load_dataset(DIGITS).train.images[:64]
    cached = LatentSource(ae, card, images, torch.device("cpu"), cache=True, cache_dir=tmp_path)
    fly = LatentSource(ae, card, images, torch.device("cpu"), cache=False)
    assert cached.cached and not fly.cached and len(list(tmp_path.glob("latents-train-*.safetensors"))) == 1
    idx = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:32]
    for rows in (slice(None), slice(16, 32)):
        a = cached.x0(idx, rows, torch.Generator().manual_seed(3))
        b = fly.x0(idx, rows, torch.Generator().manual_seed(3))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the second half of a batch split over two processes is the second half of the whole
    whole = cached.x0(idx, slice(None), torch.Generator().manual_seed(3))
    torch.testing.assert_close(cached.x0(idx, slice(16, 32), torch.Generator().manual_seed(3)), whole[16:])
    again = LatentSource(ae, card, images, torch.device("cpu"), cache=True, cache_dir=tmp_path)  # read back
    torch.testing.assert_close(again.mean, cached.mean, rtol=0, atol=0)


def _cfg(ae_dir, out, diffusion=DiffusionConfig(), **model):
    return RunConfig(data=DataConfig(dataset="digits"), out=str(out), diffusion=diffusion,
                     model=ModelConfig(preset="tiny", latent=str(ae_dir), **model),
                     train=TrainConfig(max_steps=3, batch_size=16, checkpoint_every=0, sample_every=0, log_every=1,
                                       ema_warmup=1, device="cpu", final_grid=False))


def test_a_latent_model_trains_samples_and_exports_with_its_autoencoder(ae_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(ae_dir, out), progress=False)
    card = json.loads((out / "model.json").read_text())
    assert card["version"] == 3 and card["channels"] == 2 and card["image_size"] == 4 and card["native_size"] == 8
    assert (out / "autoencoder.safetensors").is_file()
    pipe = load_pipeline(out)
    images, labels = pipe.generate(labels=torch.tensor([0, 3]), steps=3, seed=1)
    assert images.shape == (2, 1, 8, 8) and images.dtype == torch.uint8
    z = torch.randn(2, 2, 4, 4)  # decode = the autoencoder's decoder of z / scale, clamped
    ae, ae_card = load_autoencoder(ae_dir)
    torch.testing.assert_close(pipe.decode(z), ae.decode(z / ae_card.scale).clamp(-1, 1))
    assert run(["export", str(out), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "autoencoder.safetensors").is_file()
    again, _ = load_pipeline(tmp_path / "m").generate(labels=torch.tensor([0, 3]), steps=3, seed=1)
    assert torch.equal(again, images)
    with pytest.raises(ValueError, match="dynamic thresholding"):
        pipe.generate(labels=torch.tensor([0]), steps=2, threshold=0.995)
    (tmp_path / "m" / "autoencoder.safetensors").unlink()
    with pytest.raises(ValueError, match="without its autoencoder"):
        load_pipeline(tmp_path / "m")


def test_an_edm_latent_model_takes_the_latents_unit_std_as_sigma_data(ae_dir, tmp_path):
    train(_cfg(ae_dir, tmp_path / "edm", DiffusionConfig(framework="edm")), progress=False)
    card = json.loads((tmp_path / "edm" / "model.json").read_text())
    assert card["diffusion"]["sigma_data"] == 1.0  # latents are scaled to std 1; pixels in [-1, 1] keep 0.5
    assert load_pipeline(tmp_path / "edm").process.sigma_data == 1.0
    train(_cfg(ae_dir, tmp_path / "set", DiffusionConfig(framework="edm", sigma_data=0.8)), progress=False)
    assert json.loads((tmp_path / "set" / "model.json").read_text())["diffusion"]["sigma_data"] == 0.8
    with pytest.raises(ConfigError, match="not a setting of 'ddpm'"):
        validate(_cfg(ae_dir, tmp_path / "bad", DiffusionConfig(sigma_data=1.0)))


def test_latent_errors_are_one_line(ae_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="hflip"):
        validate(RunConfig(data=DataConfig(dataset="digits", hflip=True), model=ModelConfig(latent=str(ae_dir))))
    with pytest.raises(ConfigError, match="not an autoencoder folder"):
        train(_cfg(tmp_path, tmp_path / "r1"), progress=False)
    code = run(["train", "--dataset", "fashion-mnist", "--latent", str(ae_dir), "--out", str(tmp_path / "r2"),
                "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "trained on 1-channel 8x8 images; this data is 1-channel 28x28" in err
    assert not (tmp_path / "r2" / "model.json").exists()


def test_train_autoencoder_cli_refuses_a_used_folder(ae_dir, capsys):
    assert run(["train-autoencoder", "--dataset", "digits", "--out", str(ae_dir), "--steps", "1", "--no-fd"]) == 1
    assert "already holds a trained autoencoder; pass --overwrite" in capsys.readouterr().err


def test_tasks_refuse_a_latent_model_in_one_line(ae_dir, tmp_path):
    from difforge.tasks import restore

    out = tmp_path / "run"
    train(_cfg(ae_dir, out), progress=False)
    pipe = load_pipeline(out)
    with pytest.raises(ValueError, match="works on pixel-space models; this is a latent diffusion model"):
        restore(pipe, torch.zeros(1, 1, 8, 8), strength=0.5, steps=2)
