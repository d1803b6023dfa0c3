"""Likelihood in bits per dimension: the DDPM variational bound and the exact
probability-flow ODE likelihood.

Two estimators, both of -log p(x) for images in model space ([-1, 1]):

- `ddpm_vlb`: the variational bound of Ho et al. (2020), Eq. 5,
  L = L_T + sum_{t>1} L_{t-1} + L_0, for a discrete-time eps-prediction model (a
  `Denoiser` whose process is DDPM's: its network and `process.discrete`). L_0 is the discretized Gaussian
  decoder of Ho et al. (2020), Sec. 3.3, which gives 8-bit images a probability.
- `pf_ode_log_likelihood`: the exact log-density of the probability-flow ODE (Song et
  al. 2021, "Score-based generative modeling through SDEs", Sec. 4.3 and App. D.2) by the
  instantaneous change of variables (Chen et al. 2018), for ANY denoiser D(x, sigma, cond).
  The divergence is the exact trace of the Jacobian (small dimensions) or Hutchinson's
  estimator (Hutchinson 1989; FFJORD, Grathwohl et al. 2019) with a fixed probe.

The ODE frame. The state is the variance-exploding frame of Karras et al. (2022):
x(sigma) = x0 + sigma * n, where dx/dsigma = (x - D(x, sigma)) / sigma. We integrate in
u = log sigma, dx/du = x - D(x, sigma), from sigma_min (the data end) to sigma_max, so

    log p_{sigma_min}(x) = log N(x(sigma_max); 0, prior_std^2 I)
                           + int_{log sigma_min}^{log sigma_max} div_x (x - D(x, sigma)) du,
    div_x (x - D) = dims - tr(dD/dx).

A variance-preserving model (DDPM, VP-SDE) sees x_vp = x / sqrt(1 + sigma^2): its N(0, I)
prior becomes N(0, (1 + sigma_max^2) I) in this frame, which is what `prior_std` says (the
denoiser's own `prior_std(sigma_max)` when it has one). A change of frame is a scaling, so
taking the prior in the VE frame accounts for its Jacobian; at the data end the frames agree
up to sigma_min.

8-bit data. Pixels are levels k / 127.5 - 1, spacing BIN = 2 / 255. The VLB's decoder is
already discrete. The ODE gives a density; uniform dequantization (Theis et al. 2016;
Ho et al. 2020, App. "NLL") turns it into a bound on the discrete probability:
-log P(k) <= E_u[-log p(k / 127.5 - 1 + u)] - dims * log(BIN), u ~ U(-BIN/2, BIN/2)^dims.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

BIN = 2.0 / 255.0  # one 8-bit level in model space, x = k / 127.5 - 1
VARIANCES = ("large", "small")  # reverse variance beta_t or the posterior's beta~_t (Ho et al. 2020, Sec. 3.2)
DECODERS = ("discretized", "gaussian")
TRACES = ("rademacher", "gaussian", "exact")
SOLVERS = ("rk4", "rk45")


def bits_per_dim(nats: torch.Tensor, dims: int, bin_width: float | None = None) -> torch.Tensor:
    """Negative log-likelihood in nats per image -> bits per dimension; with `bin_width`,
    the density's NLL becomes the dequantized bound on the discrete one (adds -log2(bin))."""
    bpd = nats / (dims * math.log(2.0))
    return bpd if bin_width is None else bpd - math.log2(bin_width)


# ---------------------------------------------------------------- the DDPM bound


