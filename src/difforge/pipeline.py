"""A trained model ready to sample: `load_pipeline` from a run or an exported model, then
generate, sample clips, upscale and save grids.

Loading needs only `difforge.models`, `difforge.diffusion` and `difforge.sampling`
(no training code); the files themselves are read and written by `difforge.model_files`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from difforge.defaults import (  # noqa: F401 - re-exported
    DEFAULT_CFG,
    DEFAULT_CFG_IMAGE_EMBEDDING,
    DEFAULT_CFG_INTERVAL,
    DEFAULT_CFG_TEXT,
    DEFAULT_GRID,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    default_grid,
)
from difforge.diffusion.grids import sigma_grid
from difforge.diffusion.process import NoiseProcess
from difforge.hub import not_found, resolve_model_dir
from difforge.io.formats import OUTPUT_TYPES, uint8_as
from difforge.io.space import from_uint8
from difforge.model_files import ModelLoadError, autoencoder_beside, card_and_weights, clip_beside, load_network
from difforge.models.card import ModelCard
from difforge.models.conditioning import downsample
from difforge.models.denoiser import Denoiser
from difforge.models.text_image import TextImageCond
from difforge.sampling import (
    CFGDenoiser,
    ClampDenoiser,
    DynamicThresholdDenoiser,
    KeepGivenDenoiser,
    checked_sampler,
    get_sampler,
    per_sample_generators,
    randn_like,
)
from difforge.sampling.guidance import broadcast_cond

if TYPE_CHECKING:
    import numpy as np


class Pipeline:
    """A model object (`Denoiser`: network, noise process, prediction) and its card;
    generates uint8 images. `Pipeline(card.denoiser(net), card)` wraps a network; a latent
    diffusion model (`card.latent`) also needs its `autoencoder` (a `KLAutoencoder`), which
    decodes the sampled latents. An unCLIP decoder (conditioned on CLIP image embeddings)
    may carry its domain CLIP (`clip`, a `difforge.models.clip.DomainCLIP`), which embeds
    images for variations and prompts for its prior (`difforge.tasks.unclip`)."""

    def __init__(self, model: Denoiser, card: ModelCard, device: torch.device | str = "cpu",
                 autoencoder: nn.Module | None = None, clip=None):
        if card.latent and autoencoder is None:
            raise ValueError("a latent diffusion model needs its autoencoder to make images")
        if autoencoder is not None and not card.latent:
            raise ValueError("this model works in pixel space: it takes no autoencoder")
        self.model, self.card, self.autoencoder, self.clip = model, card, autoencoder, clip
        self.device = torch.device(device)
        if autoencoder is not None:
            autoencoder.to(self.device)

    def to(self, device: torch.device | str) -> Pipeline:
        """Move the model to `device` (where it samples from now on); returns the pipeline."""
        self.model.to(device)
        if self.autoencoder is not None:
            self.autoencoder.to(device)
        self.device = torch.device(device)
        return self

    def use_precision(self, precision: str) -> Pipeline:
        """Run the network under autocast from now on: "bf16" (CPU or CUDA), "fp16" (CUDA),
        "fp32" (off, the default) or "auto" (bf16 where the device computes it natively, else
        fp32; `difforge.runtime.resolve_precision`). The sampler's arithmetic stays float32.
        Returns the pipeline."""
        from difforge.config import PRECISIONS
        from difforge.runtime import autocast_dtype

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")
        self.model.autocast = autocast_dtype(precision, self.device)
        return self

    def compile(self, **options) -> Pipeline:
        """`torch.compile` the network (options go to it); the first batch then takes the
        compilation time. benchmarks/inference.py records what it buys. Returns the pipeline."""
        self.model.net = torch.compile(self.model.net, **options)
        return self

    def require_pixel_space(self, what: str) -> None:
        """A one-line error for work that needs a pixel-space model (tasks that edit pixels)."""
        if self.card.latent:
            raise ValueError(f"{what} works on pixel-space models; this is a latent diffusion model")

    @property
    def net(self) -> nn.Module:
        """The network (the denoiser's F)."""
        return self.model.net

    @property
    def process(self) -> NoiseProcess:
        """The noise process the model was trained in (`docs/architecture.md`)."""
        return self.model.process

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional model, else None."""
        return self.card.num_classes

    @property
    def class_names(self) -> list[str] | None:
        """The class names in label order, when the data had them."""
        names = self.card.class_names
        return None if names is None else list(names)

    def parse_class(self, value: str | int) -> int:
        """A class index from an index or a class name; clear error otherwise."""
        if self.takes_text:
            raise ValueError("a text-to-image model takes prompts, not class labels")
        if not self.num_classes:
            raise ValueError("this model is unconditional: it takes no class")
        names = self.class_names or []
        s = str(value).strip()
        if s.lstrip("-").isdigit():
            k = int(s)
            if not 0 <= k < self.num_classes:
                raise ValueError(f"class {k} out of range: this model has classes 0..{self.num_classes - 1}")
            return k
        lowered = [n.lower() for n in names]
        if s.lower() in lowered:
            return lowered.index(s.lower())
        raise ValueError(f"unknown class {s!r}; expected 0..{self.num_classes - 1} or one of {names}")

    def default_labels(self, per_class: int = 1, classes: Sequence[int] | None = None) -> torch.Tensor | None:
        """`per_class` images of each class in order (one grid row per class); None if unconditional."""
        if not self.num_classes:
            return None
        classes = list(range(self.num_classes)) if classes is None else list(classes)
        return torch.tensor(classes, dtype=torch.long).repeat_interleave(per_class)

    def default_prompts(self, per_prompt: int = 1) -> list[str]:
        """A text model's example prompts (its card's), each `per_prompt` times in a row."""
        return [p for p in (self.card.prompts or ("",)) for _ in range(per_prompt)]

    @property
    def takes_text(self) -> bool:
        """Whether this model takes prompts: a text-to-image model (`generate(prompts=...)`) or
        a text super-resolution model (`upscale(prompts=...)`)."""
        return self.card.conditioning.kind in ("text", "text-low-res-image")

    @property
    def takes_image_embeddings(self) -> bool:
        """Whether this is an unCLIP decoder (`generate(embeddings=...)`, CLIP image embeddings)."""
        return self.card.conditioning.kind == "clip-image-embedding"

    def encode_prompts(self, prompts: Sequence[str], *, truncate: bool = False):
        """Prompts as the network's conditioning (a `TextCond` on this pipeline's device);
        a one-line error for a prompt over the model's token limit (cut to fit instead with
        `truncate`, as training cuts captions) or a non-text model."""
        if not self.takes_text:
            raise ValueError("this model is not a text-to-image model: it takes no prompt")
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of strings")
        return self.card.conditioning.conditioner(truncate=truncate)(list(prompts), device=self.device)

    def condition(self, n: int | None = None, labels=None, prompts: Sequence[str] | None = None, *,
                  truncate: bool = False, embeddings: torch.Tensor | None = None) -> tuple[int, Any]:
        """(n, cond): what the network is conditioned on for a batch of n images, on this
        pipeline's device. A text model's `prompts` encoded (`encode_prompts`; without
        prompts, n empty prompts: unconditional), class `labels` as a long tensor (each a
        class or the learned null), or None (an unconditional model; a class model's null).
        One prompt or label stands for all n images; n may be None where they give it.
        One-line errors: a prompt to a model that takes no text, labels to a text or an
        unconditional model, no label to a model without a null class, counts that differ.
        An unCLIP decoder takes CLIP image `embeddings` (N, dim) (without them, the null:
        unconditional)."""
        if embeddings is not None and not self.takes_image_embeddings:
            raise ValueError("this model is not an unCLIP decoder: it takes no CLIP image embeddings")
        if self.takes_image_embeddings:
            if labels is not None or prompts is not None:
                raise ValueError("an unCLIP decoder takes CLIP image embeddings, not labels or prompts: give prompts "
                                 "through a prior (`difforge unclip MODEL --prior PRIOR --prompt ...`)")
            spec = self.card.conditioning
            cond, what = (spec.null(_count(n)) if embeddings is None else spec.check(embeddings)), "embeddings"
            cond = cond.to(self.device)
        elif prompts is not None and not self.takes_text:
            self.encode_prompts(prompts)  # its one-line error
        if self.takes_text:
            if labels is not None:
                raise ValueError("a text-to-image model takes prompts, not class labels")
            cond = self.encode_prompts([""] * _count(n) if prompts is None else prompts, truncate=truncate)
            what = "prompts"
        elif self.takes_image_embeddings:
            pass
        elif labels is not None:
            if not self.num_classes:
                raise ValueError("this model is unconditional: it takes no class labels")
            cond, what = torch.as_tensor(labels, dtype=torch.long).reshape(-1), "labels"
            null = self.card.conditioning.null_label
            bad = (cond < 0) | ((cond >= self.num_classes) & (cond != (-1 if null is None else null)))
            if bad.any():
                also = "" if null is None else f" (or {null}, the null class: unconditional)"
                raise ValueError(f"labels must be in 0..{self.num_classes - 1}{also}, got {int(cond[bad][0])}")
            cond = cond.to(self.device)
        elif self.num_classes and self.card.conditioning.null_label is None:
            raise ValueError("this model learned no null class, so it cannot sample without a class; give labels")
        else:
            return _count(n), None
        if n is not None and len(cond) != n:
            if len(cond) != 1:
                raise ValueError(f"got {len(cond)} {what} for {n} images (give one for all, or one per image)")
            cond = broadcast_cond(cond, _count(n))
        return len(cond), cond

    @property
    def default_cfg(self) -> float | None:
        """The guidance scale when none is given: DEFAULT_CFG for class labels, DEFAULT_CFG_TEXT
        for prompts, DEFAULT_CFG_IMAGE_EMBEDDING for image embeddings, 1 (none) for a model
        without a learned null class, None for an unconditional model."""
        if self.takes_text:
            return DEFAULT_CFG_TEXT
        if self.takes_image_embeddings:
            return DEFAULT_CFG_IMAGE_EMBEDDING
        if not self.num_classes:
            return None
        return DEFAULT_CFG if self.card.conditioning.has_null else 1.0

    @property
    def default_cfg_interval(self) -> tuple[float, float] | None:
        """The noise levels guidance applies at when no interval is given: DEFAULT_CFG_INTERVAL
        for a class-conditional pixel model with a null class (where it was measured), None
        (every level) for the others."""
        if self.takes_text or self.takes_image_embeddings or self.card.latent or not self.num_classes:
            return None
        return DEFAULT_CFG_INTERVAL if self.card.conditioning.has_null else None

    def denoiser(
        self, cfg: float | None = None, clip: bool = True, cfg_rescale: float = 0.0, threshold: float | None = None,
        negative_prompt: str | None = None, cfg_interval: tuple[float, float] | None = None,
    ) -> nn.Module:
        """D(x, sigma, cond) with guidance (conditional models; default scale `default_cfg`,
        optional guidance rescale phi = `cfg_rescale`, guidance only at noise levels in
        `cfg_interval` = (lo, hi), default `default_cfg_interval`; (0, inf) guides at every
        level) and x0 kept in [-1, 1]: by static
        clipping (`clip`), or by dynamic thresholding at percentile `threshold` (Imagen).
        A text model's unconditional branch is the empty prompt, or `negative_prompt`."""
        d: nn.Module = self.model
        if negative_prompt is not None and not self.takes_text:
            raise ValueError("a negative prompt needs a text-to-image model")
        if threshold is not None and self.card.latent:
            raise ValueError("dynamic thresholding keeps pixels in [-1, 1]; a latent model's samples are latents")
        if self.takes_text:
            scale = self.default_cfg if cfg is None else cfg
            null = self.encode_prompts([negative_prompt or ""])
            d = CFGDenoiser(d, scale, null=null, rescale=cfg_rescale, interval=cfg_interval)
        elif self.takes_image_embeddings:
            scale = self.default_cfg if cfg is None else cfg
            d = CFGDenoiser(d, scale, null=self.card.conditioning.null(1, self.device), rescale=cfg_rescale,
                            interval=cfg_interval)
        elif self.num_classes:
            scale = self.default_cfg if cfg is None else cfg
            null = self.card.conditioning.null_label
            if cfg_interval is None:
                cfg_interval = self.default_cfg_interval
            if null is None and (scale != 1.0 or cfg_rescale or cfg_interval):
                raise ValueError("classifier-free guidance needs a null class, which this model did not learn; "
                                 "use --cfg 1")
            d = CFGDenoiser(d, scale, null_label=-1 if null is None else null, rescale=cfg_rescale,
                            interval=cfg_interval)
        elif cfg is not None and cfg != 1.0:
            raise ValueError("a CFG scale needs a class-conditional model; this one is unconditional")
        elif cfg_rescale or cfg_interval:
            raise ValueError(f"guidance {'rescale' if cfg_rescale else 'intervals'} need a class-conditional or "
                             "text model; this one is unconditional")
        if threshold is not None:
            return DynamicThresholdDenoiser(d, threshold)
        return ClampDenoiser(d) if clip and not self.card.latent else d  # latents have no [-1, 1] range

    def sigmas(self, sampler: str, steps: int | None = None, grid: str | None = None) -> torch.Tensor:
        """The sigma grid a sampler runs on: `steps` (default DEFAULT_STEPS) on grid `grid`
        (default `default_grid(sampler)`); float64, decreasing, ending in 0."""
        get_sampler(sampler)  # a clear error for unknown names
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        steps = steps if steps is not None else DEFAULT_STEPS.get(sampler, 50)
        return sigma_grid(self.process, steps or self.process.timesteps, grid or default_grid(sampler))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """What the sampler made -> model-space images: a latent model's latents (scaled by
        the autoencoder's `scale`) decoded and clamped to [-1, 1]; a pixel model's unchanged."""
        if self.autoencoder is None:
            return x
        z = x.to(self.device, torch.float32) / self.card.autoencoder.scale
        with torch.no_grad():
            return self.autoencoder.decode(z).clamp(-1, 1)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Sampled images or latents (N, C, S, S) -> uint8 at the data's native size."""
        from difforge.data import from_model_output

        return from_model_output(self.decode(x).float().cpu(), self.card.native_size)

    def _sampler(self, sampler: str, options: dict) -> Callable:
        return checked_sampler(sampler, options)

    def sampler_defaults(self, sampler: str, options: dict) -> dict:
        """`options` with what depends on this model filled in: the corrector's signal-to-noise
        ratio of a sampler that runs one by default (pc) is the noise process's `corrector_snr`."""
        from difforge.sampling import sampler_options

        if "snr" not in options and (sampler_options(sampler).get("snr") or 0) > 0:
            return {**options, "snr": self.process.corrector_snr}
        return options

    @torch.no_grad()
    def generate(
        self,
        n: int | None = None,
        labels: torch.Tensor | None = None,
        *,
        cfg: float | None = None,
        sampler: str = DEFAULT_SAMPLER,
        steps: int | None = None,
        grid: str | None = None,
        seed: int = 0,
        batch_size: int = 100,
        clip: bool = True,
        cfg_rescale: float = 0.0,
        threshold: float | None = None,
        cfg_interval: tuple[float, float] | None = None,
        callback: Callable[[dict], None] | None = None,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        output_type: str = "pt",
        prompts: Sequence[str] | None = None,
        negative_prompt: str | None = None,
        truncate_prompts: bool = False,
        embeddings: torch.Tensor | None = None,
        **options,
    ) -> tuple[torch.Tensor | np.ndarray | list, torch.Tensor | None]:
        """Sample images; image i uses seed `seed + i` (or `seeds[i]` when given), whatever the batch size.

        A text-to-image model draws one image per prompt of `prompts` (`n` of one prompt
        given alone, `n` of the empty prompt without prompts), guided away from
        `negative_prompt` when given (it replaces the empty prompt as the unconditional
        branch of classifier-free guidance). One label given alone also stands for `n` images.
        A prompt over the model's token limit is refused, or with `truncate_prompts` cut to
        fit (as training cuts captions). An unCLIP decoder draws one image per row of
        `embeddings` (N, dim), CLIP image embeddings (`n` of one row given alone).

        `generator` replaces the seeds: a list of `torch.Generator`s, one per image (image i
        draws all its noise from `generator[i]`, so `[Generator().manual_seed(s) for s in
        seeds]` gives the images of `seeds`), or one generator that every batch draws from
        in turn (its images then depend on `batch_size`).

        `sampler` names one of `difforge.sampling.SAMPLERS`, `steps` and `grid` pick its
        sigma grid (`sigmas`), `options` go to the sampler (e.g. eta for ddim and euler-a).
        The callback runs once per sampler step and batch. Returns the images at the data's
        native size, as `output_type`: "pt" uint8 (N, C, h, w), "np" uint8 (N, h, w, C) or
        "pil" a list of PIL images; and the labels.
        """
        if self.card.task == "superres":
            raise ValueError("this is a super-resolution model: use `difforge upscale` (difforge.tasks.upscale)")
        if self.takes_clips:
            raise ValueError("this is a video model: use generate_video (difforge sample-video)")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {list(OUTPUT_TYPES)}")
        sample_fn = self._sampler(sampler, options)
        options = self.sampler_defaults(sampler, options)
        n, cond = self.condition(n, labels, prompts, truncate=truncate_prompts, embeddings=embeddings)
        gens_of = _noise_source(n, seed, seeds, generator)
        den = self.denoiser(cfg, clip, cfg_rescale, threshold, negative_prompt, cfg_interval).to(self.device)
        sigmas = self.sigmas(sampler, steps, grid)
        size, c = self.card.image_size, self.card.channels
        out = []
        prior_std = self.model.prior_std(float(sigmas[0]))
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            gens = gens_of(start, stop)
            x = randn_like(torch.empty(stop - start, c, size, size), gens)
            x = (x * prior_std).to(self.device)
            part = None if cond is None else cond[start:stop]
            x = sample_fn(den, x, sigmas, generator=gens, callback=callback, cond=part, **options)
            out.append(self.to_images(x))
        return uint8_as(torch.cat(out), output_type), None if labels is None else cond.cpu()

    # ------------------------------------------------------------ video
    @property
    def takes_clips(self) -> bool:
        """Whether this is a video model (samples are clips (C, T, H, W); `generate_video`)."""
        return self.card.frames is not None

    def video_denoiser(self, cfg: float | None = None, clip: bool = True, per_frame: bool = False) -> nn.Module:
        """A video model's D(x, sigma, FrameCond): classifier-free guidance against the null
        (the null label, no frame observed; default scale DEFAULT_CFG with classes, else 1),
        x0 clipped to [-1, 1], and the observed frames put back exactly (`KeepGivenDenoiser`).
        `per_frame`: the null's frames are independent too (`sample_video(per_frame=True)`)."""
        spec = self.card.conditioning
        scale = (DEFAULT_CFG if spec.num_classes else 1.0) if cfg is None else float(cfg)
        d: nn.Module = self.model
        if scale != 1.0:
            null = spec.null(1, self.device)
            d = CFGDenoiser(d, scale, null=null.independent_rows() if per_frame else null)
        return KeepGivenDenoiser(ClampDenoiser(d) if clip else d)

    def video_condition(self, n: int | None, labels=None, given: torch.Tensor | None = None,
                        mask: torch.Tensor | None = None) -> tuple[int, Any]:
        """(n, FrameCond) for n clips: class `labels` (one for all, or one each; None: the
        null), `given` float clips (N or 1, C, T, h, w) in [-1, 1] at the native size whose
        frames at `mask` ((T,) or (N, T) bool) are observed. One-line errors for shapes,
        counts, labels to a model without classes, or a mask that observes every frame."""
        from difforge.models.frames import FrameCond

        spec, t = self.card.conditioning, self.card.frames
        if (given is None) != (mask is None):
            raise ValueError("give the observed frames and their mask together")
        if given is not None:
            if not isinstance(given, torch.Tensor) or given.ndim != 5:
                raise ValueError(f"given frames must be clips (N, C, T, H, W), got "
                                 f"{tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__}")
            if given.shape[2] != t:
                raise ValueError(f"given clips have {given.shape[2]} frames; this model makes {t}")
            by_frame = given.transpose(1, 2)  # (N, T, C, H, W)
            frames = self.card.check_images(by_frame.reshape(-1, *by_frame.shape[2:]), "given frame")
            given = self.card.to_model(frames.view(given.shape[0], t, *frames.shape[1:]).transpose(1, 2), -1.0)
            mask = torch.as_tensor(mask, dtype=torch.bool)
            mask = mask.expand(given.shape[0], t) if mask.ndim == 1 else mask
            if mask.shape[-1] != t or mask.ndim != 2:
                raise ValueError(f"the frame mask must be ({t},) or (N, {t}), got {tuple(mask.shape)}")
            if mask.all():
                raise ValueError("every frame is given: nothing is left to make")
            n = given.shape[0] if n is None else n
            if given.shape[0] != n and given.shape[0] != 1 or mask.shape[0] not in (1, n):
                raise ValueError(f"got {given.shape[0]} given clips for {n} clips (give one for all, or one each)")
        n = _count(n)
        if labels is not None:
            if not spec.num_classes:
                raise ValueError("this model is unconditional: it takes no class labels")
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            bad = (labels < 0) | (labels > spec.num_classes)
            if bad.any():
                raise ValueError(f"labels must be in 0..{spec.num_classes - 1} (or {spec.num_classes}, the null "
                                 f"class: unconditional), got {int(labels[bad][0])}")
            if len(labels) not in (1, n):
                raise ValueError(f"got {len(labels)} labels for {n} clips (give one for all, or one per clip)")
            labels = labels.expand(n).clone()
        null = spec.null(n)
        if labels is None:
            labels = null.labels
        if given is None:
            return n, FrameCond(null.mask, None, labels).to(self.device)
        rows = torch.zeros(n, dtype=torch.long) if given.shape[0] == 1 else torch.arange(n)
        mrows = torch.zeros(n, dtype=torch.long) if mask.shape[0] == 1 else torch.arange(n)
        return n, FrameCond.given(given[rows], mask[mrows], labels).to(self.device)

    @torch.no_grad()
    def sample_video(
        self,
        n: int | None = None,
        labels: torch.Tensor | None = None,
        *,
        given: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cfg: float | None = None,
        sampler: str = "ddim",
        steps: int | None = None,
        grid: str | None = None,
        seed: int = 0,
        seeds: Sequence[int] | None = None,
        batch_size: int = 16,
        clip: bool = True,
        callback: Callable[[dict], None] | None = None,
        per_frame: bool = False,
        **options,
    ) -> torch.Tensor:
        """Sample clips with any frames given: float (N, C, T, h, w) in [-1, 1] at the native
        size, the frames at `mask` equal to `given`'s (`video_condition` says what may be
        given). Clip i uses seed `seed + i` (or `seeds[i]`). The building block of
        prediction (the first frames given), interpolation (every other frame), infilling,
        and of longer videos made window by window.

        `per_frame`: every frame sampled on its own through the spatial layers only (the
        temporal layers skip the rows, as for the unrelated frames of joint image-video
        training, `train.joint_images`): the model as an image model applied frame by frame,
        to see what its temporal layers add. Only a `stunet` without temporal down-sampling,
        and no frames given."""
        if not self.takes_clips:
            raise ValueError("this is not a video model: use generate")
        if per_frame:
            self.check_per_frame()
        if per_frame and given is not None:
            raise ValueError("per_frame makes every frame on its own: no frames can be given")
        sample_fn = self._sampler(sampler, options)
        options = self.sampler_defaults(sampler, options)
        if self.residual_video:
            return self._sample_rvd(n, labels, given, mask, cfg, sample_fn, self.sigmas(sampler, steps, grid), seed,
                                    seeds, batch_size, clip, callback, options)
        n, cond = self.video_condition(n, labels, given, mask)
        if per_frame:
            cond = cond.independent_rows()
        gens_of = _noise_source(n, seed, seeds, None)
        den = self.video_denoiser(cfg, clip, per_frame).to(self.device)
        sigmas = self.sigmas(sampler, steps, grid)
        size, c, t = self.card.image_size, self.card.channels, self.card.frames
        prior_std = self.model.prior_std(float(sigmas[0]))
        out = []
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            gens = gens_of(start, stop)
            x = (randn_like(torch.empty(stop - start, c, t, size, size), gens) * prior_std).to(self.device)
            part = cond[start:stop]
            x = sample_fn(den, x, sigmas, generator=gens, callback=callback, cond=part, **options)
            out.append(self.card.from_model(part.keep_given(x).float()).cpu())
        return torch.cat(out)

    def check_per_frame(self) -> None:
        """A one-line error unless this model can make frames on their own (`sample_video(per_frame=True)`)."""
        if not self.takes_clips or self.residual_video or getattr(self.model.net, "time_down", True):
            raise ValueError("per_frame samples frames through the spatial layers alone: it needs a stunet without "
                             "temporal down-sampling (stunet-space-down)")

    @property
    def residual_video(self) -> bool:
        """Whether this is a residual video diffusion model (`difforge.models.rvd`): clips are
        rolled out frame by frame from given first frames."""
        from difforge.models.rvd import RVDDenoiser

        return isinstance(self.model, RVDDenoiser)

    def _sample_rvd(self, n, labels, given, mask, cfg, sample_fn, sigmas, seed, seeds, batch_size, clip, callback,
                    options) -> torch.Tensor:
        """`sample_video` of an RVD model: the first G frames of `given` ((N or 1, C, >= G, h, w))
        continued to the mask's length T, any T > G (`difforge.models.rvd.rollout`)."""
        from difforge.models.rvd import given_prefix, rollout

        k = self.model.core.context
        if cfg is not None and float(cfg) != 1.0:
            raise ValueError("an RVD model samples without classifier-free guidance (use --cfg 1)")
        if given is None or mask is None:
            raise ValueError(f"an RVD model continues given frames: give the first {k} or more (--given first:{k})")
        g, t = given_prefix(mask, k)
        if not isinstance(given, torch.Tensor) or given.ndim != 5 or given.shape[2] < g:
            raise ValueError(f"given frames must be clips (N, C, T, H, W) of at least {g} frames, got "
                             f"{tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__}")
        by_frame = given[:, :, :g].transpose(1, 2)  # (N, G, C, H, W)
        frames = self.card.check_images(by_frame.reshape(-1, *by_frame.shape[2:]), "given frame")
        frames = self.card.to_model(frames, -1.0)
        given = frames.view(given.shape[0], g, *frames.shape[1:]).transpose(1, 2)  # (N, C, G, H, W)
        n = given.shape[0] if n is None else n
        if given.shape[0] not in (1, n):
            raise ValueError(f"got {given.shape[0]} given clips for {n} clips (give one for all, or one each)")
        n, cond = self.video_condition(n, labels)
        given = given.expand(n, -1, -1, -1, -1)
        gens_of = _noise_source(n, seed, seeds, None)
        prior_std = self.model.prior_std(float(sigmas[0]))
        out = []
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            gens = gens_of(start, stop)

            def residual(den, rcond, gens=gens):
                x = randn_like(torch.empty(rcond.mu.shape), gens) * prior_std
                return sample_fn(den, x.to(self.device), sigmas, generator=gens, callback=callback, cond=rcond,
                                 **options)

            part = None if cond.labels is None else cond.labels[start:stop]
            x = rollout(self.model, given[start:stop].to(self.device), t, part, residual, clip)
            out.append(self.card.from_model(x.float()).cpu())
        return torch.cat(out)

    def generate_video(self, n: int | None = None, labels: torch.Tensor | None = None, **kwargs
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`sample_video` as uint8 clips (N, C, T, h, w), and the labels (None without)."""
        from difforge.io.space import to_uint8

        clips = self.sample_video(n, labels, **kwargs)
        return to_uint8(clips), None if labels is None else torch.as_tensor(labels).reshape(-1).expand(len(clips))

    @torch.no_grad()
    def upscale(self, low: torch.Tensor, *, cfg: float | None = None, sampler: str = "ddpm", steps: int = 50,
                seed: int = 0, clip: bool = True, callback: Callable[[dict], None] | None = None,
                prompts: Sequence[str] | None = None, negative_prompt: str | None = None,
                truncate_prompts: bool = False, **options) -> torch.Tensor:
        """SR3 (Saharia et al. 2022): upscale `low` (N, C, native/scale, native/scale) in
        [-1, 1] with this super-resolution model, which runs with the bicubic upsampling of
        `low` as its conditioning image. Image i uses seed + i. Returns float
        (N, C, native, native) in [-1, 1]. A text super-resolution model also takes
        `prompts` (one for all, or one per image) and `negative_prompt`, as `generate`;
        guidance compares them with the same image. Without either it runs on the empty
        prompt, unguided unless `cfg` is given (`difforge.models.text_image`)."""
        if self.card.task != "superres":
            raise ValueError("this is not a super-resolution model (train one with --task superres)")
        if not self.takes_text and (prompts is not None or negative_prompt is not None):
            raise ValueError("this super-resolution model is not a text-to-image model: it takes no prompt")
        up = self.card.conditioning.from_low(low, self.card.native_size)
        up = self.card.check_images(up, "low-resolution image")
        sample_fn = self._sampler(sampler, options)
        options = self.sampler_defaults(sampler, options)
        image = cond = self.card.to_model(up).to(self.device)
        if self.takes_text:  # the prompts and the image; the unconditional branch keeps the image
            _, text = self.condition(len(image), prompts=prompts, truncate=truncate_prompts)
            null = broadcast_cond(self.encode_prompts([negative_prompt or ""]), len(image))
            scale = (1.0 if prompts is None and negative_prompt is None else self.default_cfg) if cfg is None else cfg
            cond, null = TextImageCond(text, image), TextImageCond(null, image)
            den = CFGDenoiser(self.model, scale, null=null)
            den = (ClampDenoiser(den) if clip else den).to(self.device)
        else:
            den = self.denoiser(cfg, clip).to(self.device)
        sigmas = self.sigmas(sampler, steps)
        gens = per_sample_generators(range(seed, seed + len(up)))
        x = randn_like(image, gens) * self.model.prior_std(float(sigmas[0]))
        x = sample_fn(den, x, sigmas, generator=gens, callback=callback, cond=cond, **options)
        return self.card.from_model(x.float().cpu())

    def save_upscale_grid(self, images: torch.Tensor, path: str | Path, prompts: Sequence[str] | None = None
                          ) -> Path:
        """A super-resolution model's preview: uint8 native-size `images` (first 10), their
        low-resolution versions (nearest) and the model's upscaling (a text model's with
        `prompts`, one per image, when given), one row each."""
        from difforge.io import save_grid, to_uint8

        scale = self.card.conditioning.scale
        truth = from_uint8(images[:10])
        low = downsample(truth, scale)
        out = self.upscale(low, **({"prompts": list(prompts[:10]), "truncate_prompts": True} if prompts else {}))
        nearest = low.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        grid = to_uint8(torch.cat([truth, nearest, out]))
        return save_grid(grid, path, nrow=len(truth), scale=2 if self.card.native_size <= 32 else 1)

    def _layout(self, images: torch.Tensor, labels: torch.Tensor | None, per_row: int | None = None) -> dict:
        """One grid row per class when labelled in class blocks, else rows of `per_row` (10)."""
        nrow = per_row or 10
        if labels is not None and self.num_classes:
            per = int((labels == labels[0]).sum())
            nrow = per if per > 1 else min(10, len(labels))
        return {"nrow": nrow, "scale": 2 if images.shape[-1] <= 32 else 1}

    def save_grid(self, images: torch.Tensor, path: str | Path, labels: torch.Tensor | None = None,
                  per_row: int | None = None) -> Path:
        """Write uint8 `images` as one PNG grid: one row per class with `labels`, else rows of
        `per_row` (default 10); returns the path."""
        from difforge.io import save_grid

        return save_grid(images, path, **self._layout(images, labels, per_row))

    def save_video_grid(self, clips: torch.Tensor, path: str | Path) -> Path:
        """uint8 clips (N, C, T, h, w) as one PNG: a row of T frames per clip."""
        from difforge.io.video import save_frames_grid

        return save_frames_grid(clips, path, scale=2 if clips.shape[-1] <= 32 else 1)

    def save_video(self, clips: torch.Tensor, path: str | Path, fps: int = 8) -> Path:
        """uint8 clips (N, C, T, h, w) as one video, the clips side by side (`difforge.io.video.write_video`:
        .gif with PIL, .mp4 with PyAV)."""
        from difforge.io.video import write_video

        return write_video(clips, path, fps=fps, scale=2 if clips.shape[-1] <= 32 else 1)

    def save_gif(self, frames: Sequence[torch.Tensor], path: str | Path, labels: torch.Tensor | None = None) -> Path:
        """uint8 image batches, one per frame, as an animated GIF of grids laid out as `save_grid`."""
        from difforge.io import save_gif

        return save_gif(frames, path, **self._layout(frames[-1], labels))


def _count(n: int | None) -> int:
    if n is None or n < 1:
        raise ValueError(f"number of images must be >= 1, got {n}")
    return n


def _noise_source(n: int, seed: int, seeds: Sequence[int] | None, generator) -> Callable:
    """(start, stop) -> the generators of images start..stop-1: from `generator` (one per
    image, or one shared), from `seeds`, else seed + i; one-line errors for a bad count."""
    if generator is not None and seeds is not None:
        raise ValueError("give seeds or generator, not both")
    if isinstance(generator, torch.Generator):
        return lambda start, stop: generator
    if generator is not None:
        gens = list(generator)
        if len(gens) != n or not all(isinstance(g, torch.Generator) for g in gens):
            raise ValueError(f"generator must be a torch.Generator or a list of {n} of them (one per image), "
                             f"got {len(gens)} items")
        return lambda start, stop: gens[start:stop]
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} images")
    return lambda start, stop: per_sample_generators(
        seeds[start:stop] if seeds is not None else range(seed + start, seed + stop))


def load_pipeline(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> Pipeline:
    """Load a run directory (its newest valid checkpoint), an exported model directory, or
    a Hub id `owner/name` of a model in the local Hugging Face cache (`difforge.hub`). A
    LoRA model's adapter is applied to its base and folded into the weights."""
    given, path = path, resolve_model_dir(path)
    if not path.is_dir():
        raise ModelLoadError(not_found(given))
    card, weights = card_and_weights(path, ema)
    net = load_network(card, weights)
    return Pipeline(card.denoiser(net.to(device).eval()), card, device, autoencoder=autoencoder_beside(path, card),
                    clip=clip_beside(path, card, device))
