"""An efficient modern UNet (DDPM/ADM style): ResBlocks with scale-shift time conditioning,
strided-conv downsampling, nearest-neighbour upsampling, attention only where it is cheap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from difforge.models.layers import ResBlock, SelfAttention, TimeLabelEmbedding, check_size, group_norm


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
    """One ResBlock, optionally followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attn_heads: int | None):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = SelfAttention(out_ch, attn_heads) if attn_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


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
    ):
        super().__init__()
        if cond_channels and num_classes:
            raise ValueError("a UNet conditioned on an image (cond_channels) takes no class labels")
        self.cond_channels = cond_channels
        if not channel_mults:
            raise ValueError("channel_mults must name at least one level")
        bad = [lvl for lvl in attention_levels if not 0 <= lvl < len(channel_mults)]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range for {len(channel_mults)} levels")
        self.num_classes = num_classes
        self.size_multiple = 2 ** (len(channel_mults) - 1)
        time_dim = time_dim or 4 * base_channels
        self.embed = TimeLabelEmbedding(time_dim, num_classes, freq_dim=base_channels)

        self.in_conv = nn.Conv2d(in_channels + cond_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [base_channels]  # channels of each saved skip activation
        ch = base_channels
        for level, mult in enumerate(channel_mults):
            heads = num_heads if level in attention_levels else None
            for _ in range(num_res_blocks):
                self.down.append(_Stage(ch, base_channels * mult, time_dim, dropout, heads))
                ch = base_channels * mult
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)

        self.mid = nn.ModuleList([
            _Stage(ch, ch, time_dim, dropout, num_heads if mid_attention else None),
            _Stage(ch, ch, time_dim, dropout, None),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            heads = num_heads if level in attention_levels else None
            for _ in range(num_res_blocks + 1):
                self.up.append(_Stage(ch + skips.pop(), base_channels * mult, time_dim, dropout, heads))
                ch = base_channels * mult
            if level > 0:
                self.up.append(Upsample(ch))
        assert not skips, "every skip activation must be consumed"

        self.out_norm = group_norm(ch)
        self.out_conv = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_size(x, self.size_multiple)
        if self.cond_channels:  # image conditioning by channel concatenation
            if cond is None or cond.shape[1] != self.cond_channels or cond.shape[-2:] != x.shape[-2:]:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"this model needs a conditioning image ({self.cond_channels}, {x.shape[-2]}, "
                                 f"{x.shape[-1]}) per sample, got {got}")
            x, cond = torch.cat([x, cond.to(x.dtype)], dim=1), None  # (B, C + C_cond, H, W)
        emb = self.embed(c_noise, cond)
        stage = self._checkpointed if self.grad_checkpoint and self.training and torch.is_grad_enabled() else \
            (lambda block, h, emb: block(h, emb))
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

    @staticmethod
    def _checkpointed(block: _Stage, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """A stage whose activations are recomputed in backward (the RNG state is replayed,
        so dropout masks match)."""
        return checkpoint(block, h, emb, use_reentrant=False)
