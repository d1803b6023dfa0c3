"""Step-for-step parity of the DDPM, DDIM and DPM-Solver++ (2M, 3M, 2M SDE) samplers with
diffusers' schedulers.

Both sides run the same fixed eps-model in float64 with the same betas and the same
random draws; every intermediate x_t (converted to the VP frame) must agree to 1e-5.
"""

import pytest
import torch
from torch import nn

from difforge.diffusion import make_schedule
from difforge.diffusion.frameworks import DDPMProcess
from difforge.diffusion.grids import discrete_sigmas, sigma_grid, timestep_subset
from difforge.models.denoiser import Denoiser
from difforge.sampling import sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m

diffusers = pytest.importorskip("diffusers")


def _float64(scheduler, sched):
    """diffusers keeps its schedule in float32; give it ours in float64 so the
    comparison measures the algorithms, not the storage precision."""
    scheduler.betas = sched.betas.clone()
    scheduler.alphas = sched.alphas.clone()
    scheduler.alphas_cumprod = sched.alphas_cumprod.clone()
    return scheduler


class FixedEps(nn.Module):
    """A smooth, nonlinear, timestep-dependent eps-model with no training."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))  # sets net dtype

    def forward(self, x, t, cond=None):
        t = t.to(torch.float64).view(-1, 1, 1, 1)
        return torch.tanh(0.8 * x + 0.002 * t) + 0.1 * torch.sin(3 * x)


def _run_ours(sampler, sched, sigmas, x_T, seed, eps_model=None, **opts):
    den = Denoiser(eps_model or FixedEps(), DDPMProcess(sched), "eps")
    trace = []

    def cb(d):
        ab = 1 / (1 + d["sigma"] ** 2)
        trace.append((d["x"] * ab.sqrt()).clone())  # back to the VP frame

    x = x_T * (1 + sigmas[0] ** 2).sqrt()  # VP prior N(0, I) seen in the VE frame
    g = torch.Generator().manual_seed(seed)
    out = sampler(den, x, sigmas, generator=g, callback=cb, **opts)
    return trace, out


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("variance", ["large", "small"])
def test_ddpm_matches_diffusers(schedule, variance):
    sched = make_schedule(schedule, 1000)
    ref = _float64(diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        trained_betas=sched.betas.numpy(),
        clip_sample=False,
        variance_type="fixed_large" if variance == "large" else "fixed_small",
    ), sched)
    ref.set_timesteps(1000)
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = FixedEps()

    trace_ref = []
    x = x_T.clone()
    g = torch.Generator().manual_seed(1)
    for t in ref.timesteps:
        trace_ref.append(x.clone())
        e = eps(x, torch.full((2,), float(t)))
        x = ref.step(e, t, x, generator=g).prev_sample

    trace, out = _run_ours(sample_ddpm, sched, discrete_sigmas(sched), x_T, 1, variance=variance)
    assert len(trace) == len(trace_ref) == 1000
    for a, b in zip(trace, trace_ref):
        assert (a - b).abs().max() < 1e-5
    assert (out - x).abs().max() < 1e-5


# "linspace" is left out: diffusers' DDIM steps from t to t - T // steps whatever the
# spacing, which for linspace is not the next timestep of its own list; ours steps to
# the next timestep of the grid. Leading and trailing have both agree.
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers(spacing, eta):
    sched = make_schedule("linear", 1000)
    ref = _float64(diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        trained_betas=sched.betas.numpy(),
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing=spacing,
    ), sched)
    steps = 25
    ref.set_timesteps(steps)
    assert torch.equal(ref.timesteps.long(), timestep_subset(1000, steps, spacing))
    x_T = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = FixedEps()

    trace_ref = []
    x = x_T.clone()
    g = torch.Generator().manual_seed(5)
    for t in ref.timesteps:
        trace_ref.append(x.clone())
        e = eps(x, torch.full((3,), float(t)))
        x = ref.step(e, t, x, eta=eta, generator=g).prev_sample

    sigmas = discrete_sigmas(sched, steps, spacing)
    trace, out = _run_ours(sample_ddim, sched, sigmas, x_T, 5, eta=eta)
    assert len(trace) == steps
    for a, b in zip(trace, trace_ref):
        assert (a - b).abs().max() < 1e-5
    assert (out - x).abs().max() < 1e-5


class GaussianishEps(nn.Module):
    """eps-model with O(1) x0 estimates at every noise level, so that float32 rounding on
    diffusers' side stays far below the tolerance: the exact eps of N(0, 0.5^2) data plus
    a smooth nonlinear, timestep-dependent term (scaled by sqrt(alpha_bar) so that its
    effect on x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) stays below 0.1)."""

    def __init__(self, sched, sd: float = 0.5):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))  # sets net dtype
        self.sched, self.sd = sched, sd

    def forward(self, x, t, cond=None):
        sigma = self.sched.t_to_sigma(t).view(-1, 1, 1, 1)
        ab = 1 / (1 + sigma**2)
        exact = (1 - ab).sqrt() * x / (ab * self.sd**2 + 1 - ab)
        return exact + 0.1 * ab.sqrt() * torch.sin(3 * x + 0.01 * t.view(-1, 1, 1, 1))


# DPMSolverMultistepScheduler picks its timesteps differently from DDIMScheduler:
#   trailing: round(arange(T, 0, -T / n)) - 1              (= our timestep_subset "trailing")
#   linspace: round(linspace(0, T - 1, n + 1))[::-1][:-1]  (n + 1 points, the 0 dropped:
#             not our "linspace"; we give ours the same timesteps through the sigmas)
#   karras:   Karras rho = 7 between the training sigma_min and sigma_max (= our "karras"),
#             but it hands the network round(t(sigma)) where ours hands it the fractional
#             t(sigma); both loops here call the network with t(sigma), which is the
#             integer timestep on the other grids (asserted), so they compare the solver.
# final_sigmas_type="zero" ends the grid at sigma = 0 like ours (its default, "sigma_min",
# stops at the smallest training sigma and returns a slightly noisy x); with it the last
# step is first order, and lower_order_final lowers the order of the last two steps on
# grids shorter than 15 (ours: `lower_order_final=True`). diffusers stores sigmas in
# float32: we check they agree with ours and swap ours (float64) in. Its step() still
# rounds the running sample to float32 (6e-8 relative), about 1e-7 absolute here.
# diffusers reads our float64 alphas_cumprod through np.array: a harmless numpy 2 warning
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("grid, steps", [("trailing", 25), ("trailing", 10), ("linspace", 20), ("karras", 12)])
def test_dpmpp_multistep_matches_diffusers(order, grid, steps):
    sched = make_schedule("linear", 1000)
    ref = _float64(diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=sched.betas.numpy(),
        algorithm_type="dpmsolver++",
        solver_order=order,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="linspace" if grid == "linspace" else "trailing",
        use_karras_sigmas=grid == "karras",
    ), sched)
    ref.set_timesteps(steps)
    if grid == "linspace":
        sigmas = torch.cat([sched.sigmas[ref.timesteps], torch.zeros(1, dtype=torch.float64)])
    else:
        sigmas = sigma_grid(sched, steps, grid)
    if grid == "trailing":
        assert torch.equal(ref.timesteps, timestep_subset(1000, steps, "trailing"))
    assert len(ref.sigmas) == len(sigmas) == steps + 1 and ref.sigmas[-1] == 0
    assert torch.allclose(ref.sigmas.double(), sigmas, rtol=1e-6, atol=0)
    ref.sigmas = sigmas.clone()
    t_net = sched.sigma_to_t(sigmas[:-1])
    if grid != "karras":
        assert torch.equal(t_net, ref.timesteps.double())

    x_T = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = GaussianishEps(sched)
    trace_ref = []
    x = x_T.clone()
    for i, t in enumerate(ref.timesteps):
        trace_ref.append(x.clone())
        x = ref.step(eps(x, t_net[i].expand(3)), t, x).prev_sample

    sampler = sample_dpmpp_2m if order == 2 else sample_dpmpp_3m
    trace, out = _run_ours(sampler, sched, sigmas, x_T, 0, eps_model=eps)
    assert len(trace) == len(trace_ref) == steps
    for a, b in zip(trace, trace_ref):
        assert (a - b).abs().max() < 1e-5
    assert (out - x).abs().max() < 1e-5
    assert out.abs().max() < 5  # O(1) values: the 1e-5 is a tight bound


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("grid, steps", [("trailing", 20), ("karras", 12)])
def test_dpmpp_2m_sde_matches_diffusers(grid, steps):
    """SDE-DPM-Solver++(2M) against diffusers' algorithm_type="sde-dpmsolver++", both fed
    the same fresh noise: ours draws it from one generator, one x-shaped draw per step
    except the last (into sigma = 0, noise-free); diffusers gets those draws as
    `variance_noise`."""
    sched = make_schedule("linear", 1000)
    ref = _float64(diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=sched.betas.numpy(), algorithm_type="sde-dpmsolver++",
        solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
        timestep_spacing="trailing", use_karras_sigmas=grid == "karras",
    ), sched)
    ref.set_timesteps(steps)
    sigmas = sigma_grid(sched, steps, grid)
    assert torch.allclose(ref.sigmas.double(), sigmas, rtol=1e-6, atol=0)
    ref.sigmas = sigmas.clone()
    t_net = sched.sigma_to_t(sigmas[:-1])

    x_T = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(7)
    noise = [torch.randn(x_T.shape, generator=g, dtype=torch.float64) for _ in range(steps - 1)]
    noise.append(torch.zeros_like(x_T))  # the step into sigma = 0 adds none
    eps = GaussianishEps(sched)
    trace_ref, x = [], x_T.clone()
    for i, t in enumerate(ref.timesteps):
        trace_ref.append(x.clone())
        x = ref.step(eps(x, t_net[i].expand(3)), t, x, variance_noise=noise[i]).prev_sample

    trace, out = _run_ours(sample_dpmpp_2m_sde, sched, sigmas, x_T, 7, eps_model=eps)
    assert len(trace) == len(trace_ref) == steps
    for a, b in zip(trace, trace_ref):
        assert (a - b).abs().max() < 1e-5
    assert (out - x).abs().max() < 1e-5
    assert out.abs().max() < 5


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("grid, flag", [("karras", "use_karras_sigmas"), ("log-snr", "use_lu_lambdas")])
def test_karras_and_log_snr_grids_match_diffusers(grid, flag):
    sched = make_schedule("linear", 1000)
    ref = _float64(diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=sched.betas.numpy(), final_sigmas_type="zero", **{flag: True}
    ), sched)
    for steps in (1, 7, 50):
        ref.set_timesteps(steps)
        ours = sigma_grid(sched, steps, grid)
        assert torch.allclose(ref.sigmas.double(), ours, rtol=1e-6, atol=0)  # theirs is float32
