"""Layers shared by the UNets: timestep/label embeddings, normalisation, ResBlock, attention
(self-attention over the image, cross-attention to text tokens)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, (B,) -> (B, dim), float32.

    emb[:, i] = sin(t * w_i) and emb[:, half + i] = cos(t * w_i) with
    w_i = max_period ** (-i / half), half = dim // 2  # Transformer positional encoding
    (Vaswani et al. 2017); an odd `dim` gets one trailing zero column.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must have shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides `channels`."""
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels)


def check_size(x: torch.Tensor, multiple: int) -> None:
    """Raise a clear ValueError unless x is (B, C, H, W) with H, W divisible by `multiple`."""
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"image size {h}x{w} is not supported by this model: height and width must be "
            f"divisible by {multiple} (pad or resize the images)"
        )


class TimeLabelEmbedding(nn.Module):
    """Embedding of the noise level plus an optional class label, (B,) -> (B, dim).

    With `freq_dim` the sinusoidal features go through a 2-layer MLP (DDPM/ADM style);
    without it the sinusoid of width `dim` is used directly (the seed article's UNet).
    Labels index `nn.Embedding(num_classes + 1, dim)`; index `num_classes` is the learned
    null label used for classifier-free guidance, and `cond=None` means "all null".
    """

    def __init__(self, dim: int, num_classes: int | None, *, freq_dim: int | None = None):
        super().__init__()
        self.dim = dim
        self.num_classes = num_classes
        self.freq_dim = freq_dim if freq_dim is not None else dim
        self.mlp = (
            nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
            if freq_dim is not None
            else nn.Identity()
        )
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes is not None else None

    def forward(self, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.mlp(timestep_embedding(c_noise, self.freq_dim))
        if self.label is None:
            if cond is not None:
                raise ValueError("this model is unconditional (num_classes=None); pass cond=None")
            return emb
        if cond is None:
            cond = torch.full_like(c_noise, self.num_classes, dtype=torch.long)
        elif cond.shape != c_noise.shape:
            raise ValueError(f"cond must have shape {tuple(c_noise.shape)}, got {tuple(cond.shape)}")
        return emb + self.label(cond)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
              ) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, attn_mask)`; in float32 when training on the CPU.

    Under bf16 autocast on the CPU, PyTorch's bf16 attention kernel runs forward + backward
    1.25-7.4x slower than the float32 one (`benchmarks/attention_backend.py`: 6.3x at the 64
    positions of an 8x8 map, 2.2x against a caption's 16 tokens); it was a third of a text
    model's training step. So when autograd records (q requires grad) on the CPU in a lower
    precision, q, k, v (and a float mask) are cast to float32, attention runs outside
    autocast, and the result is cast back to q's dtype. Forward alone (sampling) the bf16
    kernel is as fast or faster on long sequences, and CUDA has its own kernels: there it
    is the plain call.
    """
    if q.device.type != "cpu" or q.dtype == torch.float32 or not q.requires_grad:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.float()
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask)
    return out.to(q.dtype)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over the H*W positions, with a residual.

    norm="group" normalises the feature map with GroupNorm (DDPM/ADM style); norm="layer"
    normalises tokens with LayerNorm and, with mlp_ratio > 0, adds a pre-norm GELU
    feed-forward sub-block (Transformer style, as in the seed article's UNet).
    Attention itself is `attention` (`F.scaled_dot_product_attention`'s fused kernels).
    """

    def __init__(self, channels: int, num_heads: int = 4, *, norm: str = "group", mlp_ratio: int = 0):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels={channels} must be divisible by num_heads={num_heads}")
        if norm not in ("group", "layer"):
            raise ValueError(f"unknown norm {norm!r}; expected one of ['group', 'layer']")
        self.num_heads = num_heads
        self.norm = group_norm(channels) if norm == "group" else nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.ff = (
            nn.Sequential(
                nn.LayerNorm(channels),
                nn.Linear(channels, mlp_ratio * channels),
                nn.GELU(),
                nn.Linear(mlp_ratio * channels, channels),
            )
            if mlp_ratio > 0
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        heads = self.num_heads
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        if isinstance(self.norm, nn.GroupNorm):
            h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        else:
            h = self.norm(tokens)
        qkv = self.qkv(h).view(B, H * W, 3, heads, C // heads)  # (B, HW, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, HW, d)
        a = attention(q, k, v)  # (B, h, HW, d)
        a = a.transpose(1, 2).reshape(B, H * W, C)  # (B, HW, C)
        tokens = tokens + self.proj(a)
        if self.ff is not None:
            tokens = tokens + self.ff(tokens)
        return tokens.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-head scaled dot-product attention of queries (B, N, C) over keys / values
    (B, L, C), heads merged back: (B, N, C). `key_mask` (B, L) bool, True where a key may
    be attended: False keys get no weight at all (a boolean `attn_mask` of
    `F.scaled_dot_product_attention`), so what padding holds never reaches the output.
    Every row needs at least one True key."""
    B, N, C = q.shape
    L = k.shape[1]
    q = q.view(B, N, heads, C // heads).transpose(1, 2)  # (B, h, N, d)
    k = k.view(B, L, heads, C // heads).transpose(1, 2)  # (B, h, L, d)
    v = v.view(B, L, heads, C // heads).transpose(1, 2)  # (B, h, L, d)
    attn_mask = None if key_mask is None else key_mask.to(device=q.device, dtype=torch.bool)[:, None, None, :]
    a = attention(q, k, v, attn_mask)  # (B, h, N, d)
    return a.transpose(1, 2).reshape(B, N, C)


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention from the H*W image positions to text tokens,
    with a residual: x + proj(attn(q = W_q GroupNorm(x), k, v = W_k, W_v LayerNorm(context))).

    The image queries the caption's token embeddings, as in GLIDE (Nichol et al. 2022,
    whose attention layers also attend to the projected text tokens), Imagen (Saharia et
    al. 2022, Section 2.3: cross-attention to the text embedding, with layer normalisation
    of the text embeddings, which the paper found important) and Stable Diffusion's spatial
    transformer (Rombach et al. 2022, Section 3.3). `context` (B, L, context_dim), `mask`
    (B, L) bool: padding tokens (False) are never attended, so they have no effect.
    """

    def __init__(self, channels: int, context_dim: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels} must be divisible by heads={heads}")
        self.heads = heads
        self.norm = group_norm(channels)
        self.context_norm = nn.LayerNorm(context_dim)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        q = self.q(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        context = context.to(self.context_norm.weight.dtype)
        k, v = self.kv(self.context_norm(context)).chunk(2, dim=-1)  # 2 x (B, L, C)
        a = masked_attention(q, k, v, self.heads, mask)  # (B, HW, C)
        return x + self.proj(a).transpose(1, 2).reshape(B, C, H, W)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with FiLM from the embedding and a residual.

    The embedding gives a per-channel scale and shift applied after the second norm:
    h = norm(h) * (1 + scale) + shift  # ADM "scale-shift norm" (Dhariwal & Nichol 2021)
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # 2 x (B, C, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h
