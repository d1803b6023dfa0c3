"""Typed run configuration: dataclasses, YAML loading, CLI overrides, validation.

A run's full resolved config is written to `runs/NAME/config.yaml`; loading that file
with `load_config` rebuilds the same config, so a run can be reproduced from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

DATASETS = ("fashion-mnist", "fashion-colour", "moving-fashion-mnist", "digits", "folder", "prepared", "shards")
VIDEO_DATASETS = ("moving-fashion-mnist",)  # sets of clips (N, C, T, H, W)
PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # auto: bf16 where the device computes it natively (runtime.py)
LR_SCHEDULES = ("onecycle", "cosine", "constant")
TEXT_ENCODERS = ("scratch", "minilm")  # models/conditioning.py's, named here so that the CLI needs no torch


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are shaped for the model."""

    # fashion-mnist | fashion-colour | moving-fashion-mnist (clips) | digits | folder | prepared (a `prepare` store)
    # | shards (WebDataset-layout tar shards)
    dataset: str = "fashion-mnist"
    path: str | None = None  # idx folder for fashion-mnist / fashion-colour; image folder for `folder`; shards
    image_size: int | None = None  # model input size; None: native size rounded up
    channels: int | None = None  # 1 or 3 for image folders; None: as the data has it
    val_fraction: float = 0.1  # held out of the training split for validation loss
    split_seed: int = 0  # the validation split depends only on this seed
    hflip: bool = False  # mirror each training image left-right with probability 1/2 (not for text or digits)


@dataclass(frozen=True)
class ModelConfig:
    """Which network, and how it is conditioned."""

    preset: str = "unet"  # see `difforge.models.PRESETS`
    conditional: bool = True  # class-conditional when the data has labels
    label_dropout: float = 0.1  # per-sample probability of the null label, or null CLIP embedding (for CFG)
    task: str = "generate"  # generate | superres (SR3: conditioned on the upsampled low-res image)
    scale: int = 2  # superres: upscaling factor (low-res side = image side / scale)
    text_encoder: str | None = None  # scratch | minilm: condition on the data's captions (text-to-image, text SR)
    caption_dropout: float = 0.1  # per-sample probability of the empty prompt (for CFG on text)
    max_tokens: int = 64  # prompt length limit of the text encoder, in its tokens
    grad_checkpoint: bool = False  # recompute the UNet blocks' activations in backward: less memory, ~30% slower
    latent: str | None = None  # a `difforge train-autoencoder` folder: diffuse in its latent space (latent diffusion)
    cache_latents: bool = True  # latent: encode the data once (in memory, and in RUN/cache); else every batch
    clip: str | None = None  # a `difforge train-clip` folder: condition on its image embeddings (unCLIP's decoder;
    # label_dropout is then the embedding dropout)
    # keyword arguments of the preset's network over the preset's own, e.g. {base_channels: 64, channel_mults:
    # [1, 2, 2, 2], attention_levels: [2, 3]} (docs/training.md); recorded in the model card
    architecture: dict[str, Any] | None = None
    init_from: str | None = None  # fine-tune: start from this run, model directory or Hub id (its architecture)
    lora_rank: int = 0  # with init_from: train rank-r LoRA adapters on the frozen model; 0: fine-tune every weight
    lora_alpha: float | None = None  # LoRA: the update is scaled by alpha / rank; None: alpha = rank


