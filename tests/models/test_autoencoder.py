"""The KL autoencoder of latent diffusion: shapes, the KL term against torch.distributions,
the posterior sample, the card and the files (round trip, one-line errors)."""

from __future__ import annotations

import json

import pytest
import torch

from difforge.models.autoencoder import (
    AutoencoderCard,
    KLAutoencoder,
    kl_to_standard_normal,
    load_autoencoder,
    posterior_sample,
    save_autoencoder,
)


def _ae(**kw):
    torch.manual_seed(0)
    return KLAutoencoder(**{"channels": 3, "latent_channels": 4, "base_channels": 8, **kw})


@pytest.mark.parametrize("mults, factor", [((1,), 1), ((1, 2), 2), ((1, 2, 2), 4)])
def test_the_latent_is_the_image_divided_by_the_factor(mults, factor):
    ae = _ae(channel_mults=mults)
    assert ae.factor == factor
    mean, logvar = ae.encode(torch.randn(2, 3, 16, 16))
    assert mean.shape == logvar.shape == (2, 4, 16 // factor, 16 // factor)
    assert ae.decode(mean).shape == (2, 3, 16, 16)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(kl_to_standard_normal(mean, logvar), expected)
    assert torch.all(kl_to_standard_normal(torch.zeros(2, 4), torch.zeros(2, 4)) == 0)


def test_posterior_sample_is_mean_plus_std_times_the_generators_noise():
    mean, logvar = torch.full((2, 1, 2, 2), 3.0), torch.full((2, 1, 2, 2), 2 * torch.log(torch.tensor(0.5)))
    z = posterior_sample(mean, logvar, torch.Generator().manual_seed(5))
    n = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, 3.0 + 0.5 * n)


def test_encode_refuses_the_wrong_channels_or_size():
    ae = _ae(channel_mults=(1, 2))
    with pytest.raises(ValueError, match="3-channel"):
        ae.encode(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="divisible by 2"):
        ae.encode(torch.randn(1, 3, 7, 7))


def test_save_and_load_round_trip(tmp_path):
    ae = _ae()
    card = AutoencoderCard(dict(channels=3, latent_channels=4, base_channels=8, channel_mults=(1, 2),
                                num_res_blocks=1), scale=0.8, image_size=8, native_size=8, dataset="x", step=3,
                           metrics={"psnr": 20.0})
    save_autoencoder(ae, card, tmp_path / "ae")
    back, card2 = load_autoencoder(tmp_path / "ae")
    assert card2 == card and (card2.factor, card2.latent_size, card2.latent_channels) == (2, 4, 4)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(back.decode(back.encode(x)[0]), ae.decode(ae.encode(x)[0]), rtol=0, atol=0)
    assert not any(p.requires_grad for p in back.parameters())


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="not an autoencoder folder"):
        load_autoencoder(tmp_path)
    card = AutoencoderCard(dict(channels=3, latent_channels=4, base_channels=8), 1.0, 8, 8)
    save_autoencoder(_ae(), card, tmp_path / "ae")
    w = tmp_path / "ae" / "autoencoder.safetensors"
    w.write_bytes(w.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="cannot load autoencoder weights") as e:
        load_autoencoder(tmp_path / "ae")
    assert "\n" not in str(e.value)
    j = tmp_path / "ae" / "autoencoder.json"
    d = json.loads(j.read_text())
    j.write_text(json.dumps({**d, "scale": -1}))
    with pytest.raises(ValueError, match="positive finite"):
        load_autoencoder(tmp_path / "ae")
    j.write_text(json.dumps({**d, "version": 9}))
    with pytest.raises(ValueError, match="newer"):
        load_autoencoder(tmp_path / "ae")


def test_a_flat_image_encodes_to_one_latent_everywhere():
    """Replicate padding: no border code for a flat background (zero padding gave one)."""
    mean, _ = _ae(channel_mults=(1, 2, 2)).encode(-torch.ones(1, 3, 16, 16))
    torch.testing.assert_close(mean, mean[:, :, :1, :1].expand_as(mean), rtol=0, atol=1e-5)
