"""Text conditioning: the batch of prompts the network sees (`TextCond`), the conditioner
protocol that makes it from strings (`TextConditioner`), and the dependency-free
"scratch" text path: a byte-level tokenizer (`ByteTokenizer`, `ScratchConditioner`) and
a small transformer trained from scratch together with the diffusion model
(`ScratchTextEncoder`), as GLIDE does (Nichol et al. 2022, "GLIDE: towards photorealistic
image generation and editing with text-guided diffusion models", Section 2.3 and
Appendix: the caption is encoded by a transformer trained jointly with the UNet; its
token embeddings feed the attention layers and its final token replaces the class
embedding).

A frozen pretrained encoder (Imagen's frozen T5, Saharia et al. 2022; Stable Diffusion's
frozen CLIP, Rombach et al. 2022) is the other path: its conditioner computes `emb` and
`pooled` outside the network (`difforge.models.minilm`), and `TextCond` carries those
instead of token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from difforge.models.layers import masked_attention

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = 3  # byte b has id b + BYTE_OFFSET
VOCAB_SIZE = 256 + BYTE_OFFSET


def _pad_to(t: torch.Tensor | None, length: int, value: float | int | bool) -> torch.Tensor | None:
    """`t` (B, L, ...) padded along dim 1 to `length` with `value`."""
    if t is None or t.shape[1] == length:
        return t
    pad = [0, 0] * (t.ndim - 2) + [0, length - t.shape[1]]
    return F.pad(t, pad, value=value)


def _rows(index, n: int):
    """A batch index that keeps the batch dimension (a Python int selects one row as a batch of 1)."""
    if isinstance(index, int):
        if not -n <= index < n:
            raise IndexError(f"row {index} out of range for a batch of {n}")
        index = index % n
        return slice(index, index + 1)
    return index


@dataclass(frozen=True, eq=False)
class TextCond:
    """A batch of encoded or tokenised prompts, the `cond` of a text-conditioned network.

    `mask` (B, L) bool: True at real tokens (never all False: BOS / CLS is always real);
    `ids` (B, L) int64 token ids, which a trainable encoder inside the network encodes
    (the scratch path); `emb` (B, L, D) token embeddings and `pooled` (B, P) the pooled
    embedding of a frozen encoder, computed outside the network. Padding positions carry
    id `PAD_ID` (0) and embedding 0, and no layer attends to them.

    It behaves as a batch wherever samplers, guidance and the pipeline move one: `len`,
    indexing (slice, int / bool tensor; a Python int gives a batch of one row), `to`,
    `cat` along the batch and `where` (row-wise choice, e.g. caption dropout).
    """

    mask: torch.Tensor
    ids: torch.Tensor | None = None
    emb: torch.Tensor | None = None
    pooled: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != torch.bool:
            raise ValueError(f"TextCond.mask must be (B, L) bool, got {tuple(self.mask.shape)} {self.mask.dtype}")
        if self.ids is None and self.emb is None:
            raise ValueError("TextCond needs token ids (a trainable encoder) or emb (a frozen one)")
        b, length = self.mask.shape
        if self.ids is not None and tuple(self.ids.shape) != (b, length):
            raise ValueError(f"TextCond.ids must be {(b, length)} as the mask, got {tuple(self.ids.shape)}")
        if self.emb is not None and (self.emb.ndim != 3 or tuple(self.emb.shape[:2]) != (b, length)):
            raise ValueError(f"TextCond.emb must be ({b}, {length}, D) as the mask, got {tuple(self.emb.shape)}")
        if self.pooled is not None and (self.pooled.ndim != 2 or self.pooled.shape[0] != b):
            raise ValueError(f"TextCond.pooled must be ({b}, P), got {tuple(self.pooled.shape)}")

    def _fields(self) -> dict[str, torch.Tensor | None]:
        return {"mask": self.mask, "ids": self.ids, "emb": self.emb, "pooled": self.pooled}

    def _map(self, fn) -> TextCond:
        return TextCond(**{k: None if v is None else fn(v) for k, v in self._fields().items()})

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def __getitem__(self, index) -> TextCond:
        """Rows `index` (slice, int / bool tensor, or an int: one row as a batch of 1) of every field."""
        index = _rows(index, len(self))
        if isinstance(index, torch.Tensor):
            index = index.to(self.device)
        return self._map(lambda t: t[index])

    def to(self, device: torch.device | str | None) -> TextCond:
        """The same batch on `device` (the tensors' dtypes unchanged)."""
        return self._map(lambda t: t.to(device))

    @staticmethod
    def cat(items: Sequence[TextCond]) -> TextCond:
        """One batch of `items` in order; L is padded to the longest (mask False, ids 0, emb 0)."""
        items = list(items)
        if not items:
            raise ValueError("TextCond.cat needs at least one batch")
        present = [tuple(v is not None for v in c._fields().values()) for c in items]
        if len(set(present)) > 1:
            raise ValueError("TextCond.cat: the batches carry different fields (ids / emb / pooled)")
        length = max(c.mask.shape[1] for c in items)
        fields = {}
        for name, value in (("mask", False), ("ids", PAD_ID), ("emb", 0.0), ("pooled", None)):
            parts = [getattr(c, name) for c in items]
            if parts[0] is None:
                fields[name] = None
                continue
            if value is not None:
                parts = [_pad_to(p, length, value) for p in parts]
            fields[name] = torch.cat([p.to(parts[0].device) for p in parts])
        return TextCond(**fields)

    def where(self, keep: torch.Tensor, other: TextCond) -> TextCond:
        """Row i of self where keep[i], else row i of `other` (B rows, or 1 row broadcast);
        L is padded to the longer of the two."""
        b = len(self)
        keep = keep.to(self.device, torch.bool)
        if keep.shape != (b,):
            raise ValueError(f"keep must be ({b},) bool, got {tuple(keep.shape)}")
        other = _broadcast(other.to(self.device), b)
        both = TextCond.cat([self, other])  # pads both to one L
        pick = torch.where(keep, torch.arange(b, device=self.device), torch.arange(b, 2 * b, device=self.device))
        return both[pick]


def _broadcast(cond: TextCond, n: int) -> TextCond:
    if len(cond) == n:
        return cond
    if len(cond) == 1:
        return cond[torch.zeros(n, dtype=torch.long, device=cond.device)]
    raise ValueError(f"a TextCond of {len(cond)} rows cannot stand for {n}: give {n} rows or 1")


class TextConditioner(Protocol):
    """Prompts -> TextCond; lives outside the network's state_dict.

    `name` ("scratch" | "minilm"), `max_tokens` (the longest prompt in tokens, BOS and EOS
    included), `context_dim` (D of the token embeddings the UNet cross-attends to) and
    `pooled_dim` (P). A prompt longer than `max_tokens` is a ValueError naming its token
    count and the limit, unless the conditioner was made with `truncate=True`.
    """

    name: str
    max_tokens: int
    context_dim: int
    pooled_dim: int

    def __call__(self, prompts: Sequence[str], device: torch.device | str | None = None) -> TextCond: ...


# ---------------------------------------------------------------- the byte-level tokenizer


class ByteTokenizer:
    """UTF-8 bytes as tokens: BOS, one id per byte (byte + BYTE_OFFSET), EOS; PAD fills.

    No vocabulary file and no dependency; every string encodes, and `decode(encode(s)) == s`.
    `max_tokens` counts BOS and EOS. A longer prompt is a one-line ValueError, or with
    `truncate` its bytes are cut (at a character boundary) to fit.
    """

    def __init__(self, max_tokens: int, truncate: bool = False):
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2 (BOS and EOS), got {max_tokens}")
        self.max_tokens = int(max_tokens)
        self.truncate = bool(truncate)

    def encode(self, prompt: str) -> list[int]:
        raw = prompt.encode("utf-8")
        n = len(raw) + 2
        if n > self.max_tokens:
            if not self.truncate:
                shown = prompt if len(prompt) <= 40 else prompt[:40] + "..."
                raise ValueError(f"prompt {shown!r} is {n} tokens (UTF-8 bytes + BOS/EOS), over the limit of "
                                 f"{self.max_tokens}; shorten it")
            raw = raw[: self.max_tokens - 2].decode("utf-8", errors="ignore").encode("utf-8")
        return [BOS_ID, *(b + BYTE_OFFSET for b in raw), EOS_ID]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of one row of ids (BOS, EOS and PAD dropped)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return bytes(i - BYTE_OFFSET for i in ids if i >= BYTE_OFFSET).decode("utf-8", errors="replace")

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, L) int64, mask (B, L) bool), L the longest prompt's length; padding is PAD, False."""
        rows = [self.encode(p) for p in prompts]
        length = max((len(r) for r in rows), default=2)
        ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, ids != PAD_ID


