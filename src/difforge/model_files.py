"""Model files: what a run directory or an exported model directory holds, read and written.

A model directory is `model.safetensors` (or a LoRA model's `adapter.safetensors`) +
`config.json` (its `ModelCard`), with the autoencoder of a latent model and the CLIP of an
unCLIP decoder beside it; a run directory has `model.json` and checkpoints. Reading needs
only `difforge.models` (no training code); `difforge.pipeline.load_pipeline` builds a
`Pipeline` from what this module loads, and `export_model` writes a model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from difforge.hub import model_readme, not_found, resolve_model_dir
from difforge.models.card import ModelCard, Source


class ModelLoadError(ValueError):
    """A run or model directory that cannot be loaded."""




ADAPTER_FILE = "adapter.safetensors"  # a LoRA model's exported adapter, beside its config.json


def card_and_weights(path: Path, ema: bool) -> tuple[ModelCard, Path]:
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        card_file, weights = path / "config.json", path / "model.safetensors"
    elif (path / "config.json").is_file() and (path / ADAPTER_FILE).is_file():
        card_file, weights = path / "config.json", path / ADAPTER_FILE
    elif (path / "model.json").is_file():
        from difforge.runs import find_resumable, weights_file  # reads files only

        card_file = path / "model.json"
        ckpt, problems = find_resumable(path / "checkpoints")
        if ckpt is None:
            detail = f" ({'; '.join(problems)})" if problems else ""
            raise ModelLoadError(f"{path} has no valid checkpoint yet{detail}")
        weights = weights_file(ckpt, ema)
    else:
        raise ModelLoadError(f"{path} is neither a run directory (model.json) "
                             "nor a model directory (config.json + model.safetensors)")
    try:
        return ModelCard.load(card_file), weights
    except ValueError as e:
        raise ModelLoadError(f"{card_file}: {e}") from None


def load_network(card: ModelCard, weights: Path) -> nn.Module:
    """The network of `card` with the weights in `weights`; a LoRA model's adapter applied
    to its base (checked against the recorded hash) and folded into the weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(weights)
        if card.lora is None:
            net = card.build_network()
            net.load_state_dict(state)
            return net
    except (RuntimeError, OSError, ValueError, SafetensorError) as e:  # SafetensorError: a corrupt file
        raise ModelLoadError(f"cannot load weights {weights}: {str(e).splitlines()[0]}") from None
    from difforge.models.lora import add_adapters, load_adapter_state, merge_adapters

    net, _ = base_network(card)
    try:
        add_adapters(net, card.lora)
        load_adapter_state(net, card.lora, state)
    except ValueError as e:
        raise ModelLoadError(f"cannot load the adapter {weights}: {e}") from None
    return merge_adapters(net)


def model_source(path: str | Path, ema: bool = True) -> tuple[ModelCard, Source]:
    """The card of the model at `path` (a run: its newest valid checkpoint; a model
    directory; a Hub id in the local cache) and a `Source` naming its weights file and hash:
    what `train --init-from` starts from."""
    from difforge.hub import is_hub_model
    from difforge.runs import sha256_file

    given, folder = path, resolve_model_dir(path)
    if not folder.is_dir():
        raise ModelLoadError(not_found(given))
    card, weights = card_and_weights(folder, ema)
    step = card.step
    if step is None and (weights.parent / "meta.json").is_file():
        step = json.loads((weights.parent / "meta.json").read_text()).get("step")
    where = str(given) if is_hub_model(given) else str(folder.resolve())
    return card, Source(where, weights.relative_to(folder).as_posix(), sha256_file(weights), step)


def source_weights(source: Source) -> tuple[ModelCard, nn.Module]:
    """The card and network (weights loaded) that `source` names, after checking that the
    weights file is still the one recorded (one-line errors: gone, or changed)."""
    from difforge.runs import sha256_file

    folder = resolve_model_dir(source.path)
    weights = folder / source.weights
    if not weights.is_file():
        raise ModelLoadError(f"the base model's weights {source.path}/{source.weights} are gone; this LoRA model "
                             "needs them (restore the base model, or export this one merged while you have it)")
    if sha256_file(weights) != source.sha256:
        raise ModelLoadError(f"the base model changed: {weights} does not match the SHA-256 recorded when the "
                             f"adapter was trained ({source.sha256[:12]}...); an adapter only fits its own base")
    card_file = folder / "config.json" if (folder / "config.json").is_file() else folder / "model.json"
    try:
        card = ModelCard.load(card_file)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{card_file}: {e}") from None
    return card, load_network(card, weights)


def base_network(card: ModelCard) -> tuple[nn.Module, list[str]]:
    """A new network of `card` holding the weights of its `source` (hash checked), and the
    names of the tensors that kept their initialisation: a class-label embedding whose
    number of classes differs from the source's (ModelLoadError for any other mismatch)."""
    _, source_net = source_weights(card.source)
    net = card.build_network()
    return net, load_matching(net, source_net.state_dict(), card.source.path)


