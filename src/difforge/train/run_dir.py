"""The run directory before training: which config a run uses (a resumed run's own
config.yaml, its length changed when asked) and what is written once every check has
passed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from difforge.config import (
    ConfigError,
    RunConfig,
    config_to_dict,
    load_config,
    save_config,
)
from difforge.diffusion.frameworks import FrameworkSpec
from difforge.models.card import Architecture, ModelCard
from difforge.models.conditioning import (
    ClassLabels,
    CLIPImageEmbedding,
    LowResImage,
    TextLowResImage,
    TextPrompts,
    Unconditional,
    VideoFrames,
)
from difforge.models.registry import architecture_kwargs
from difforge.runs import is_run_dir, step_dirs
from difforge.train.checkpoint import clean_stale


def resolve_run(cfg: RunConfig, resume: bool, length: dict | None = None) -> tuple[RunConfig, Path]:
    """The config to train with (a resumed run's own config.yaml, its length changed by
    `length`: max_steps / epochs); writes nothing."""
    from difforge.io.outputs import OutputError, check_output_dir

    run_dir = Path(cfg.out)
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"cannot resume: {run_dir} has no config.yaml (no run there yet)")
        cfg = load_config(saved)
        if length:
            changed = {k: v for k, v in length.items() if v is not None}
            if "epochs" in changed and "max_steps" not in changed:
                changed["max_steps"] = None  # --epochs alone sets the length: max_steps would win over it
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changed))
        return cfg, run_dir
    try:
        check_output_dir(run_dir, holds="run", is_ours=is_run_dir, allow_ours=True)
    except OutputError as e:
        raise ConfigError(str(e)) from None
    if step_dirs(run_dir / "checkpoints"):
        raise ConfigError(
            f"{run_dir} already holds a run with checkpoints; pass --resume to continue it or choose another --out"
        )
    return cfg, run_dir


def create_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, card, skipped: list, autoencoder=None,
                   clip_dir: str | None = None) -> None:
    """Write config.yaml (new, or a resumed run with a new length), the model card, a latent
    run's autoencoder weights and the list of skipped files; remove what an interrupted
    checkpoint write left. Rank 0 only."""
    if not resume:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    if not resume or load_config(run_dir / "config.yaml") != cfg:
        save_config(cfg, run_dir / "config.yaml")
    for name in clean_stale(run_dir / "checkpoints"):
        print(f"removed {name}: an incomplete checkpoint left by an interrupted write")
    if skipped:
        report = run_dir / "skipped_files.txt"
        report.write_text("".join(f"{path}\t{reason}\n" for path, reason in skipped))
        print(f"warning: skipped {len(skipped)} unusable file(s); list in {report}")
    if autoencoder is not None:  # beside the card that describes it, as in an exported model
        from difforge.models.autoencoder import WEIGHTS_FILE, save_weights

        save_weights(autoencoder, run_dir / WEIGHTS_FILE)
    if clip_dir is not None:  # an unCLIP decoder carries its CLIP (image embeddings of variations, the prior's text)
        from difforge.models.clip import CARRIED, copy_clip

        copy_clip(clip_dir, run_dir / CARRIED)
    card.save(run_dir / "model.json")


def example_prompts(ds, n: int = 10) -> list[str]:
    """A text model's example prompts: the built-in set's designed ones, else the first `n`
    distinct captions of `ds`."""
    if ds.name == "fashion-colour":
        from difforge.data.fashion_colour import example_prompts as designed

        return designed()
    return list(dict.fromkeys(ds.captions))[:n]


def model_card(cfg: RunConfig, bundle, image_size: int, num_classes: int | None, autoencoder=None,
               clip=None) -> ModelCard:
    """What a sampler needs to rebuild the model: written as model.json / config.json.
    ValueError for a super-resolution scale the data's size does not allow. With an
    `autoencoder` (its card) the model is a latent one: its channels are the latents'."""
    prompts = None
    if cfg.model.task == "superres":
        conditioning = LowResImage(cfg.model.scale)
        if cfg.model.text_encoder is not None:  # Imagen's super-resolution stages: the caption too
            conditioning = TextLowResImage(cfg.model.scale, cfg.model.text_encoder, cfg.model.max_tokens)
            prompts = example_prompts(bundle.val if bundle.val is not None and len(bundle.val) else bundle.train)
        conditioning.check(bundle.native_size, image_size)
    elif clip is not None:  # (dim, fingerprint) of the CLIP whose image embeddings condition the model
        conditioning = CLIPImageEmbedding(clip[0], clip=clip[1])
    elif getattr(bundle.train, "frames", None) is not None:  # clips: observed frames, and classes when labelled
        conditioning = VideoFrames(bundle.train.frames, num_classes or None)
    elif cfg.model.text_encoder is not None:
        conditioning = TextPrompts(cfg.model.text_encoder, cfg.model.max_tokens)
        prompts = example_prompts(bundle.val if bundle.val is not None and len(bundle.val) else bundle.train)
    elif num_classes:
        conditioning = ClassLabels(num_classes)
    else:
        conditioning = Unconditional()
    channels = autoencoder.latent_channels if autoencoder is not None else bundle.channels
    diffusion = config_to_dict(cfg)["diffusion"]
    if autoencoder is not None and diffusion["framework"] == "edm" and diffusion.get("sigma_data") is None:
        diffusion["sigma_data"] = 1.0  # the latents are scaled to unit variance (the autoencoder's latent scale)
    return ModelCard(Architecture(cfg.model.preset, architecture_kwargs(cfg.model.preset, cfg.model.architecture)),
                     image_size, bundle.native_size, channels,
                     FrameworkSpec.from_dict(diffusion), cfg.diffusion.prediction,
                     conditioning, bundle.class_names if num_classes else None, cfg.data.dataset, prompts=prompts,
                     autoencoder=autoencoder)