@dataclass(frozen=True)
class DiffusionConfig:
    """The framework and its noise process (`difforge.diffusion.frameworks.FrameworkSpec`,
    plus the prediction target)."""

    timesteps: int = 1000  # diffusion steps T of the DDPM chain (see framework for the others)
    schedule: str = "linear"  # linear | scaled_linear | cosine
    beta_start: float = 1e-4  # beta_1 of the linear and scaled_linear schedules
    beta_end: float = 0.02  # beta_T of the linear and scaled_linear schedules
    # Framework (docs/frameworks.md): ddpm | ncsn | vp-sde | subvp-sde | ve-sde | edm.
    # timesteps is also NCSN's number of levels L and the SDEs' discretization N; the
    # VP/sub-VP SDEs use beta(t) from timesteps * beta_start to timesteps * beta_end.
    framework: str = "ddpm"
    prediction: str | None = None  # eps | x0 | v (ddpm, vp-sde, subvp-sde); None: the framework's own
    min_snr_gamma: float | None = None  # min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5
    sigma_min: float | None = None  # ncsn, ve-sde, edm noise range; None: the framework's default
    sigma_max: float | None = None  # top of that range; None: the framework's default
    sigma_data: float | None = None  # edm: the data's standard deviation; None: 0.5 (pixels), 1 with model.latent


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, precision, logging and checkpointing."""

    max_steps: int | None = None  # wins over epochs when both are given
    epochs: int | None = None  # default when neither is given: 1 epoch
    batch_size: int = 128  # images per optimiser step (all processes together); a smaller set: all of it
    grad_accum: int = 1  # micro-batches per step: batch_size images in grad_accum pieces, one optimiser update
    lr: float = 2e-3  # peak learning rate
    weight_decay: float = 1e-3  # AdamW's decoupled weight decay
    lr_schedule: str = "onecycle"  # onecycle | cosine | constant
    warmup_steps: int = 100  # for cosine; onecycle warms up over its first 30%
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 needs CUDA) | auto (bf16 where native, else fp32)
    ema_decay: float = 0.995  # per-step decay of the exponential moving average of the weights
    ema_warmup: int = 2000  # EMA is a plain copy of the weights for this many steps
    log_every: int = 10  # steps between lines of metrics.jsonl (loss, learning rate, throughput)
    sample_every: int = 500  # 0 disables intermediate sample grids
    checkpoint_every: int = 1000  # 0: only at the end
    keep_checkpoints: int = 3  # the newest this many checkpoints are kept
    seed: int = 0  # initialisation, data order and noise
    device: str = "auto"  # auto (CUDA, else MPS, else CPU) | cpu | cuda | cuda:N | mps
    wandb: bool = False  # log to Weights & Biases (pip install 'difforge[wandb]'; offline without WANDB_API_KEY)
    tensorboard: bool = False  # log to TensorBoard under RUN_DIR/tensorboard (pip install 'difforge[tensorboard]')
    eval_every: int = 0  # steps between FD/KID evaluations of the EMA weights (eval/during_training.py); 0: off
    eval_samples: int = 500  # images generated per in-training evaluation
    final_grid: bool = True  # draw samples/final.png (10 per class, EMA weights) at the end
    # video: the share of each batch's rows that are 16 unrelated frames of the training clips (of the row's class)
    # instead of a clip; the temporal layers skip them (joint image-video training; stunet-space-down only)
    joint_images: float = 0.0


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/default"


SECTIONS = {"data": DataConfig, "model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig}


class ConfigError(ValueError):
    """A user-facing configuration problem (unknown key, wrong type, bad value)."""


def _check_type(where: str, value: Any, hint: Any) -> Any:
    """Validate (and lightly coerce: int -> float) one value against its annotation."""
    allowed = getattr(hint, "__args__", None) or (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{where} must not be null")
    for typ in allowed:
        if typ is type(None):
            continue
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if typ is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if typ in (str, bool) and isinstance(value, typ):
            return value
        if get_origin(typ) is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"{where} must be {names}, got {value!r} ({type(value).__name__})")


def _build_section(name: str, cls: type, values: dict[str, Any], base: Any) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in section {name!r}; expected {sorted(known)}")
    checked = {k: _check_type(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
    return dataclasses.replace(base, **checked)


def config_from_dict(d: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Build a RunConfig from nested dicts (as in YAML), on top of `base` (default: defaults)."""
    base = base or RunConfig()
    if not isinstance(d, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(d).__name__}")
    unknown = sorted(set(d) - set(SECTIONS) - {"out"})
    if unknown:
        raise ConfigError(
            f"unknown config section(s) {unknown}; expected {sorted(SECTIONS) + ['out']}"
        )
    updates: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        if name in d:
            section = d[name] or {}
            if not isinstance(section, dict):
                raise ConfigError(f"section {name!r} must be a mapping, got {section!r}")
            updates[name] = _build_section(name, cls, section, getattr(base, name))
    if "out" in d:
        updates["out"] = _check_type("out", d["out"], str)
    return validate(dataclasses.replace(base, **updates))


def settings_to_dict(settings: Iterable[str]) -> dict[str, Any]:
    """`SECTION.KEY=VALUE` strings (`difforge train --set`) as the nested dict that
    `config_from_dict` takes and checks. VALUE is one YAML value: 0.5, 1e-3, null, true,
    cosine; `out=DIR` sets the run directory. A later setting of a key wins."""
    import yaml

    d: dict[str, Any] = {}
    for text in settings:
        name, eq, raw = text.partition("=")
        parts = name.strip().split(".")
        if not eq or not all(parts) or len(parts) > 2 or (len(parts) == 1 and parts != ["out"]):
            raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. train.grad_clip=0.5")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {text!r}: {raw!r} is not a YAML value ({str(e).splitlines()[0]})") from None
        if isinstance(value, (dict, list)) and not (isinstance(value, dict) and _takes_mapping(*parts)):
            raise ConfigError(f"--set {text!r}: expected one value (a number, true, false, null or text), "
                              f"got a {type(value).__name__}")
        if len(parts) == 1:
            d["out"] = value
        else:
            d.setdefault(parts[0], {})[parts[1]] = _as_number(parts[0], parts[1], value)
    return d


