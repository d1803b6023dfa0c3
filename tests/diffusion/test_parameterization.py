"""Conversions between eps, x0, v and score (round trips, definitions), EDM's
preconditioning identities (Karras et al. 2022, Table 1 and Appendix B.6), min-SNR weights."""

from __future__ import annotations

import math

import pytest
import torch

from difforge.diffusion import parameterization as P

G = torch.Generator().manual_seed(0)
X0 = torch.randn(6, 2, 3, 3, generator=G, dtype=torch.float64)
N = torch.randn(6, 2, 3, 3, generator=G, dtype=torch.float64)
SIGMA = torch.tensor([0.002, 0.05, 0.5, 1.0, 7.0, 80.0], dtype=torch.float64)
X = X0 + SIGMA.view(-1, 1, 1, 1) * N


def test_eps_x0_v_score_from_their_definitions():
    s = SIGMA.view(-1, 1, 1, 1)
    alpha, sd = 1 / torch.sqrt(1 + s**2), s / torch.sqrt(1 + s**2)  # VP frame: x_vp = alpha x0 + sd n
    assert torch.allclose(P.x0_to_eps(X, SIGMA, X0), N, atol=1e-9)
    assert torch.allclose(P.eps_to_x0(X, SIGMA, N), X0, atol=1e-12)
    v = alpha * N - sd * X0  # Salimans & Ho (2022), Section 4
    assert torch.allclose(P.x0_to_v(X, SIGMA, X0), v, atol=1e-9)
    assert torch.allclose(P.v_to_x0(X, SIGMA, v), X0, atol=1e-12)
    # the score of N(x0, sigma^2 I) at x, and Tweedie with the posterior mean x0 itself
    assert torch.allclose(P.eps_to_score(SIGMA, N), -(X - X0) / s**2, rtol=1e-9)
    assert torch.allclose(P.x0_to_score(X, SIGMA, X0), -(X - X0) / s**2, rtol=1e-9)


@pytest.mark.parametrize("pair", [("eps", "x0"), ("v", "x0"), ("score", "x0"), ("score", "eps")])
def test_round_trips(pair):
    a = torch.randn(X.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    conv = {
        ("eps", "x0"): (lambda e: P.eps_to_x0(X, SIGMA, e), lambda x0: P.x0_to_eps(X, SIGMA, x0)),
        ("v", "x0"): (lambda v: P.v_to_x0(X, SIGMA, v), lambda x0: P.x0_to_v(X, SIGMA, x0)),
        ("score", "x0"): (lambda sc: P.score_to_x0(X, SIGMA, sc), lambda x0: P.x0_to_score(X, SIGMA, x0)),
        ("score", "eps"): (lambda sc: P.score_to_eps(SIGMA, sc), lambda e: P.eps_to_score(SIGMA, e)),
    }[pair]
    there, back = conv
    assert torch.allclose(back(there(a)), a, rtol=1e-9, atol=1e-9)
    assert torch.allclose(there(back(a)), a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", P.PREDICTIONS)
def test_target_makes_D_exact(prediction):
    # F = target  =>  D = c_skip x + c_out F = x0, for every parameterization
    c_skip, c_out = P.skip_out(prediction, SIGMA)
    target = P.training_target(prediction, X0, X, SIGMA)
    assert torch.allclose(c_skip.view(-1, 1, 1, 1) * X + c_out.view(-1, 1, 1, 1) * target, X0, atol=1e-10)
    if prediction == "eps":
        assert torch.allclose(target, N, atol=1e-9)
    if prediction == "v":
        assert torch.allclose(target, P.x0_to_v(X, SIGMA, X0), atol=1e-9)


def test_edm_preconditioning_identities():
    sd = P.SIGMA_DATA
    c_skip, c_out, c_in, c_noise = P.edm_precond(SIGMA)
    assert torch.allclose(c_in**2 * (SIGMA**2 + sd**2), torch.ones(6, dtype=torch.float64))  # unit input variance
    assert torch.allclose(c_noise, SIGMA.log() / 4)
    # c_skip is the regression coefficient Cov(x0, x) / Var(x) for data of variance sd^2 (B.6) ...
    assert torch.allclose(c_skip, sd**2 / (sd**2 + SIGMA**2))
    # ... and c_out^2 the residual variance: the target (x0 - c_skip x) / c_out has unit variance
    assert torch.allclose(c_out**2, (1 - c_skip) ** 2 * sd**2 + c_skip**2 * SIGMA**2)
    assert torch.allclose(P.edm_weight(SIGMA) * c_out**2, torch.ones(6, dtype=torch.float64))
    # v-prediction is EDM's preconditioning with sigma_data = 1, F negated
    v_skip, v_out = P.skip_out("v", SIGMA)
    e_skip, e_out, _, _ = P.edm_precond(SIGMA, sigma_data=1.0)
    assert torch.allclose(v_skip, e_skip) and torch.allclose(v_out, -e_out)


def test_edm_target_has_unit_variance_on_data_of_std_sigma_data():
    g = torch.Generator().manual_seed(5)
    n = 200_000
    for sigma in (0.01, 0.5, 20.0):
        x0 = P.SIGMA_DATA * torch.randn(n, generator=g, dtype=torch.float64)
        x = x0 + sigma * torch.randn(n, generator=g, dtype=torch.float64)
        t = P.training_target("edm", x0, x, torch.tensor(sigma, dtype=torch.float64))
        assert t.std().item() == pytest.approx(1.0, abs=0.01)
        c_in = P.edm_precond(torch.tensor(sigma))[2]
        assert (c_in * x).std().item() == pytest.approx(1.0, abs=0.01)


def test_edm_sigmas_are_log_normal():
    s = P.edm_sigmas(100_000, torch.Generator().manual_seed(0))
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.02)
    assert s.log().std().item() == pytest.approx(1.2, abs=0.02)


def test_min_snr_weights_match_hang_et_al():
    snr = 1 / SIGMA**2
    g = 5.0
    m = torch.clamp(snr, max=g)
    assert torch.allclose(P.min_snr_weight("eps", SIGMA, g), m / snr)
    assert torch.allclose(P.min_snr_weight("x0", SIGMA, g), m)
    assert torch.allclose(P.min_snr_weight("v", SIGMA, g), m / (snr + 1))
    # gamma -> infinity: eps weights all 1 (the plain loss)
    assert torch.allclose(P.min_snr_weight("eps", SIGMA, 1e30), torch.ones(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="gamma must be > 0"):
        P.min_snr_weight("eps", SIGMA, 0.0)
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        P.skip_out("score", SIGMA)


def test_scalar_sigma_broadcasts():
    x = torch.ones(2, 3)
    assert torch.allclose(P.eps_to_x0(x, 2.0, x), -x)
    assert math.isclose(float(P.snr(torch.tensor(2.0))), 0.25)
