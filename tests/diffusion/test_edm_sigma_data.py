"""EDM's sigma_data: the preconditioning of Karras et al. (2022, Table 1) at any data
standard deviation, scale invariance (data scaled by k with sigma_data scaled by k trains
exactly as the unscaled data at sigma / k), the card field, and its errors."""

from __future__ import annotations

import math

import pytest
import torch

from difforge.diffusion.frameworks import EDMProcess, FrameworkSpec, make_process


def test_precondition_is_table_1_at_any_sigma_data():
    sigma = torch.tensor([0.01, 0.3, 1.0, 7.0, 80.0], dtype=torch.float64)
    for sd in (0.5, 1.0, 2.5):
        pre = make_process(FrameworkSpec("edm", sigma_data=sd)).precondition(sigma, "edm")
        torch.testing.assert_close(pre.c_skip, sd**2 / (sigma**2 + sd**2))
        torch.testing.assert_close(pre.c_out, sigma * sd / (sigma**2 + sd**2).sqrt())
        torch.testing.assert_close(pre.c_in, 1 / (sigma**2 + sd**2).sqrt())
        torch.testing.assert_close(pre.c_noise * 4 / 1000, sigma.log())


def test_scaled_data_with_scaled_sigma_data_is_the_same_problem():
    k = 2.0  # latents with std 1 against images with std 0.5
    base, scaled = EDMProcess(), EDMProcess(sigma_data=0.5 * k)
    sigma = torch.tensor([0.02, 0.5, 3.0, 40.0], dtype=torch.float64)
    a, b = base.precondition(sigma, "edm"), scaled.precondition(k * sigma, "edm")
    torch.testing.assert_close(b.c_skip, a.c_skip)  # D = c_skip x + c_out F: same mix of input and output
    torch.testing.assert_close(b.c_out, k * a.c_out)  # the output comes back on the data's scale
    torch.testing.assert_close(b.c_in, a.c_in / k)  # the network sees the same input
    # the training levels: the same draws, times k (P_mean moves by ln k)
    s1 = base.sample_sigmas(1000, torch.Generator().manual_seed(0))
    s2 = scaled.sample_sigmas(1000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(s2, k * s1)
    assert s1.log().mean().item() == pytest.approx(-1.2, abs=0.1)
    assert s2.log().mean().item() == pytest.approx(-1.2 + math.log(k), abs=0.1)


def test_the_default_is_table_1s_half_and_old_cards_read_as_it():
    assert make_process(FrameworkSpec("edm")).sigma_data == 0.5
    spec = FrameworkSpec.from_dict({"framework": "edm", "timesteps": 1000})  # a card written before the field
    assert spec.sigma_data is None and make_process(spec).sigma_data == 0.5
    assert FrameworkSpec.from_dict(FrameworkSpec("edm", sigma_data=1.0).to_dict()).sigma_data == 1.0


def test_sigma_data_errors():
    with pytest.raises(ValueError, match="not a setting of 'ddpm'"):
        make_process(FrameworkSpec("ddpm", sigma_data=1.0))
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        make_process(FrameworkSpec("edm", sigma_data=0.0))
