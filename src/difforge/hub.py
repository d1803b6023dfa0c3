"""The Hugging Face Hub: models by id from the local cache, and the README model card.

`resolve_model_dir("owner/name")` finds a model downloaded with `hf download
owner/name` (or any `huggingface_hub` download) in the local Hub cache (`HF_HUB_CACHE`,
default `$HF_HOME/hub`) and returns its snapshot folder; an existing path is returned as it
is. difforge never downloads by itself: a model is fetched once, explicitly, and used
offline from then on. `huggingface_hub` is optional (`pip install 'difforge[interop]'`).

`model_readme(card, ...)` writes the README.md an exported model carries: YAML metadata
the Hub indexes (library, tags, dataset) and a short description of the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from difforge.models.card import ModelCard

# owner/name as the Hub spells repository ids (one slash; letters, digits, - _ .)
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_hub_id(value: str | Path) -> bool:
    return isinstance(value, str) and bool(HUB_ID.match(value)) and ".." not in value


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of Hub model `repo_id` (its `main` revision), or None when
    it is not in the cache or `huggingface_hub` is not installed. Never downloads."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), an id the Hub rejects (HFValidationError)
        return None


def resolve_model_dir(path: str | Path) -> Path:
    """`path` when it exists; else, for an `owner/name` id, the model's folder in the
    local Hugging Face cache; else `path` (the caller reports it missing)."""
    p = Path(path)
    if p.exists() or not looks_like_hub_id(str(path)):
        return p
    return cached_snapshot(str(path)) or p


def is_hub_model(path: str | Path) -> bool:
    """Whether `path` names a Hub model from the cache rather than a local path."""
    return not Path(path).exists() and resolve_model_dir(path) != Path(path)


def not_found(path: str | Path) -> str:
    """The one-line reason a model path resolved to nothing."""
    if looks_like_hub_id(str(path)):
        return (f"no such run or model directory: {path} (nor a Hugging Face Hub model in the local cache; "
                f"download it first: hf download {path})")
    return f"no such run or model directory: {path}"


# ---------------------------------------------------------------- README.md

FRAMEWORK_NAMES = {"ddpm": "DDPM (Ho et al. 2020)", "ncsn": "NCSN (Song & Ermon 2019)",
                   "vp-sde": "VP SDE (Song et al. 2021)", "subvp-sde": "sub-VP SDE (Song et al. 2021)",
                   "ve-sde": "VE SDE (Song et al. 2021)", "edm": "EDM (Karras et al. 2022)"}


def readme_metadata(card: ModelCard, library: str = "difforge") -> dict:
    """The Hub metadata of a model: library, pipeline tag, tags, dataset."""
    tags = ["difforge", "diffusion", card.framework, card.architecture.preset]
    if library != "difforge":
        tags.append(library)
    if card.num_classes:
        tags.append("class-conditional")
    pipeline_tag = "image-to-image" if card.task == "superres" else "unconditional-image-generation"
    meta = {"library_name": library, "pipeline_tag": pipeline_tag, "tags": tags}
    if card.dataset:
        meta["datasets"] = [card.dataset]
    return meta


def model_readme(card: ModelCard, *, library: str = "difforge", title: str | None = None) -> str:
    """README.md for an exported model: YAML front matter (values written as JSON, which
    YAML reads as they are) and a description of the model and how to use it."""
    meta = readme_metadata(card, library)
    front = "\n".join(f"{k}: {json.dumps(v)}" for k, v in meta.items())
    d = card.diffusion
    schedule = f"{d.schedule} beta schedule, {d.timesteps} timesteps" if card.framework == "ddpm" else \
        f"{d.timesteps} noise levels"
    classes = "unconditional" if not card.num_classes else f"{card.num_classes} classes" + (
        f" ({', '.join(card.class_names)})" if card.class_names else "")
    rows = [("framework", f"{FRAMEWORK_NAMES.get(card.framework, card.framework)}, {schedule}"),
            ("prediction", card.prediction), ("network", f"difforge preset `{card.architecture.preset}`"),
            ("images", f"{card.channels} channel(s), {card.native_size}x{card.native_size}"),
            ("conditioning", classes)]
    if card.dataset:
        rows.append(("dataset", card.dataset))
    if card.source is not None:
        rows.append(("fine-tuned from", f"`{card.source.path}` ({card.source.weights}, sha256 "
                                        f"{card.source.sha256[:12]})"))
    if card.lora is not None:
        rows.append(("LoRA adapter", f"rank {card.lora.rank}, alpha {card.lora.alpha:g}; needs the base model above"))
    if card.step is not None:
        rows.append(("training steps", f"{card.step} ({card.weights or 'ema'} weights)"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if library == "diffusers":
        use = ("```python\nfrom diffusers import DDPMPipeline\n\npipe = DDPMPipeline.from_pretrained(\"OWNER/NAME\")\n"
               "images = pipe(batch_size=4).images\n```\n\n"
               "or with difforge: `difforge import OWNER/NAME --out model`, then `difforge sample model`.")
        if card.num_classes:
            use += (f"\n\nThe UNet is class-conditional: pass `class_labels` 0..{card.num_classes - 1} to "
                    "`UNet2DModel`" + (f"; label {card.num_classes} is the null class of classifier-free guidance."
                                       if card.conditioning.has_null else "."))
    else:
        use = ("```bash\nhf download OWNER/NAME   # once; difforge reads the local cache\n"
               "difforge sample OWNER/NAME --out samples.png\n```\n\nEvery command that takes a model directory "
               "takes the Hub id as well (`serve`, `evaluate`, `inpaint`, ...).")
    return (f"---\n{front}\n---\n\n# {title or 'A difforge diffusion model'}\n\n"
            f"| | |\n|---|---|\n{table}\n\n## Use\n\n{use}\n")