def _prompt_list(prompts: Sequence[str] | str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings, got {bad[0]}")
    return prompts


class ScratchConditioner:
    """The "scratch" TextConditioner: prompts -> byte token ids + mask (no embeddings).

    The network's own `ScratchTextEncoder` (of width `width`) encodes the ids, so
    `context_dim` and `pooled_dim` are that width.
    """

    name = "scratch"

    def __init__(self, max_tokens: int, width: int, truncate: bool = False):
        self.tokenizer = ByteTokenizer(max_tokens, truncate)
        self.max_tokens = self.tokenizer.max_tokens
        self.context_dim = self.pooled_dim = int(width)

    def __call__(self, prompts: Sequence[str] | str, device: torch.device | str | None = None) -> TextCond:
        ids, mask = self.tokenizer(_prompt_list(prompts))
        return TextCond(mask=mask.to(device), ids=ids.to(device))


# ---------------------------------------------------------------- the scratch encoder


class _TextBlock(nn.Module):
    """A pre-norm transformer layer (Vaswani et al. 2017; pre-norm as GPT-2): x + attn(LN x),
    then x + MLP(LN x); attention never looks at padding keys."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # 3 x (B, L, D)
        x = x + self.proj(masked_attention(q, k, v, self.heads, mask))
        return x + self.mlp(self.norm2(x))


class ScratchTextEncoder(nn.Module):
    """A small transformer over byte tokens, trained from scratch with the diffusion model
    (GLIDE, Nichol et al. 2022: "we encode the text into a sequence of K tokens and feed
    these tokens into a Transformer model").

    Token + learned position embeddings, `layers` pre-norm layers (bidirectional, padding
    keys masked out), a final LayerNorm. `forward(ids, mask)` gives the token embeddings
    (B, L, width), which the UNet's cross-attention layers attend to, and a pooled vector
    (B, width), which the UNet adds to its time embedding.

    The pooled vector is the EOS token's final state, as GLIDE uses the final token's
    embedding in place of a class embedding. EOS is a fixed summary slot the encoder learns
    to fill: it sees every real token, its content does not depend on how many tokens
    there are (a masked mean weights a long caption's words less each), and the empty
    prompt (BOS, EOS only) still has a learned, distinct summary, the null of caption
    dropout. Padding never changes it.
    """

    def __init__(self, width: int = 128, layers: int = 2, heads: int = 4, max_tokens: int = 64,
                 vocab_size: int = VOCAB_SIZE, mlp_ratio: int = 4):
        super().__init__()
        if width % heads:
            raise ValueError(f"text encoder width {width} must be divisible by its heads {heads}")
        if layers < 1 or max_tokens < 2:
            raise ValueError(f"a text encoder needs layers >= 1 and max_tokens >= 2, got {layers}, {max_tokens}")
        self.width, self.max_tokens = width, max_tokens
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.zeros(max_tokens, width))
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.01)
        self.blocks = nn.ModuleList([_TextBlock(width, heads, mlp_ratio) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) (B, L) -> (token embeddings (B, L, width), pooled (B, width)); real tokens
        must be left-aligned (BOS first, EOS last real), as the tokenizer makes them."""
        b, length = ids.shape
        if length > self.max_tokens:
            raise ValueError(f"{length} tokens is more than this text encoder's max_tokens {self.max_tokens}")
        x = self.token(ids) + self.position[:length]
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        eos = mask.long().sum(1) - 1  # the last real token of each row
        pooled = x[torch.arange(b, device=x.device), eos]
        return x, pooled
