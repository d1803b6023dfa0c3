"""The seed article's UNet ("How to train a diffusion model"), written afresh.

Three max-pool downsamplings (channels c, 2c, 4c, 4c with c=64 as in the article), a
two-DoubleConv bottleneck, three bilinear upsamplings with skip concatenation, self-
attention after every Down and Up block (so also at full resolution), and the timestep
embedded by a sinusoid and added, through a per-block linear layer, to each block's
output. The class label's embedding is added to the timestep embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from difforge.models.layers import SelfAttention, TimeLabelEmbedding, check_size


class DoubleConv(nn.Module):
    """conv3x3-GroupNorm(1)-GELU-conv3x3-GroupNorm(1); residual: GELU(x + that)."""

    def __init__(
        self, in_channels: int, out_channels: int, mid_channels: int | None = None, *, residual: bool = False
    ):
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError("a residual DoubleConv needs in_channels == out_channels")
        mid = mid_channels or out_channels
        self.residual = residual
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.GroupNorm(1, mid),
            nn.GELU(),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(1, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.net(x)) if self.residual else self.net(x)


class Down(nn.Module):
    """Max-pool by 2, a residual and a plain DoubleConv, then add the projected embedding."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.MaxPool2d(2),
            DoubleConv(in_channels, in_channels, residual=True),
            DoubleConv(in_channels, out_channels),
        )
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.convs(x) + self.emb(emb)[:, :, None, None]  # emb: (B, C, 1, 1)


class Up(nn.Module):
    """Bilinear upsample by 2, concatenate the skip, two DoubleConvs, add the embedding."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int):
        super().__init__()
        self.convs = nn.Sequential(
            DoubleConv(in_channels, in_channels, residual=True),
            DoubleConv(in_channels, out_channels, in_channels // 2),
        )
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = torch.cat([skip, x], dim=1)  # (B, C_skip + C, H, W)
        return self.convs(x) + self.emb(emb)[:, :, None, None]  # emb: (B, C, 1, 1)


def _attention(channels: int) -> SelfAttention:
    # LayerNorm + 4-head attention + GELU feed-forward, each with a residual.
    return SelfAttention(channels, num_heads=4, norm="layer", mlp_ratio=1)


class SeedUNet(nn.Module):
    """The article's UNet (and its class-conditional variant, via `num_classes`)."""

    size_multiple = 8  # three 2x downsamplings

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int | None,
        *,
        base_channels: int = 64,
        time_dim: int = 256,
    ):
        super().__init__()
        c1, c2, c3 = base_channels, 2 * base_channels, 4 * base_channels  # 64 / 128 / 256
        self.num_classes = num_classes
        self.embed = TimeLabelEmbedding(time_dim, num_classes)
        self.inc = DoubleConv(in_channels, c1)
        self.down1, self.sa1 = Down(c1, c2, time_dim), _attention(c2)
        self.down2, self.sa2 = Down(c2, c3, time_dim), _attention(c3)
        self.down3, self.sa3 = Down(c3, c3, time_dim), _attention(c3)
        self.bot1 = DoubleConv(c3, c3)
        self.bot2 = DoubleConv(c3, c3)
        self.up1, self.sa4 = Up(2 * c3, c2, time_dim), _attention(c2)
        self.up2, self.sa5 = Up(2 * c2, c1, time_dim), _attention(c1)
        self.up3, self.sa6 = Up(2 * c1, c1, time_dim), _attention(c1)
        self.out_conv = nn.Conv2d(c1, out_channels, 1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_size(x, self.size_multiple)
        emb = self.embed(c_noise, cond)
        x1 = self.inc(x)
        x2 = self.sa1(self.down1(x1, emb))
        x3 = self.sa2(self.down2(x2, emb))
        x4 = self.sa3(self.down3(x3, emb))
        x4 = self.bot2(self.bot1(x4))
        h = self.sa4(self.up1(x4, x3, emb))
        h = self.sa5(self.up2(h, x2, emb))
        h = self.sa6(self.up3(h, x1, emb))
        return self.out_conv(h)
