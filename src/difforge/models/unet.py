"""An efficient modern UNet (DDPM/ADM style): ResBlocks with scale-shift time conditioning,
strided-conv downsampling, nearest-neighbour upsampling, attention only where it is cheap;
optionally conditioned on text by cross-attention and a pooled text vector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from difforge.models.layers import CrossAttention, ResBlock, SelfAttention, TimeLabelEmbedding, check_size, group_norm
from difforge.models.text import ScratchTextEncoder, TextCond
from difforge.models.text_image import TextImageCond


class Downsample(nn.Module):
    """3x3 convolution with stride 2 (odd sizes round up: 7 -> 4)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Stage(nn.Module):
    """One ResBlock, optionally followed by self-attention and then, with `context_dim`,
    cross-attention to the text tokens (self- then cross-attention: a small "spatial
    transformer" in the sense of Stable Diffusion, Rombach et al. 2022). Without
    `context_dim` the stage has no `cross` parameters, so class-label and SR3 models keep
    their state_dict."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attn_heads: int | None,
                 context_dim: int | None = None):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = SelfAttention(out_ch, attn_heads) if attn_heads else None
        self.cross = CrossAttention(out_ch, context_dim, attn_heads) if attn_heads and context_dim else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None:
            x = self.cross(x, context, mask)
        return x


class UNet(nn.Module):
    """UNet with `len(channel_mults)` resolution levels (each but the last halves H, W).

    Args:
        base_channels: width of level 0; level i has base_channels * channel_mults[i].
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_levels: levels (0 = full resolution) whose ResBlocks get self-attention;
            the middle block always has attention when `mid_attention` is true.
        dropout: inside each ResBlock, before its second convolution.
        time_dim: width of the time/label embedding (default 4 * base_channels).
        cond_channels: extra input channels for an image condition, concatenated to x
            (SR3, Saharia et al. 2022); `cond` is then that image (N, cond_channels, H, W)
            instead of class labels.
        context_dim: text conditioning (`cond` is then a `difforge.models.text.TextCond`):
            the width of the text token embeddings. Every stage with self-attention (the
            `attention_levels` and the middle block) is followed by cross-attention to the
            tokens (GLIDE, Nichol et al. 2022; Imagen, Saharia et al. 2022; Stable
            Diffusion, Rombach et al. 2022). With `cond_channels` too (a text
            super-resolution model), `cond` is a `difforge.models.text_image.TextImageCond`:
            the prompts and the conditioning image.
        pooled_dim: the width of the pooled text vector, which is layer-normalised,
            projected and added to the time embedding (Imagen, Section 2.3; GLIDE uses its
            text transformer's final token in place of the class embedding). None: no
            pooled input.
        text_encoder: the keyword arguments of a `ScratchTextEncoder` (width, layers, heads,
            max_tokens) trained with the UNet (GLIDE): `cond.ids` are encoded in `forward`.
            None: a frozen encoder outside the network supplies `cond.emb` / `cond.pooled`.
            context_dim and pooled_dim default to the encoder's width.
        image_embed_dim: the decoder of unCLIP (Ramesh et al. 2022, Section 2.1): `cond` is a
            CLIP image embedding (B, image_embed_dim). It is projected and added to the time
            embedding (the pooled path above) and projected into `image_embed_tokens` extra
            tokens that the cross-attention layers attend to (their context).

    `grad_checkpoint` (an attribute, off by default; not part of the architecture): while
    training, each ResBlock stage's activations are recomputed in the backward pass
    (`torch.utils.checkpoint`) instead of kept, which trades about a third more compute for
    much less memory. Outputs and gradients are those of the plain forward.
    """

    grad_checkpoint: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int | None,
        *,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: tuple[int, ...] = (2,),
        mid_attention: bool = True,
        num_heads: int = 4,
        dropout: float = 0.0,
        time_dim: int | None = None,
        cond_channels: int = 0,
        context_dim: int | None = None,
        pooled_dim: int | None = None,
        text_encoder: Mapping[str, Any] | None = None,
        image_embed_dim: int | None = None,
        image_embed_tokens: int = 4,
    ):
        super().__init__()
        self.image_embed_dim = image_embed_dim or None
        if self.image_embed_dim:
            if text_encoder is not None or context_dim or pooled_dim:
                raise ValueError("a UNet conditioned on a CLIP image embedding takes no text")
            if image_embed_tokens < 1:
                raise ValueError(f"image_embed_tokens must be >= 1, got {image_embed_tokens}")
            context_dim = pooled_dim = self.image_embed_dim
            self.image_embed_tokens = image_embed_tokens
            self.embed_tokens = nn.Linear(self.image_embed_dim, image_embed_tokens * self.image_embed_dim)
        if cond_channels and num_classes:
            raise ValueError("a UNet conditioned on an image (cond_channels) takes no class labels")
        self.cond_channels = cond_channels
        if text_encoder is not None:
            width = int(text_encoder.get("width", 128))
            context_dim, pooled_dim = context_dim or width, pooled_dim or width
            if (context_dim, pooled_dim) != (width, width):
                raise ValueError(f"context_dim {context_dim} and pooled_dim {pooled_dim} must be the text encoder's "
                                 f"width {width}")
        if pooled_dim and not context_dim:
            raise ValueError("a pooled text input (pooled_dim) needs the text tokens too (context_dim)")
        if context_dim:
            if num_classes:
                raise ValueError("a text-conditioned UNet (context_dim) takes no class labels")
            if not attention_levels and not mid_attention:
                raise ValueError("a text-conditioned UNet needs attention (attention_levels or mid_attention) to "
                                 "cross-attend to the text")
        self.context_dim, self.pooled_dim = context_dim or None, pooled_dim or None
        if not channel_mults:
            raise ValueError("channel_mults must name at least one level")
        bad = [lvl for lvl in attention_levels if not 0 <= lvl < len(channel_mults)]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range for {len(channel_mults)} levels")
        self.num_classes = num_classes
        self.size_multiple = 2 ** (len(channel_mults) - 1)
        time_dim = time_dim or 4 * base_channels
        self.embed = TimeLabelEmbedding(time_dim, num_classes, freq_dim=base_channels)
        if text_encoder is not None:
            self.text_encoder = ScratchTextEncoder(**text_encoder)
        else:
            self.text_encoder = None
        if self.pooled_dim:
            self.pooled_proj = nn.Sequential(nn.LayerNorm(self.pooled_dim), nn.Linear(self.pooled_dim, time_dim))
        ctx = self.context_dim

        self.in_conv = nn.Conv2d(in_channels + cond_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [base_channels]  # channels of each saved skip activation
        ch = base_channels
        for level, mult in enumerate(channel_mults):
            heads = num_heads if level in attention_levels else None
            for _ in range(num_res_blocks):
                self.down.append(_Stage(ch, base_channels * mult, time_dim, dropout, heads, ctx))
                ch = base_channels * mult
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)

        self.mid = nn.ModuleList([
            _Stage(ch, ch, time_dim, dropout, num_heads if mid_attention else None, ctx),
            _Stage(ch, ch, time_dim, dropout, None),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            heads = num_heads if level in attention_levels else None
            for _ in range(num_res_blocks + 1):
                self.up.append(_Stage(ch + skips.pop(), base_channels * mult, time_dim, dropout, heads, ctx))
                ch = base_channels * mult
            if level > 0:
                self.up.append(Upsample(ch))
        assert not skips, "every skip activation must be consumed"

        self.out_norm = group_norm(ch)
        self.out_conv = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | TextCond | None = None
                ) -> torch.Tensor:
        check_size(x, self.size_multiple)
        context = mask = pooled = None
        if self.image_embed_dim:
            context, mask, pooled = self._image_embedding(cond, x.shape[0])
            cond = None
        elif self.context_dim:
            image = None
            if self.cond_channels:  # text super-resolution: the prompts and the conditioning image
                if not isinstance(cond, TextImageCond):
                    raise ValueError(f"this text super-resolution model needs a TextImageCond (prompts and "
                                     f"conditioning images) as cond, got {type(cond).__name__}")
                cond, image = cond.text, cond.image
            context, mask, pooled = self._text(cond, x.shape[0])
            cond = image
        if self.cond_channels:  # image conditioning by channel concatenation
            if cond is None or cond.shape[1] != self.cond_channels or cond.shape[-2:] != x.shape[-2:]:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"this model needs a conditioning image ({self.cond_channels}, {x.shape[-2]}, "
                                 f"{x.shape[-1]}) per sample, got {got}")
            x, cond = torch.cat([x, cond.to(x.dtype)], dim=1), None  # (B, C + C_cond, H, W)
        emb = self.embed(c_noise, cond)
        if pooled is not None:
            emb = emb + self.pooled_proj(pooled.to(self.pooled_proj[0].weight.dtype))
        checkpointed = self.grad_checkpoint and self.training and torch.is_grad_enabled()

        def stage(block: _Stage, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
            if checkpointed:  # activations recomputed in backward (the RNG state is replayed: same dropout masks)
                return checkpoint(block, h, emb, context, mask, use_reentrant=False)
            return block(h, emb, context, mask)

        h = self.in_conv(x)
        skips = [h]
        for block in self.down:
            h = stage(block, h, emb) if isinstance(block, _Stage) else block(h)
            skips.append(h)
        for block in self.mid:
            h = stage(block, h, emb)
        for block in self.up:
            if isinstance(block, _Stage):
                h = stage(block, torch.cat([h, skips.pop()], dim=1), emb)  # (B, C + C_skip, H, W)
            else:
                h = block(h)
        return self.out_conv(F.silu(self.out_norm(h)))

    def _image_embedding(self, cond, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K tokens (B, K, D), their mask (all real), the embedding itself as the pooled vector)."""
        d = self.image_embed_dim
        if not isinstance(cond, torch.Tensor) or cond.ndim != 2 or cond.shape != (batch, d):
            got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"this model is conditioned on CLIP image embeddings ({batch}, {d}), got {got}")
        emb = cond.to(self.embed_tokens.weight.dtype)
        tokens = self.embed_tokens(emb).view(batch, self.image_embed_tokens, d)
        return tokens, torch.ones(batch, self.image_embed_tokens, dtype=torch.bool, device=emb.device), emb

    def _text(self, cond, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(token embeddings (B, L, D), mask (B, L), pooled (B, P) or None) of a TextCond:
        encoded here from `ids` (scratch encoder) or the frozen encoder's `emb` / `pooled`."""
        if not isinstance(cond, TextCond):
            raise ValueError(f"this text-conditioned model needs a TextCond (prompts through its conditioner) as "
                             f"cond, got {type(cond).__name__}")
        if len(cond) != batch:
            raise ValueError(f"{len(cond)} prompts for a batch of {batch} images")
        if self.text_encoder is not None:
            if cond.ids is None:
                raise ValueError("this model encodes token ids itself (a scratch text encoder); the TextCond has none")
            context, pooled = self.text_encoder(cond.ids, cond.mask)
            return context, cond.mask, pooled if self.pooled_dim else None
        if cond.emb is None or cond.emb.shape[-1] != self.context_dim:
            got = None if cond.emb is None else cond.emb.shape[-1]
            raise ValueError(f"this model cross-attends to token embeddings of width {self.context_dim} (a frozen "
                             f"text encoder's); the TextCond has {got}")
        if self.pooled_dim and (cond.pooled is None or cond.pooled.shape[-1] != self.pooled_dim):
            got = None if cond.pooled is None else cond.pooled.shape[-1]
            raise ValueError(f"this model takes a pooled text embedding of width {self.pooled_dim}; the TextCond "
                             f"has {got}")
        return cond.emb, cond.mask, cond.pooled if self.pooled_dim else None
