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


# ---------------------------------------------------------------- push

# What a model folder holds that belongs on the Hub: an exported difforge model (config.json,
# model.safetensors, autoencoder.safetensors for latent models) or a diffusers export
# (model_index.json, unet/, scheduler/, difforge.json), and its README.md model card.
# Anything else in the folder (the user's notes, an eval/ report) stays local.
PUSHED_FILES = ("README.md", "config.json", "model.safetensors", "autoencoder.safetensors", "model_index.json",
                "difforge.json")
PUSHED_FOLDERS = ("unet", "scheduler")


def push_files(model_dir: str | Path) -> list[str]:
    """The files of the model folder `model_dir` that `push_model` uploads, relative and
    sorted; ValueError (one line) when it is no exported model or has no model card."""
    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"no such model directory: {path}")
    difforge_model = (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    diffusers_model = (path / "model_index.json").is_file() and (path / "unet").is_dir()
    if not (difforge_model or diffusers_model):
        hint = (f"; export it first: difforge export {path} --out DIR" if (path / "model.json").is_file()
                else " (config.json + model.safetensors, or a diffusers export)")
        raise ValueError(f"{path} is not an exported model{hint}")
    if not (path / "README.md").is_file():
        raise ValueError(f"{path} has no README.md model card; export it again with difforge export --overwrite")
    files = [name for name in PUSHED_FILES if (path / name).is_file()]
    for folder in PUSHED_FOLDERS:
        files += [p.relative_to(path).as_posix() for p in (path / folder).rglob("*") if p.is_file()] \
            if (path / folder).is_dir() else []
    return sorted(files)


def _token() -> str | None:
    """The token huggingface_hub would use (HF_TOKEN, or the one `hf auth login` saved)."""
    try:
        from huggingface_hub import get_token
    except ImportError:  # huggingface_hub < 0.24
        from huggingface_hub import HfFolder

        return HfFolder.get_token()
    return get_token()


def push_model(model_dir: str | Path, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Upload an exported model folder (`push_files`) to the Hub model repository `repo_id`
    (created when missing) in one commit with huggingface_hub's `upload_folder`; returns
    the repository's URL. Everything is checked before the network is used: the id, the
    folder, huggingface_hub, a token, and that the Hub is not switched off (HF_HUB_OFFLINE)."""
    if not looks_like_hub_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub model id (OWNER/NAME)")
    files = push_files(model_dir)
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise ImportError("difforge push needs huggingface_hub: pip install 'difforge[interop]'") from None
    if constants.HF_HUB_OFFLINE:
        raise ValueError("HF_HUB_OFFLINE is set: pushing to the Hub needs the network")
    token = _token()
    if not token:
        raise ValueError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (a token with write "
                         "access)")
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(model_dir), allow_patterns=files,
                          commit_message=message or f"Upload a difforge model ({len(files)} files)")
    except OSError as e:  # HfHubHTTPError (401, 403, 404...) and network errors are OSErrors
        raise ValueError(f"push to {repo_id} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    return f"{constants.ENDPOINT}/{repo_id}"
