"""diffusers folders in and out: `difforge import` and `difforge export --format diffusers`.

Import: a `UNet2DModel` and its scheduler config, as `save_pretrained` writes them (a
pipeline folder with `unet/` and `scheduler/`, or a flat folder with the UNet's
`config.json` and weights next to `scheduler_config.json`), becomes a difforge model
directory: the UNet config is the architecture kwargs of the `diffusers-unet` preset,
the scheduler's betas and prediction type the DDPM framework spec. Whatever does not map
is refused with one line naming the field.

Export: a model built with the `diffusers-unet` preset (trained in difforge or
imported) becomes a `DDPMPipeline` folder that diffusers loads with `from_pretrained`,
plus `difforge.json` (its difforge card, so that importing it back loses nothing) and a
README.md for the Hub. diffusers is imported only here and in the network itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from difforge.diffusion.frameworks import FrameworkSpec
from difforge.hub import model_readme, not_found, resolve_model_dir
from difforge.io.outputs import check_output_dir
from difforge.model_files import is_model_dir
from difforge.models.card import Architecture, ModelCard
from difforge.models.conditioning import ClassLabels, Unconditional
from difforge.models.diffusers_unet import diffusers_missing, unet_kwargs
from difforge.pipeline import load_pipeline

PRESET = "diffusers-unet"
CARD_FILE = "difforge.json"  # the difforge card of a diffusers folder difforge exported
# diffusers' beta_schedule -> difforge's schedule; prediction_type -> prediction
SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# the schedulers whose config is a DDPM training process (the sampler is difforge's)
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")


class InteropError(ValueError):
    """A diffusers folder or model that does not map; one line naming the field."""


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InteropError(f"{path}: cannot read it as JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise InteropError(f"{path}: not a JSON object")
    return d


def _flip(mapping: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in mapping.items()}


# ---------------------------------------------------------------- scheduler <-> framework


def framework_from_scheduler(config: Mapping[str, Any]) -> tuple[FrameworkSpec, str]:
    """The DDPM framework spec and prediction of a DDPMScheduler / DDIMScheduler config."""
    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise InteropError(f"scheduler: {field} {config.get(field)!r} {why}")

    name = config.get("_class_name")
    need(name is None or name in SCHEDULERS, "_class_name", f"is not one of {list(SCHEDULERS)}")
    need(config.get("trained_betas") is None, "trained_betas", "(a table of betas) has no difforge schedule")
    need(config.get("beta_schedule", "linear") in SCHEDULES, "beta_schedule",
         f"has no difforge schedule; expected one of {sorted(SCHEDULES)}")
    need(config.get("prediction_type", "epsilon") in PREDICTIONS, "prediction_type",
         f"has no difforge prediction; expected one of {sorted(PREDICTIONS)}")
    need(not str(config.get("variance_type") or "").startswith("learned"), "variance_type",
         "(a network that predicts its variance) is not supported")
    need(not config.get("rescale_betas_zero_snr", False), "rescale_betas_zero_snr", "is not supported")
    timesteps = config.get("num_train_timesteps", 1000)
    need(isinstance(timesteps, int) and timesteps >= 2, "num_train_timesteps", "must be an integer >= 2")
    spec = FrameworkSpec("ddpm", timesteps, SCHEDULES[config.get("beta_schedule", "linear")],
                         float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02)))
    return spec, PREDICTIONS[config.get("prediction_type", "epsilon")]


def scheduler_from_card(card: ModelCard) -> dict[str, Any]:
    """The DDPMScheduler config of a DDPM card (its betas and prediction type)."""
    d = card.diffusion
    if card.framework != "ddpm":
        raise InteropError(f"diffusers' DDPMScheduler is the ddpm framework; this model is {card.framework!r}")
    return {"num_train_timesteps": d.timesteps, "beta_schedule": _flip(SCHEDULES)[d.schedule],
            "beta_start": d.beta_start, "beta_end": d.beta_end,
            "prediction_type": _flip(PREDICTIONS)[card.prediction], "clip_sample": True, "clip_sample_range": 1.0}


# ---------------------------------------------------------------- import


def _parts(src: Path, scheduler: Path | None) -> tuple[Path, Path]:
    """(the UNet's folder, the scheduler config file) of a diffusers folder."""
    if (src / "unet" / "config.json").is_file():
        unet = src / "unet"
    elif (src / "config.json").is_file():
        unet = src
    else:
        raise InteropError(f"{src} holds no diffusers UNet (neither unet/config.json nor config.json)")
    if scheduler is not None:
        found = scheduler / "scheduler_config.json" if scheduler.is_dir() else scheduler
        if not found.is_file():
            raise InteropError(f"--scheduler {scheduler}: no scheduler config there")
        return unet, found
    for candidate in (src / "scheduler" / "scheduler_config.json", src / "scheduler_config.json"):
        if candidate.is_file():
            return unet, candidate
    raise InteropError(f"{src} has no scheduler config (scheduler/scheduler_config.json or scheduler_config.json); "
                       "give --scheduler FILE")


def _check_unet(config: Mapping[str, Any]) -> int:
    """The square image size of a UNet2DModel config; refuses what difforge cannot run."""
    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise InteropError(f"unet: {field} {config.get(field)!r} {why}")

    need(config.get("_class_name", "UNet2DModel") == "UNet2DModel", "_class_name", "is not UNet2DModel")
    need(config.get("out_channels", 3) == config.get("in_channels", 3), "out_channels",
         f"differs from in_channels {config.get('in_channels', 3)} (learned variances are not supported)")
    need(config.get("time_embedding_type", "positional") == "positional", "time_embedding_type",
         "is not supported (difforge's DDPM networks take the timestep in a positional embedding)")
    need(config.get("class_embed_type") is None, "class_embed_type", "is not supported (only num_class_embeds)")
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    need(isinstance(size, int) and size > 0, "sample_size", "must be one square size")
    return size


def _conditioning(config: Mapping[str, Any], null_class: bool, known: ModelCard | None):
    embeds = config.get("num_class_embeds")
    if not embeds:
        if null_class:
            raise InteropError("--null-class: this UNet has no class embeddings (num_class_embeds)")
        return Unconditional()
    if known is not None and isinstance(known.conditioning, ClassLabels):
        return known.conditioning  # exported by difforge: its card says which row is the null class
    if null_class:
        if embeds < 2:
            raise InteropError(f"--null-class: num_class_embeds {embeds} leaves no real class")
        return ClassLabels(embeds - 1)
    return ClassLabels(embeds, has_null=False)


def import_diffusers(src: str | Path, out: str | Path, *, scheduler: str | Path | None = None,
                     null_class: bool = False, dataset: str | None = None,
                     class_names: Sequence[str] | None = None, overwrite: bool = False) -> Path:
    """Turn a diffusers UNet2DModel + scheduler folder (or Hub id in the local cache) into
    the difforge model directory `out` (model.safetensors, config.json, README.md).

    `null_class`: the UNet's last class embedding is the null class of classifier-free
    guidance (without it, a class-conditional model samples at guidance scale 1)."""
    import torch
    from safetensors.torch import save_file

    out = check_output_dir(out, holds="model", is_ours=is_model_dir, overwrite=overwrite)
    missing = diffusers_missing()
    if missing:
        raise ImportError(missing)
    path = resolve_model_dir(src)
    if not path.is_dir():
        raise InteropError(not_found(src).replace("run or model", "diffusers model"))
    unet_dir, scheduler_file = _parts(path, None if scheduler is None else Path(scheduler))
    unet_config = _read_json(unet_dir / "config.json")
    size = _check_unet(unet_config)
    spec, prediction = framework_from_scheduler(_read_json(scheduler_file))
    known = None
    if (path / CARD_FILE).is_file():  # exported by difforge: keep what diffusers has no field for
        try:
            known = ModelCard.load(path / CARD_FILE)
        except ValueError as e:
            raise InteropError(f"{path / CARD_FILE}: {e}") from None
    conditioning = _conditioning(unet_config, null_class, known)
    kwargs = unet_kwargs(unet_config)
    card = ModelCard(Architecture(PRESET, kwargs), size, known.native_size if known else size,
                     int(unet_config.get("in_channels", 3)), spec, prediction, conditioning,
                     class_names if class_names is not None else (known.class_names if known else None),
                     dataset if dataset is not None else (known.dataset if known else None),
                     known.step if known else None, known.weights if known else None)

    from diffusers import UNet2DModel

    try:
        loaded = UNet2DModel.from_pretrained(unet_dir, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise InteropError(f"{unet_dir}: cannot load the UNet ({str(e).splitlines()[0]})") from None
    net = card.build_network()
    try:
        net.unet.load_state_dict(loaded.state_dict())  # strict: the card rebuilds exactly this network
    except RuntimeError as e:
        raise InteropError(f"{unet_dir}: its weights do not fit its config ({str(e).splitlines()[0]})") from None
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in net.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / "model.safetensors")
    card.save(out / "config.json")
    (out / "README.md").write_text(model_readme(card, title=str(src) if path != Path(src) else path.resolve().name))
    return out


# ---------------------------------------------------------------- export


def is_diffusers_export(path: Path) -> bool:
    """Whether `path` is a diffusers folder difforge exported (ours to overwrite)."""
    return (path / "model_index.json").is_file() and (path / CARD_FILE).is_file()


def export_diffusers(model: str | Path, out: str | Path, *, ema: bool = True, overwrite: bool = False) -> Path:
    """Write `out` as a diffusers DDPMPipeline folder (unet/, scheduler/, model_index.json)
    from a run (its newest checkpoint), a model directory or a Hub id, plus difforge.json
    and README.md. Only `diffusers-unet` models have diffusers' layers."""
    out = check_output_dir(out, holds="diffusers export", is_ours=is_diffusers_export, overwrite=overwrite)
    pipe = load_pipeline(model, ema=ema)
    card = pipe.card
    if card.architecture.preset != PRESET:
        raise InteropError(f"model {card.architecture.preset!r} is difforge's own network, which diffusers has no "
                           f"class for; only {PRESET!r} models export to diffusers (train with --model {PRESET})")
    if card.task != "generate":
        raise InteropError(f"a {card.task} model has no diffusers pipeline; only image generation models export")
    if card.latent:
        raise InteropError("a latent diffusion model has no DDPMPipeline (it needs its autoencoder); export it "
                           "with `difforge export` instead")
    scheduler_config = scheduler_from_card(card)
    if card.step is None:
        card = _with_step(Path(resolve_model_dir(model)), card, ema)

    from diffusers import DDPMPipeline, DDPMScheduler

    unet = pipe.net.unet
    unet.register_to_config(sample_size=card.image_size)
    out.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler_config)).save_pretrained(out, safe_serialization=True)
    card.save(out / CARD_FILE)
    name = Path(model).resolve().name if Path(model).exists() else str(model)
    (out / "README.md").write_text(model_readme(card, library="diffusers", title=name))
    return out


def _with_step(path: Path, card: ModelCard, ema: bool) -> ModelCard:
    """A run's card with the step of the checkpoint `load_pipeline` loaded."""
    if not (path / "model.json").is_file():
        return card
    from difforge.runs import find_resumable

    ckpt, _ = find_resumable(path / "checkpoints")
    step = json.loads((ckpt / "meta.json").read_text())["step"]
    return card.exported(step, "ema" if ema else "raw")