def _takes_mapping(section: str, key: str = "") -> bool:
    """Whether config key `section.key` holds a mapping (model.architecture)."""
    cls = SECTIONS.get(section)
    if cls is None or key not in {f.name for f in fields(cls)}:
        return False
    hint = get_type_hints(cls)[key]
    return any(get_origin(a) is dict for a in (getattr(hint, "__args__", None) or (hint,)))


def _as_number(section: str, key: str, value: Any) -> Any:
    """YAML 1.1 reads 1e-3 (no dot) as text; for a key that takes a float, read it as one."""
    cls = SECTIONS.get(section)
    if not isinstance(value, str) or cls is None or key not in {f.name for f in fields(cls)}:
        return value
    hint = get_type_hints(cls)[key]
    if float not in (getattr(hint, "__args__", None) or (hint,)):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_config(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path}: {e}".splitlines()[0]) from None
    return config_from_dict(d, base)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def check_clips(cfg: RunConfig, clips: bool, what: str) -> None:
    """ConfigError unless the model and training options suit the data: clips (N, C, T, H, W)
    for a video model, images for the others. `what` names the data in the message."""
    from difforge.models.registry import PRESETS

    m, t = cfg.model, cfg.train
    video_presets = sorted(name for name, p in PRESETS.items() if getattr(p.cls, "takes_clips", False))
    if clips:
        if m.preset not in video_presets:
            raise ConfigError(f"{what} is clips: train it with a video model ({', '.join(video_presets)}), "
                              f"not {m.preset!r}")
        if m.task != "generate" or m.text_encoder is not None or m.latent is not None:
            raise ConfigError("a video model generates clips of pixels: no --task superres, text encoder or latent")
        if t.eval_every:
            raise ConfigError("train.eval_every: the in-training FD measures images, not clips; set it to 0")
        if t.joint_images:
            from difforge.models.stunet import STUNet

            kwargs = {**PRESETS[m.preset].kwargs, **(m.architecture or {})}
            if PRESETS[m.preset].cls is not STUNet or kwargs.get("time_down", True):
                raise ConfigError(f"train.joint_images: rows of unrelated frames pass a network's temporal layers "
                                  f"untouched only without temporal down-sampling: use --model stunet-space-down "
                                  f"(or time_down: false), not {m.preset!r}")
    elif t.joint_images:
        raise ConfigError("train.joint_images mixes frames into batches of clips: it applies to video data only")
    elif m.preset in video_presets:
        raise ConfigError(f"model {m.preset!r} works on clips; {what} is images (video datasets: "
                          f"{', '.join(VIDEO_DATASETS)}, or a store of `difforge prepare --clip-frames`)")


