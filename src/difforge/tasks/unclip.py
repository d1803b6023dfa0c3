"""unCLIP (Ramesh et al. 2022): text -> prior -> decoder, and variations of an image.

- `prior_sample`: the prior (`difforge.models.prior`) draws CLIP image embeddings for CLIP
  text embeddings, with classifier-free guidance from the null text (zeros); the samples
  are brought back onto the unit sphere.
- `text_to_image`: prompts -> the decoder's CLIP text embeddings -> `prior_sample` ->
  the decoder (a `Pipeline` conditioned on CLIP image embeddings) draws one image each.
- `variations`: images -> their CLIP image embeddings -> the decoder draws `n` images of
  each embedding with different noise (the paper's Figure 3): what the embedding keeps
  (the garment, its colour) stays; what it does not, varies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from difforge.models.clip import clip_conditioner
from difforge.models.prior import PriorCard
from difforge.sampling import CFGDenoiser, get_sampler, per_sample_generators, randn_like


def _decoder(pipe) -> None:
    if not pipe.takes_image_embeddings:
        raise ValueError("this model is not an unCLIP decoder (train one with `difforge train --clip CLIP_DIR`)")
    if pipe.clip is None:
        raise ValueError("this unCLIP decoder was loaded without its CLIP model")


def check_prior(pipe, card: PriorCard) -> None:
    """One-line errors for a prior that does not fit the decoder's CLIP."""
    _decoder(pipe)
    spec = pipe.card.conditioning
    if card.dim != spec.dim:
        raise ValueError(f"the prior makes {card.dim}-d CLIP embeddings; this decoder takes {spec.dim}-d ones "
                         "(they were trained on different CLIP models)")
    if card.clip_fingerprint and spec.clip and card.clip_fingerprint != spec.clip:
        raise ValueError("the prior and the decoder were trained on different CLIP models (their weights differ)")


@torch.no_grad()
def prior_sample(card: PriorCard, prior, text_emb: torch.Tensor, *, cfg: float = 3.0, steps: int = 25,
                 seed: int = 0, sampler: str = "ddim") -> torch.Tensor:
    """Unit CLIP image embeddings (N, dim) for CLIP text embeddings (N, dim); row i seeded seed + i."""
    from difforge.defaults import default_grid
    from difforge.diffusion.grids import sigma_grid

    if text_emb.ndim != 2 or text_emb.shape[1] != card.dim:
        raise ValueError(f"the prior takes text embeddings (N, {card.dim}), got {tuple(text_emb.shape)}")
    device = next(prior.net.parameters()).device
    sigmas = sigma_grid(prior.process, steps, default_grid(sampler))
    gens = per_sample_generators(range(seed, seed + len(text_emb)))
    x = randn_like(torch.empty(len(text_emb), card.dim), gens) * prior.prior_std(float(sigmas[0]))
    den = CFGDenoiser(prior, cfg, null=card.null(1, device))
    x = get_sampler(sampler)(den, x.to(device), sigmas, generator=gens, cond=text_emb.to(device))
    return F.normalize(x.float().cpu() / card.scale, dim=-1)


def embed_prompts(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """The decoder's CLIP text embeddings of prompts (N, dim); a prompt over the CLIP's token
    limit is a one-line error."""
    _decoder(pipe)
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    conditioner = clip_conditioner(pipe.clip.net.arch, truncate=False)
    with torch.no_grad():
        return pipe.clip.net.embed_text(conditioner(list(prompts), device=pipe.clip.device)).float().cpu()


def text_to_image(pipe, card: PriorCard, prior, prompts: Sequence[str], *, n: int | None = None,
                  prior_cfg: float = 3.0, prior_steps: int = 25, seed: int = 0, **generate):
    """Images (uint8, one per prompt; `n` of one prompt given alone) and the image
    embeddings the prior drew for them; `generate` goes to the decoder's `Pipeline.generate`
    (its own `cfg`, `steps`, `sampler`, ...)."""
    check_prior(pipe, card)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if n is not None and len(prompts) == 1:
        prompts = prompts * n
    elif n is not None and n != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts for {n} images (give one for all, or one per image)")
    emb = prior_sample(card, prior, embed_prompts(pipe, prompts), cfg=prior_cfg, steps=prior_steps, seed=seed)
    images, _ = pipe.generate(embeddings=emb, seed=seed, **generate)
    return images, emb


def variations(pipe, images: torch.Tensor, n: int = 8, *, seed: int = 0, **generate) -> torch.Tensor:
    """`n` variations of each uint8 image (N, C, H, W) at the data's native size: uint8
    (N * n, C, H, W), image i's variations in rows i * n ... i * n + n - 1, drawn from its
    CLIP image embedding with seeds seed, seed + 1, ..."""
    _decoder(pipe)
    if n < 1:
        raise ValueError(f"variations per image must be >= 1, got {n}")
    emb = pipe.clip.embed_images(images)
    return pipe.generate(embeddings=emb.repeat_interleave(n, 0), seed=seed, **generate)[0]