def load_matching(net: nn.Module, state: dict[str, torch.Tensor], where: str) -> list[str]:
    """Load `state` into `net` where the shapes agree; the tensors left at their
    initialisation must be embedding tables (class labels): their names are returned."""
    own = net.state_dict()
    modules = dict(net.named_modules())
    if set(own) != set(state):
        key = sorted(set(own) ^ set(state))[0]
        raise ModelLoadError(f"{where}: its network differs from this one ({key!r} is in only one of them)")
    kept = [k for k in own if own[k].shape != state[k].shape]
    for k in kept:
        if not isinstance(modules.get(k.rpartition(".")[0]), nn.Embedding):
            raise ModelLoadError(f"{where}: {k} is {tuple(state[k].shape)} there and {tuple(own[k].shape)} here")
    net.load_state_dict({k: v if k not in kept else own[k] for k, v in state.items()})
    return kept


def clip_beside(path: Path, card: ModelCard, device):
    """An unCLIP decoder's domain CLIP, from the `clip/` folder beside its card."""
    from difforge.models.clip import CARRIED, load_clip

    if card.conditioning.kind != "clip-image-embedding":
        return None
    try:
        return load_clip(path / CARRIED, device)
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is an unCLIP decoder without its CLIP model ({CARRIED}/)") from None
    except ValueError as e:
        raise ModelLoadError(str(e)) from None


def autoencoder_beside(path: Path, card: ModelCard) -> nn.Module | None:
    """A latent model's autoencoder, from `autoencoder.safetensors` beside its card."""
    from difforge.models.autoencoder import WEIGHTS_FILE, load_weights

    if card.autoencoder is None:
        return None
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{path} is a latent diffusion model without its autoencoder ({WEIGHTS_FILE})")
    try:
        return load_weights(card.autoencoder, weights)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None


def is_model_dir(path: str | Path) -> bool:
    """Whether `path` holds an exported model (config.json + model.safetensors, or a LoRA
    adapter's adapter.safetensors)."""
    p = Path(path)
    return (p / "config.json").is_file() and ((p / "model.safetensors").is_file() or (p / ADAPTER_FILE).is_file())


LORA_EXPORTS = ("merged", "adapter")


def export_model(run_dir: str | Path, out: str | Path, ema: bool = True, overwrite: bool = False,
                 lora: str | None = None) -> Path:
    """Write `out/model.safetensors` + `out/config.json` (and a Hub README.md) from a run's
    newest checkpoint. A LoRA run exports `lora="merged"` (the default: a plain model, the
    adapter folded into the weights) or `"adapter"` (`adapter.safetensors` and a card that
    names the base model and its hash).

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
        raise ModelLoadError(f"{run_dir} has no valid checkpoint to export"
                             + (f" ({'; '.join(problems)})" if problems else ""))
    try:
        card = ModelCard.load(run_dir / "model.json")
    except ValueError as e:
        raise ModelLoadError(f"{run_dir / 'model.json'}: {e}") from None
    if lora is not None and lora not in LORA_EXPORTS:
        raise ModelLoadError(f"unknown LoRA export {lora!r}; expected one of {list(LORA_EXPORTS)}")
    if lora is not None and card.lora is None:
        raise ModelLoadError(f"{run_dir} is not a LoRA run: it exports as a whole model, without --lora")
    step = int(json.loads((ckpt / "meta.json").read_text())["step"])
    if card.lora is not None and lora != "adapter":  # merged: the base with the adapter folded in
        from safetensors.torch import save_file

        net = load_network(card, weights_file(ckpt, ema))
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, out / "model.safetensors")
        card = card.merged()
    else:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights_file(ckpt, ema), out / (ADAPTER_FILE if card.lora else "model.safetensors"))
    if card.latent:  # the autoencoder travels with the model
        from difforge.models.autoencoder import WEIGHTS_FILE

        if not (run_dir / WEIGHTS_FILE).is_file():
            raise ModelLoadError(f"{run_dir} is a latent diffusion run without its autoencoder ({WEIGHTS_FILE})")
        shutil.copyfile(run_dir / WEIGHTS_FILE, out / WEIGHTS_FILE)
    if card.conditioning.kind == "clip-image-embedding":  # so does an unCLIP decoder's CLIP
        from difforge.models.clip import CARRIED, copy_clip

        copy_clip(run_dir / CARRIED, out / CARRIED)
    card = card.exported(step, "ema" if ema else "raw")
    card.save(out / "config.json")
    (out / "README.md").write_text(model_readme(card, title=run_dir.resolve().name))
    return out