def validate(cfg: RunConfig) -> RunConfig:
    """Reject impossible values before any work starts."""
    d, m, f, t = cfg.data, cfg.model, cfg.diffusion, cfg.train

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(d.dataset in DATASETS, f"unknown dataset {d.dataset!r}; expected one of {sorted(DATASETS)}")
    need(d.dataset != "folder" or d.path is not None, "dataset 'folder' needs a path (--data PATH)")
    need(d.dataset != "prepared" or d.path is not None, "dataset 'prepared' needs a path (--data STORE_DIR)")
    need(d.dataset != "shards" or d.path is not None, "dataset 'shards' needs a path (--data SHARDS)")
    need(d.channels in (None, 1, 3), f"data.channels must be 1 or 3, got {d.channels}")
    need(d.image_size is None or d.image_size >= 4, f"data.image_size must be >= 4, got {d.image_size}")
    need(0 <= d.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    need(0 <= t.joint_images < 1, f"train.joint_images must be in [0, 1) (some rows must be clips), "
                                  f"got {t.joint_images}")
    need(0 <= m.label_dropout < 1, f"model.label_dropout must be in [0, 1), got {m.label_dropout}")
    need(m.text_encoder in (None, *TEXT_ENCODERS), f"unknown text encoder {m.text_encoder!r}; expected one of "
         f"{list(TEXT_ENCODERS)}")
    need(not (d.hflip and m.text_encoder), "data.hflip mirrors images left-right, which contradicts captions that "
         "name a side (\"top left\"): a text model trains without it")
    need(m.latent is None or m.task == "generate", f"latent diffusion (model.latent) generates; task {m.task!r} "
         "works in pixel space")
    need(not (d.hflip and m.latent), "data.hflip with model.latent: the latents are encoded from the images as "
         "stored; train the autoencoder and the model without it")
    need(m.clip is None or (m.text_encoder is None and m.task == "generate"), "model.clip conditions generation on "
         "CLIP image embeddings (unCLIP's decoder): it takes no --text-encoder and no --task superres")
    need(not (d.hflip and m.clip), "data.hflip with model.clip: the CLIP embeddings are of the images as stored")
    need(m.lora_rank >= 0, f"model.lora_rank must be >= 0 (0: no LoRA), got {m.lora_rank}")
    need(m.lora_rank == 0 or m.init_from is not None, "LoRA (model.lora_rank) adapts a trained model: give it with "
         "--init-from MODEL")
    need(m.lora_alpha is None or m.lora_alpha > 0, f"model.lora_alpha must be > 0, got {m.lora_alpha}")
    need(m.lora_alpha is None or m.lora_rank > 0, "model.lora_alpha is the scale of LoRA adapters: it needs "
         "--lora-rank")
    need(m.init_from is None or m.latent is None, "model.init_from with model.latent: fine-tuning a latent "
         "diffusion model is not supported yet")
    need(0 <= m.caption_dropout < 1, f"model.caption_dropout must be in [0, 1), got {m.caption_dropout}")
    need(2 <= m.max_tokens <= 256, f"model.max_tokens must be in 2..256, got {m.max_tokens}")
    need(f.timesteps >= 2, f"diffusion.timesteps must be >= 2, got {f.timesteps}")
    need(t.precision in PRECISIONS, f"unknown precision {t.precision!r}; expected one of {sorted(PRECISIONS)}")
    need(
        t.lr_schedule in LR_SCHEDULES,
        f"unknown lr schedule {t.lr_schedule!r}; expected one of {sorted(LR_SCHEDULES)}",
    )
    need(t.max_steps is None or t.max_steps >= 1, f"train.max_steps must be >= 1, got {t.max_steps}")
    need(t.epochs is None or t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}")
    need(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    need(1 <= t.grad_accum <= t.batch_size, f"train.grad_accum must be in 1..batch_size ({t.batch_size}), "
         f"got {t.grad_accum}")
    need(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    need(0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    need(t.ema_warmup >= 0, f"train.ema_warmup must be >= 0, got {t.ema_warmup}")
    need(t.grad_clip >= 0, f"train.grad_clip must be >= 0, got {t.grad_clip}")
    need(t.eval_every >= 0, f"train.eval_every must be >= 0, got {t.eval_every}")
    need(t.eval_samples >= 2, f"train.eval_samples must be >= 2, got {t.eval_samples}")
    for k in ("log_every", "sample_every", "checkpoint_every"):
        need(getattr(t, k) >= 0, f"train.{k} must be >= 0, got {getattr(t, k)}")
    need(t.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}")
    from difforge.diffusion.schedules import SCHEDULES
    from difforge.models.registry import PRESETS

    need(f.schedule in SCHEDULES, f"unknown schedule {f.schedule!r}; expected one of {sorted(SCHEDULES)}")
    need(m.preset in PRESETS, f"unknown model {m.preset!r}; expected one of {sorted(PRESETS)}")
    if m.architecture is not None:
        from difforge.models.registry import check_architecture

        try:
            check_architecture(m.preset, m.architecture)
        except ValueError as e:
            raise ConfigError(f"model.architecture: {e}") from None
    if d.dataset != "prepared":  # a store holds images or clips: checked when it is loaded
        check_clips(cfg, d.dataset in VIDEO_DATASETS, f"dataset {d.dataset!r}")
    checkpointable = sorted(name for name, p in PRESETS.items() if hasattr(p.cls, "grad_checkpoint"))
    need(not m.grad_checkpoint or m.preset in checkpointable, f"model {m.preset!r} does not support "
         f"model.grad_checkpoint; these do: {checkpointable}")
    need(m.task in ("generate", "superres"), f"unknown task {m.task!r}; expected one of ['generate', 'superres']")
    need(m.task != "superres" or m.scale >= 2, f"model.scale must be >= 2 for super-resolution, got {m.scale}")
    from difforge.diffusion.frameworks import FrameworkSpec, check_framework

    try:
        check_framework(FrameworkSpec.from_dict(dataclasses.asdict(f)), f.prediction)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg
