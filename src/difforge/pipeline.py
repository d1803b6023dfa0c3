"""A trained model ready to sample: load from a run or an exported model, generate.

Loading needs only `difforge.models`, `difforge.diffusion` and `difforge.sampling`
(no training code): a model directory is `model.safetensors` + `config.json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from difforge.diffusion import DiscreteSchedule
from difforge.diffusion.grids import sigma_grid
from difforge.models import build_model
from difforge.models.denoiser import Denoiser, EpsDenoiser
from difforge.sampling import (
    CFGDenoiser,
    ClampDenoiser,
    DynamicThresholdDenoiser,
    get_sampler,
    per_sample_generators,
    randn_like,
    sampler_options,
)

# Steps per sampler when not given (None: every timestep of the schedule). Heun makes two
# denoiser calls per step (2N - 1 in all), so 25 Heun steps cost about 50 Euler steps.
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "euler": 50, "euler-a": 50, "heun": 25, "dpmpp-2m": 25, "dpmpp-2m-sde": 25,
                 "dpmpp-3m": 25, "langevin": 50, "reverse-sde": 100, "pc": 50}
# Sigma grid per sampler when not given: the discrete samplers step through the training
# timesteps ("trailing" starts at the last one, Lin et al. 2024); the ODE/SDE solvers use
# Karras et al. (2022)'s rho = 7 grid, which they were tuned with.
DEFAULT_GRID = {"ddpm": "trailing", "ddim": "trailing", "langevin": "log-snr"}  # langevin: NCSN's geometric levels
DEFAULT_GRID_OTHERS = "karras"
DEFAULT_CFG = 3.0


def default_grid(sampler: str) -> str:
    return DEFAULT_GRID.get(sampler, DEFAULT_GRID_OTHERS)


class ModelLoadError(ValueError):
    """A run or model directory that cannot be loaded."""


class Pipeline:
    """A network + its schedule + what it was trained on; generates uint8 images."""

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule, info: dict, device: torch.device | str = "cpu"):
        self.net, self.schedule, self.info = net, schedule, info
        self.device = torch.device(device)

    @property
    def num_classes(self) -> int | None:
        return self.info["model"]["num_classes"]

    @property
    def class_names(self) -> list[str] | None:
        return self.info.get("class_names")

    def parse_class(self, value: str | int) -> int:
        """A class index from an index or a class name; clear error otherwise."""
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

    def denoiser(
        self, cfg: float | None = None, clip: bool = True, cfg_rescale: float = 0.0, threshold: float | None = None
    ) -> nn.Module:
        """D(x, sigma, cond) with guidance (conditional models; default scale DEFAULT_CFG,
        optional guidance rescale phi = `cfg_rescale`) and x0 kept in [-1, 1]: by static
        clipping (`clip`), or by dynamic thresholding at percentile `threshold` (Imagen)."""
        d: nn.Module = Denoiser(self.net, self.schedule, self.info.get("prediction", "eps"))
        if self.num_classes:
            d = CFGDenoiser(d, DEFAULT_CFG if cfg is None else cfg, null_label=self.num_classes, rescale=cfg_rescale)
        elif cfg is not None and cfg != 1.0:
            raise ValueError("a CFG scale needs a class-conditional model; this one is unconditional")
        elif cfg_rescale:
            raise ValueError("guidance rescale needs a class-conditional model; this one is unconditional")
        if threshold is not None:
            return DynamicThresholdDenoiser(d, threshold)
        return ClampDenoiser(d) if clip else d

    def sigmas(self, sampler: str, steps: int | None = None, grid: str | None = None) -> torch.Tensor:
        """The sigma grid a sampler runs on: `steps` (default DEFAULT_STEPS) on grid `grid`
        (default `default_grid(sampler)`); float64, decreasing, ending in 0."""
        get_sampler(sampler)  # a clear error for unknown names
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        steps = steps if steps is not None else DEFAULT_STEPS.get(sampler, 50)
        return sigma_grid(self.schedule, steps or self.schedule.timesteps, grid or default_grid(sampler))

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space images (N, C, S, S) -> uint8 at the data's native size."""
        from difforge.data import from_model_output

        return from_model_output(x.float().cpu(), self.info["native_size"])

    @torch.no_grad()
    def generate(
        self,
        n: int | None = None,
        labels: torch.Tensor | None = None,
        *,
        cfg: float | None = None,
        sampler: str = "ddim",
        steps: int | None = None,
        grid: str | None = None,
        seed: int = 0,
        batch_size: int = 100,
        clip: bool = True,
        cfg_rescale: float = 0.0,
        threshold: float | None = None,
        callback: Callable[[dict], None] | None = None,
        seeds: Sequence[int] | None = None,
        **options,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample images; image i uses seed `seed + i` (or `seeds[i]` when given), whatever the batch size.

        `sampler` names one of `difforge.sampling.SAMPLERS`, `steps` and `grid` pick its
        sigma grid (`sigmas`), `options` go to the sampler (e.g. eta for ddim and euler-a).
        The callback runs once per sampler step and batch. Returns uint8 images
        (N, C, h, w) at the data's native size, and the labels.
        """
        if self.info.get("task") == "superres":
            raise ValueError("this is a super-resolution model: use `difforge upscale` (difforge.tasks.upscale)")
        sample_fn = get_sampler(sampler)
        known = sampler_options(sampler)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"sampler {sampler!r} takes no option {unknown[0]!r}; its options: {sorted(known)}")
        if labels is not None:
            if not self.num_classes:
                raise ValueError("this model is unconditional: it takes no class labels")
            n = len(labels)
        if n is None or n < 1:
            raise ValueError(f"number of images must be >= 1, got {n}")
        if seeds is not None and len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} images")
        den = self.denoiser(cfg, clip, cfg_rescale, threshold).to(self.device)
        sigmas = self.sigmas(sampler, steps, grid)
        size, c = self.info["image_size"], self.info["channels"]
        out = []
        prior_std = EpsDenoiser(self.net, self.schedule).prior_std(float(sigmas[0]))
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            gens = per_sample_generators(seeds[start:stop] if seeds is not None else range(seed + start, seed + stop))
            x = randn_like(torch.empty(stop - start, c, size, size), gens)
            x = (x * prior_std).to(self.device)
            cond = labels[start:stop].to(self.device) if labels is not None else None
            x = sample_fn(den, x, sigmas, generator=gens, callback=callback, cond=cond, **options)
            out.append(self.to_images(x))
        return torch.cat(out), labels

    def _layout(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict:
        """One grid row per class when labelled in class blocks, else rows of 10."""
        nrow = 10
        if labels is not None and self.num_classes:
            per = int((labels == labels[0]).sum())
            nrow = per if per > 1 else min(10, len(labels))
        return {"nrow": nrow, "scale": 2 if images.shape[-1] <= 32 else 1}

    def save_grid(self, images: torch.Tensor, path: str | Path, labels: torch.Tensor | None = None) -> Path:
        from difforge.io import save_grid

        return save_grid(images, path, **self._layout(images, labels))

    def save_gif(self, frames: Sequence[torch.Tensor], path: str | Path, labels: torch.Tensor | None = None) -> Path:
        """uint8 image batches, one per frame, as an animated GIF of grids laid out as `save_grid`."""
        from difforge.io import save_gif

        return save_gif(frames, path, **self._layout(frames[-1], labels))


def load_pipeline(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> Pipeline:
    """Load a run directory (its newest valid checkpoint) or an exported model directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"no such run or model directory: {path}")
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        info = json.loads((path / "config.json").read_text())
        weights = path / "model.safetensors"
    elif (path / "model.json").is_file():
        from difforge.runs import find_resumable, weights_file

        info = json.loads((path / "model.json").read_text())
        ckpt, problems = find_resumable(path / "checkpoints")
        if ckpt is None:
            detail = f" ({'; '.join(problems)})" if problems else ""
            raise ModelLoadError(f"{path} has no valid checkpoint yet{detail}")
        weights = weights_file(ckpt, ema)
    else:
        raise ModelLoadError(f"{path} is neither a run directory (model.json) nor a model directory (config.json + model.safetensors)")
    if info.get("format") != "difforge-model":
        raise ModelLoadError(f"{path}: not a difforge model description")
    m = info["model"]
    try:
        net = build_model(m["preset"], in_channels=m["in_channels"], num_classes=m["num_classes"],
                          cond_channels=m.get("cond_channels", 0))
        net.load_state_dict(load_file(weights))
    except (RuntimeError, OSError, ValueError, SafetensorError) as e:  # SafetensorError: a corrupt file
        raise ModelLoadError(f"cannot load weights {weights}: {str(e).splitlines()[0]}") from None
    d = info["diffusion"]
    from difforge.diffusion.frameworks import make_noise

    noise = make_noise(d)  # the framework's noise process (a model without "framework" is DDPM)
    schedule = noise.schedule if noise.name == "ddpm" else noise
    return Pipeline(net.to(device).eval(), schedule, info, device)


def is_model_dir(path: str | Path) -> bool:
    """Whether `path` holds an exported model (config.json + model.safetensors)."""
    return (Path(path) / "config.json").is_file() and (Path(path) / "model.safetensors").is_file()


def export_model(run_dir: str | Path, out: str | Path, ema: bool = True, overwrite: bool = False) -> Path:
    """Write `out/model.safetensors` + `out/config.json` from a run's newest checkpoint.

    `out` must be new, empty, or (with `overwrite`) an exported model: a folder of other
    files is refused before anything is written."""
    import shutil

    from difforge.io.outputs import check_output_dir
    from difforge.runs import find_resumable, weights_file

    run_dir = Path(run_dir)
    out = check_output_dir(out, holds="exported model", is_ours=is_model_dir, overwrite=overwrite)
    if not (run_dir / "model.json").is_file():
        raise ModelLoadError(f"{run_dir} is not a run directory (no model.json)")
    ckpt, problems = find_resumable(run_dir / "checkpoints")
    if ckpt is None:
        raise ModelLoadError(f"{run_dir} has no valid checkpoint to export" + (f" ({'; '.join(problems)})" if problems else ""))
    info = json.loads((run_dir / "model.json").read_text())
    info["weights"] = "ema" if ema else "raw"
    info["step"] = int(json.loads((ckpt / "meta.json").read_text())["step"])
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights_file(ckpt, ema), out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(info, indent=2))
    return out