def _normal_kl(mu_q, var_q, mu_p, var_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per element (variances broadcast)."""
    return 0.5 * (torch.log(var_p / var_q) + var_q / var_p - 1.0) + (mu_q - mu_p) ** 2 / (2.0 * var_p)


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log P of 8-bit levels x (in [-1, 1], spacing BIN) under N(mean, std^2) binned:
    the mass of [x - BIN/2, x + BIN/2], the end bins open to -inf / +inf (Ho et al. 2020, Eq. 13).
    Per element, float64; the difference of CDFs is taken in the tail that keeps precision."""
    x, mean, std = (torch.as_tensor(v, dtype=torch.float64) for v in (x, mean, std))
    lo = (x - BIN / 2 - mean) / std
    hi = (x + BIN / 2 - mean) / std
    ndtr = torch.special.ndtr
    mass = torch.where(lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
    mid = torch.log(mass.clamp(min=1e-300))
    left = torch.special.log_ndtr(hi)  # x = -1: everything below its upper edge
    right = torch.special.log_ndtr(-lo)  # x = +1: everything above its lower edge
    return torch.where(x < -1 + BIN / 2, left, torch.where(x > 1 - BIN / 2, right, mid))


@dataclass
class VLB:
    """Terms of the DDPM bound per image, in nats (Ho et al. 2020, Eq. 5).

    `diffusion[v]` and `decoder[v]` for each reverse variance v in VARIANCES; `dims` is the
    number of dimensions the terms are summed over."""

    prior: torch.Tensor  # L_T
    diffusion: dict[str, torch.Tensor] = field(default_factory=dict)  # sum over t > 1 of L_{t-1}
    decoder: dict[str, torch.Tensor] = field(default_factory=dict)  # L_0
    dims: int = 0

    def nats(self, variance: str = "large") -> torch.Tensor:
        return self.prior + self.diffusion[variance] + self.decoder[variance]

    def bits_per_dim(self, variance: str = "large") -> torch.Tensor:
        return bits_per_dim(self.nats(variance), self.dims)


def _vlb_timesteps(T: int, k: int | None, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices 1..T-1 (paper's t = 2..T) and weights: all of them (weight 1), or one drawn
    uniformly in each of about k strata, weighted by the stratum size (unbiased). The strata
    grow geometrically in t, because the terms are largest and vary fastest at small t."""
    if k is None or k >= T - 1:
        return torch.arange(1, T), torch.ones(T - 1, dtype=torch.float64)
    if k < 1:
        raise ValueError(f"timesteps must be >= 1, got {k}")
    geo = torch.logspace(0, math.log10(T), k + 1, dtype=torch.float64).round().long()
    edges = torch.unique(torch.cat([geo, torch.tensor([1, T])]).clamp(1, T))
    lo, size = edges[:-1], edges[1:] - edges[:-1]
    pick = lo + (torch.rand(len(lo), generator=generator, dtype=torch.float64) * size).long()
    return pick, size.to(torch.float64)


@torch.no_grad()
def ddpm_vlb(
    denoiser,
    x0: torch.Tensor,
    cond: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    timesteps: int | None = None,
    decoder: str = "discretized",
) -> VLB:
    """The variational bound of Ho et al. (2020), Eq. 5, for each image in `x0` (model space).

    `denoiser` is a DDPM eps-prediction `Denoiser` (anything with `.net(x_vp, t, cond) -> eps`
    and a `.process.discrete: DiscreteSchedule`). Each L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))
    is evaluated in closed form at one x_t ~ q(x_t | x0) (noise from `generator`, on the CPU).
    `timesteps=None` sums every t exactly; an int k estimates the sum from k stratified
    timesteps (unbiased, k network calls instead of T - 1). L_0 uses the discretized decoder
    (`decoder="discretized"`, x0 must be 8-bit levels) or a Gaussian density
    (`"gaussian"`, continuous data). The reverse variance is beta_t ("large") or the
    posterior's beta~_t ("small"; for L_0, beta~ at t = 2, as Ho et al.'s code clips it):
    both bounds come from the same network calls. Arithmetic is float64; the network sees
    its own dtype.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {sorted(DECODERS)}")
    net, sched = denoiser.net, denoiser.process.discrete
    if sched is None or denoiser.prediction != "eps":
        raise ValueError("the variational bound needs a discrete-time (DDPM) eps-prediction model")
    first = next(net.parameters(), None)
    net_dtype = torch.float32 if first is None else first.dtype
    dev = x0.device
    x0 = x0.to(torch.float64)
    dims = x0[0].numel()
    T = sched.timesteps
    betas = sched.betas.to(dev)
    ab = sched.alphas_cumprod.to(dev)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64, device=dev), ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)  # beta~_t (0 at the first step)

    def per_image(v: torch.Tensor) -> torch.Tensor:
        return v.flatten(1).sum(1)

    def predict_x0(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(dev)
        x_t = ab[i].sqrt() * x0 + (1 - ab[i]).sqrt() * eps  # Ho et al. 2020, Eq. 4
        t = torch.full((x0.shape[0],), float(i), device=dev)
        eps_hat = net(x_t.to(net_dtype), t, cond).to(torch.float64)
        return x_t, (x_t - (1 - ab[i]).sqrt() * eps_hat) / ab[i].sqrt()

    # L_T: KL(q(x_T | x0) || N(0, I))
    prior = per_image(_normal_kl(ab[-1].sqrt() * x0, 1 - ab[-1],
                                 torch.zeros_like(x0), torch.ones((), dtype=torch.float64)))
    out = VLB(prior=prior, dims=dims)
    ts, weights = _vlb_timesteps(T, timesteps, generator)
    total = {v: torch.zeros(x0.shape[0], dtype=torch.float64, device=dev) for v in VARIANCES}
    for i, w in zip(ts.tolist(), weights.tolist()):
        x_t, x0_hat = predict_x0(i)
        c0 = ab_prev[i].sqrt() * betas[i] / (1 - ab[i])  # posterior mean, Eq. 7
        ct = (1 - betas[i]).sqrt() * (1 - ab_prev[i]) / (1 - ab[i])
        mu_q, mu_p = c0 * x0 + ct * x_t, c0 * x0_hat + ct * x_t
        for v, var_p in (("large", betas[i]), ("small", post_var[i])):
            total[v] += w * per_image(_normal_kl(mu_q, post_var[i], mu_p, var_p))
    out.diffusion = total
    # L_0 = -log p(x0 | x1); at t = 1 the model mean of Eq. 11 is exactly the x0 prediction
    _, mu = predict_x0(0)
    for v, var in (("large", betas[0]), ("small", post_var[1] if T > 1 else betas[0])):
        std = var.sqrt()
        if decoder == "discretized":
            logp = discretized_gaussian_log_prob(x0, mu, std)
        else:
            logp = -0.5 * ((x0 - mu) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
        out.decoder[v] = -per_image(logp)
    return out


# ---------------------------------------------------------------- the probability-flow ODE


@dataclass
class ODELikelihood:
    """Result of `pf_ode_log_likelihood`, per image, in nats."""

    log_prob: torch.Tensor  # log p_{sigma_min}(x) = prior_log_prob + delta
    prior_log_prob: torch.Tensor  # log N(x(sigma_max); 0, prior_std^2 I)
    delta: torch.Tensor  # integral of div (x - D) over log sigma
    x_end: torch.Tensor  # x(sigma_max)
    dims: int
    nfe: int  # denoiser evaluations (each with one backward per probe / dimension)

    def bits_per_dim(self, bin_width: float | None = None) -> torch.Tensor:
        return bits_per_dim(-self.log_prob, self.dims, bin_width)


def _drift_and_divergence(denoiser, cond, trace: str, probe: torch.Tensor | None) -> Callable:
    """(x, sigma) -> (dx/du, d delta/du) = (x - D, dims - tr dD/dx), u = log sigma."""

    def f(x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            d = denoiser(x, torch.tensor(sigma, dtype=torch.float64), cond).to(x.dtype)
            n, dims = x.shape[0], x[0].numel()
            if trace == "exact":  # row j of every image's Jacobian at once (images are independent)
                flat = d.reshape(n, dims)
                tr = torch.zeros(n, dtype=x.dtype, device=x.device)
                for j in range(dims):
                    (g,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=j < dims - 1)
                    tr = tr + g.reshape(n, dims)[:, j]
            else:  # Hutchinson: E[v^T J v] = tr J for E[v v^T] = I
                (g,) = torch.autograd.grad((d * probe).sum(), x)
                tr = (g * probe).reshape(n, dims).sum(1)
        return (x - d).detach(), (dims - tr).detach()

    return f


def pf_ode_log_likelihood(
    denoiser: Callable,
    x: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    prior_std: float | None = None,
    trace: str = "rademacher",
    generator: torch.Generator | None = None,
    solver: str = "rk4",
    steps: int = 32,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dtype: torch.dtype = torch.float64,
) -> ODELikelihood:
    """Exact log-likelihood of `x` (N, ...) under the probability-flow ODE of any denoiser
    D(x, sigma, cond) in the VE frame (module docstring; Song et al. 2021, Sec. 4.3).

    - sigma_min / sigma_max: the ODE's ends; default the denoiser's attributes of those names.
    - prior_std: std of the Gaussian prior at sigma_max in the VE frame; default
      `denoiser.prior_std(sigma_max)` when defined (sqrt(1 + sigma_max^2) for VP models),
      else sigma_max (a VE model's N(0, sigma_max^2 I)).
    - trace: "rademacher" or "gaussian" (Hutchinson, one probe per image drawn once from
      `generator` and kept over the whole path) or "exact" (one backward pass per dimension).
    - solver: "rk4" (`steps` fixed steps, uniform in log sigma, 4 calls per step) or "rk45"
      (scipy's adaptive Dormand-Prince on the flattened state, `rtol`/`atol`).
    - dtype: of the ODE state and the log-density (float64 by default); the denoiser casts
      at its network boundary.
    """
    if trace not in TRACES:
        raise ValueError(f"unknown trace estimator {trace!r}; expected one of {sorted(TRACES)}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; expected one of {sorted(SOLVERS)}")
    sigma_min = float(sigma_min if sigma_min is not None else denoiser.sigma_min)
    sigma_max = float(sigma_max if sigma_max is not None else denoiser.sigma_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if prior_std is None:
        prior_std = denoiser.prior_std(sigma_max) if hasattr(denoiser, "prior_std") else sigma_max
    x = x.to(dtype)
    n, dims = x.shape[0], x[0].numel()
    probe = None
    if trace != "exact":
        probe = torch.randn(x.shape, generator=generator, dtype=dtype)
        if trace == "rademacher":
            probe = probe.sign()
        probe = probe.to(x.device)
    f = _drift_and_divergence(denoiser, cond, trace, probe)
    u0, u1 = math.log(sigma_min), math.log(sigma_max)
    if solver == "rk4":
        x, delta, nfe = _solve_rk4(f, x, u0, u1, steps)
    else:
        x, delta, nfe = _solve_rk45(f, x, u0, u1, rtol, atol)
    flat = x.reshape(n, dims)
    prior = -0.5 * (flat / prior_std).pow(2).sum(1) - dims * (math.log(prior_std) + 0.5 * math.log(2 * math.pi))
    return ODELikelihood(log_prob=prior + delta, prior_log_prob=prior, delta=delta, x_end=x, dims=dims, nfe=nfe)


def _solve_rk4(f: Callable, x: torch.Tensor, u0: float, u1: float, steps: int):
    """Classical RK4 in u = log sigma from u0 to u1 in `steps` equal steps: (x(u1), delta, nfe)."""
    h = (u1 - u0) / steps
    delta = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(steps):
        u = u0 + i * h
        k1, l1 = f(x, math.exp(u))
        k2, l2 = f(x + h / 2 * k1, math.exp(u + h / 2))
        k3, l3 = f(x + h / 2 * k2, math.exp(u + h / 2))
        k4, l4 = f(x + h * k3, math.exp(u + h))
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        delta = delta + h / 6 * (l1 + 2 * l2 + 2 * l3 + l4)
    return x, delta, 4 * steps


def _solve_rk45(f: Callable, x: torch.Tensor, u0: float, u1: float, rtol: float, atol: float):
    """scipy's adaptive Dormand-Prince on the flattened (x, delta) state: (x(u1), delta, nfe)."""
    import numpy as np

    try:
        from scipy.integrate import solve_ivp
    except ImportError:
        raise ImportError("solver='rk45' needs scipy: pip install 'difforge[eval]'") from None
    n, dims, dtype = x.shape[0], x[0].numel(), x.dtype
    nfe = 0

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        state = torch.from_numpy(y[: n * dims]).to(dtype).reshape(x.shape).to(x.device)
        dx, dl = f(state, math.exp(u))
        return np.concatenate([dx.flatten().cpu().double().numpy(), dl.cpu().double().numpy()])

    y0 = np.concatenate([x.flatten().cpu().double().numpy(), np.zeros(n)])
    sol = solve_ivp(rhs, (u0, u1), y0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solve failed: {sol.message}")
    y = torch.from_numpy(sol.y[:, -1]).to(dtype).to(x.device)
    return y[: n * dims].reshape(x.shape), y[n * dims :], nfe


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """8-bit levels in model space plus uniform noise within their bin, U(-BIN/2, BIN/2)."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64) - 0.5
    return x.to(torch.float64) + BIN * u.to(x.device)
