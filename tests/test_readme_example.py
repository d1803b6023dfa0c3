"""The README's Python example, on the saved fixture model: it runs, and x0 is in [-1, 1]
as the README says (it samples through `pipe.denoiser`, which clips x0)."""

from pathlib import Path

import torch

from difforge.diffusion.grids import sigma_grid
from difforge.pipeline import load_pipeline
from difforge.sampling import sample_ddim

RUN = Path(__file__).parent / "fixtures" / "run-ddpm"


def test_the_readme_sampler_example_stays_in_range():
    pipe = load_pipeline(RUN)
    size, c = pipe.card.image_size, pipe.card.channels
    den = pipe.denoiser(cfg=3.0)
    sigmas = sigma_grid(pipe.process, 25, "trailing")
    x = torch.randn(8, c, size, size, generator=torch.Generator().manual_seed(0)) * pipe.model.prior_std(
        float(sigmas[0]))
    labels = torch.arange(8) % pipe.num_classes
    x0 = sample_ddim(den, x, sigmas, cond=labels, eta=0.0)
    assert x0.min() >= -1 and x0.max() <= 1
    images = pipe.to_images(x0)
    assert images.dtype == torch.uint8 and images.shape == (8, c, pipe.card.native_size, pipe.card.native_size)
