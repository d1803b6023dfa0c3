"""Fine-tuning: a run that starts from a trained model (`train --init-from MODEL`), in
full or with LoRA adapters on the frozen model (`--lora-rank R`).

The new run takes the source model's architecture, framework and conditioning from its
card (`source_settings` gives them to the config, under whatever the user sets);
`adopt` refuses a run whose settings or data contradict the source, allowing only a
different number of classes (the label embedding is then re-initialised). The weights
come from the source (`init_network`), the optimiser starts fresh at step 0 and the EMA
starts from the source's weights. The run's card records the source (path, weights file,
SHA-256); a LoRA run's checkpoints hold only the adapter, and its base is loaded, and
its hash checked, whenever the run is resumed or sampled.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from difforge.config import ConfigError, RunConfig
from difforge.models.card import ModelCard, Source
from difforge.models.conditioning import ClassLabels, LowResImage, TextPrompts, Unconditional


def load_source(path: str) -> tuple[ModelCard, Source]:
    """The source model's card and a `Source` naming its weights (EMA for a run) and hash."""
    from difforge.model_files import ModelLoadError, model_source

    try:
        card, source = model_source(path)
    except ModelLoadError as e:
        raise ConfigError(f"--init-from: {e}") from None
    if card.latent:
        raise ConfigError(f"--init-from {path}: fine-tuning a latent diffusion model is not supported yet")
    return card, source


def source_settings(card: ModelCard) -> dict[str, Any]:
    """The config (nested, as `config_from_dict` takes it) a fine-tuning run of `card` takes
    unless told otherwise: its network, framework, prediction, conditioning, image size."""
    c = card.conditioning
    model: dict[str, Any] = {"preset": card.architecture.preset, "task": c.task,
                             "conditional": not isinstance(c, Unconditional), "text_encoder": None}
    if isinstance(c, LowResImage):
        model["scale"] = c.scale
    if isinstance(c, TextPrompts):
        model.update(text_encoder=c.encoder, max_tokens=c.max_tokens)
    if isinstance(c, ClassLabels) and not c.has_null:
        model["label_dropout"] = 0.0  # no null class was learned: no label dropout
    diffusion = {**card.diffusion.to_dict(), "prediction": card.prediction}
    return {"model": model, "diffusion": diffusion, "data": {"image_size": card.image_size}}


def adopt(card: ModelCard, source_card: ModelCard, source: Source, cfg: RunConfig, say=print) -> ModelCard:
    """The fine-tuning run's card: `card` (as the config and data describe the run) checked
    against the source's and given its architecture, `source` and (with a LoRA rank) the
    adapter spec. ConfigError, one line, for anything that contradicts the source."""
    path = cfg.model.init_from

    def need(ok: bool, what: str, theirs: Any, ours: Any, hint: str) -> None:
        if not ok:
            raise ConfigError(f"--init-from {path}: the model's {what} is {theirs}, this run's {ours} ({hint}); "
                              "a fine-tuned model keeps its source's")

    need(card.architecture.preset == source_card.architecture.preset, "network", source_card.architecture.preset,
         card.architecture.preset, "--model")
    need(card.image_size == source_card.image_size, "image size", source_card.image_size, card.image_size,
         "--image-size")
    need(card.channels == source_card.channels, "number of channels", source_card.channels, card.channels,
         "the data's: --set data.channels=N converts an image folder")
    theirs, ours = dataclasses.replace(source_card.diffusion, min_snr_gamma=None), \
        dataclasses.replace(card.diffusion, min_snr_gamma=None)
    for f in dataclasses.fields(theirs):
        need(getattr(theirs, f.name) == getattr(ours, f.name), f"diffusion.{f.name}", getattr(theirs, f.name),
             getattr(ours, f.name), "--framework, --schedule, --set diffusion.*")
    need(card.prediction == source_card.prediction, "prediction", source_card.prediction, card.prediction,
         "--prediction")
    sc, c = source_card.conditioning, card.conditioning
    need(sc.kind == c.kind, "conditioning", sc.kind, c.kind,
         "--conditional/--unconditional, --text-encoder, --task, or data with or without labels")
    kwargs = dict(source_card.architecture.kwargs)
    conditioning = sc
    if isinstance(sc, ClassLabels) and sc.num_classes != c.num_classes:
        say(f"fine-tuning: the source has {sc.num_classes} classes, this data {c.num_classes}: the label embedding "
            "is re-initialised (the rest of the network starts from the source)")
        conditioning = c
        kwargs.pop("num_class_embeds", None)  # diffusers-unet: its table is sized by the new classes
    elif not isinstance(sc, ClassLabels):
        need(sc == c, "conditioning", sc.to_dict(), c.to_dict(), "--scale, --text-encoder, --set model.max_tokens")
    class_names = card.class_names if conditioning is c else (card.class_names or source_card.class_names)
    out = dataclasses.replace(card, architecture=dataclasses.replace(source_card.architecture, kwargs=kwargs),
                              conditioning=conditioning, class_names=class_names, prompts=card.prompts or
                              source_card.prompts, source=source)
    if cfg.model.lora_rank:
        from difforge.models.lora import LoraSpec, target_modules

        net = out.build_network()
        relabelled = conditioning is not sc
        modules = tuple(name for name, m in net.named_modules() if isinstance(m, nn.Embedding)) if relabelled else ()
        out = dataclasses.replace(out, lora=LoraSpec(cfg.model.lora_rank, cfg.model.lora_alpha or cfg.model.lora_rank,
                                                     tuple(target_modules(net)), modules))
    return out


def init_network(card: ModelCard, say=print) -> nn.Module:
    """The run's network at step 0: the source's weights (a re-initialised label embedding
    where the class count differs) and, for a LoRA run, the adapters (B = 0) on them."""
    from difforge.model_files import ModelLoadError, base_network

    try:
        net, kept = base_network(card)
    except ModelLoadError as e:
        raise ConfigError(f"--init-from: {e}") from None
    if card.lora is not None:
        from difforge.models.lora import add_adapters

        try:
            add_adapters(net, card.lora)
        except ValueError as e:
            raise ConfigError(f"--lora-rank: {e}") from None
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        total = sum(p.numel() for p in net.parameters())
        say(f"LoRA rank {card.lora.rank} (alpha {card.lora.alpha:g}) on {len(card.lora.targets)} layers: "
            f"{trainable:,} of {total:,} parameters train" + (f" (with {', '.join(card.lora.modules)})"
                                                              if card.lora.modules else ""))
    src = card.source
    say(f"fine-tuning from {src.path} ({src.weights}, sha256 {src.sha256[:12]}"
        + (f", step {src.step}" if src.step is not None else "") + ")"
        + (f"; {len(kept)} tensor(s) re-initialised" if kept else ""))
    return net
