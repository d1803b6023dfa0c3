"""A space-time UNet for clips (B, C, T, H, W): factorised space and time.

Space and time are mixed by separate layers, as in Video Diffusion Models (Ho et al. 2022:
per-frame 2-D convolutions and spatial attention, then attention across frames at each
pixel with relative position biases) and Lumiere's STUNet (Bar-Tal et al. 2024: temporal
convolutions, and down- and upsampling in time as well as in space, so the network works
on a compact space-time representation of the whole clip):

- `ResBlock` (`models/layers.py`) and `SelfAttention` run on every frame alone (frames
  folded into the batch): purely spatial, so they commute with any reordering of frames;
- `TemporalConv`: a 1-D convolution across frames at every pixel (replicate padding);
- `TemporalAttention`: multi-head attention across the frames at every pixel, with a
  learned bias per head and frame offset (relative positions, as in Video Diffusion Models);
- `Downsample3D` / `Upsample3D`: stride-2 in space (3x3 per frame) and, with `time_down`,
  in time (a stride-2 temporal convolution; nearest repeat then a temporal convolution).

Without position biases every temporal layer is equivariant to reordering frames except
the convolutions; with replicate padding a clip of identical frames stays one of identical
frames through every layer (the tests pin both). The network is conditioned on the noise
level and a class label (`TimeLabelEmbedding`, as the image UNets) and, with
`cond_channels`, on observed frames and their mask concatenated to the input
(`difforge.models.frames.FrameCond`, Flexible Diffusion Models).

With `patch_size` p > 1 every frame enters as p x p patches folded into channels (pixel
unshuffle: H x W x C becomes H/p x W/p x p^2 C, as the patches of U-ViT and DiT and the
shallow input of simple diffusion) and leaves through the inverse fold: every level works on
p^2 fewer positions, which buys width and training steps at the same cost per clip
(docs/video.md).

Rows a `FrameCond` marks `independent` hold T unrelated images (joint image-video
training, Video Diffusion Models): the temporal convolutions and attention add nothing to
them (their residual branch is multiplied by 0), so such a row is T images through the
spatial layers alone. Temporal down- and upsampling would mix them: a network with
`time_down` refuses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from difforge.models.frames import FrameCond
from difforge.models.layers import ResBlock, SelfAttention, TimeLabelEmbedding, attention, group_norm


def fold(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B T, C, H, W): every frame as an image."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def unfold(y: torch.Tensor, b: int) -> torch.Tensor:
    """(B T, C, H, W) -> (B, C, T, H, W), the inverse of `fold`."""
    bt, c, h, w = y.shape
    return y.view(b, bt // b, c, h, w).transpose(1, 2).contiguous()


def patchify(frames: torch.Tensor, p: int) -> torch.Tensor:
    """Frames (N, C, H, W) -> (N, C p^2, H/p, W/p): p x p patches folded into channels;
    output channel c p^2 + i p + j at (y, x) is frames[c, y p + i, x p + j]."""
    return frames if p == 1 else F.pixel_unshuffle(frames, p)


def unpatchify(frames: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of `patchify`."""
    return frames if p == 1 else F.pixel_shuffle(frames, p)


def _along_time(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B H W, C, T): every pixel's sequence of frames."""
    b, c, t, h, w = x.shape
    return x.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t)


def _from_time(y: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    bhw, c, t = y.shape
    return y.view(b, h, w, c, t).permute(0, 3, 4, 1, 2).contiguous()


def _temporal_residual(y: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """A temporal layer's residual branch y (B, C, T, H, W), zero in rows where `keep` is 0."""
    return y if keep is None else y * keep.to(y.dtype).view(-1, 1, 1, 1, 1)


class SpatialResBlock(nn.Module):
    """`ResBlock` on every frame, with the clip's time / label embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.block = ResBlock(in_ch, out_ch, emb_dim, dropout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[2]
        return unfold(self.block(fold(x), emb.repeat_interleave(t, dim=0)), b)


class SpatialAttention(nn.Module):
    """`SelfAttention` over the H W positions of every frame."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.attn = SelfAttention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold(self.attn(fold(x)), x.shape[0])


class TemporalConv(nn.Module):
    """x + conv1d_t(SiLU(GroupNorm(x))): a residual temporal convolution (kernel `kernel`,
    replicate padding) at every pixel; the norm is per frame."""

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"the temporal kernel must be odd, got {kernel}")
        self.norm = group_norm(channels)
        self.pad = kernel // 2
        self.conv = nn.Conv1d(channels, channels, kernel)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """`keep` (B,) float: 1 for a clip, 0 for a row of independent frames (unchanged)."""
        b, _, _, h, w = x.shape
        y = _along_time(unfold(F.silu(self.norm(fold(x))), b))
        y = self.conv(F.pad(y, (self.pad, self.pad), mode="replicate"))
        return x + _temporal_residual(_from_time(y, b, h, w), keep)


class TemporalAttention(nn.Module):
    """x + proj(attention across frames at every pixel): pre-norm (per frame) multi-head
    attention whose logits get a learned bias per head and frame offset j - i (relative
    positions, |j - i| < `max_frames`; Video Diffusion Models). The biases start at zero."""

    def __init__(self, channels: int, heads: int, max_frames: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels} must be divisible by heads={heads}")
        self.heads, self.max_frames = heads, max_frames
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.rel = nn.Parameter(torch.zeros(heads, 2 * max_frames - 1))

    def bias(self, t: int) -> torch.Tensor:
        """(heads, T, T): bias[h, i, j] = rel[h, j - i + max_frames - 1]."""
        if t > self.max_frames:
            raise ValueError(f"a clip of {t} frames here is longer than this model's {self.max_frames}")
        offset = torch.arange(t, device=self.rel.device)
        return self.rel[:, offset[None, :] - offset[:, None] + self.max_frames - 1]

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """`keep` as `TemporalConv`'s."""
        b, c, t, h, w = x.shape
        tokens = _along_time(unfold(self.norm(fold(x)), b)).transpose(1, 2)  # (B H W, T, C)
        n, d = tokens.shape[0], c // self.heads
        q, k, v = self.qkv(tokens).view(n, t, 3, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # (N, h, T, d)
        a = attention(q, k, v, self.bias(t).to(q.dtype)[None])
        out = self.proj(a.transpose(1, 2).reshape(n, t, c)).transpose(1, 2)  # (N, C, T)
        return x + _temporal_residual(_from_time(out, b, h, w), keep)


class Downsample3D(nn.Module):
    """Stride-2 3x3 convolution on every frame, then (with `time`) a stride-2 temporal
    convolution (kernel 3, replicate padding): T -> ceil(T / 2)."""

    def __init__(self, channels: int, time: bool):
        super().__init__()
        self.space = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.time = nn.Conv1d(channels, channels, 3, stride=2) if time else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = unfold(self.space(fold(x)), b)
        if self.time is None:
            return x
        h, w = x.shape[-2:]
        return _from_time(self.time(F.pad(_along_time(x), (1, 1), mode="replicate")), b, h, w)


class Upsample3D(nn.Module):
    """Nearest 2x in space then a 3x3 convolution per frame; with `time`, each frame
    repeated twice then a temporal convolution (kernel 3, replicate padding)."""

    def __init__(self, channels: int, time: bool):
        super().__init__()
        self.space = nn.Conv2d(channels, channels, 3, padding=1)
        self.time = nn.Conv1d(channels, channels, 3) if time else None

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        b = x.shape[0]
        x = unfold(self.space(F.interpolate(fold(x), scale_factor=2, mode="nearest")), b)
        if self.time is None:
            return x
        h, w = x.shape[-2:]
        y = _along_time(x).repeat_interleave(2, dim=-1)[..., :frames]
        return _from_time(self.time(F.pad(y, (1, 1), mode="replicate")), b, h, w)


class _Stage(nn.Module):
    """Per-frame ResBlock, temporal convolution, and (at attention levels) spatial then
    temporal attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, heads: int | None, max_frames: int):
        super().__init__()
        self.res = SpatialResBlock(in_ch, out_ch, emb_dim, dropout)
        self.tconv = TemporalConv(out_ch)
        self.sattn = SpatialAttention(out_ch, heads) if heads else None
        self.tattn = TemporalAttention(out_ch, heads, max_frames) if heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tconv(self.res(x, emb), keep)
        if self.sattn is not None:
            x = self.tattn(self.sattn(x), keep)
        return x


class STUNet(nn.Module):
    """A space-time UNet over clips (B, C, T, H, W) (module docstring).

    Args:
        base_channels, channel_mults, num_res_blocks, attention_levels, num_heads, dropout,
            time_dim: as `difforge.models.unet.UNet` (attention levels get spatial and
            temporal attention; the middle block always has both).
        time_down: halve T with H and W at every level (Lumiere); False: only space.
        max_frames: the longest clip the temporal attention's relative positions cover.
        cond_channels: extra input channels for observed frames: the frames (C) and the mask
            (1) of a `FrameCond` (Flexible Diffusion Models). 0: the network takes none.
        patch_size: p: every frame is folded into p x p patches (p^2 times the channels at
            1/p the height and width) before the first convolution and unfolded after the
            last; 1: none.
        head_channels: with patch_size > 1, the last convolution unfolds to this many
            channels at full size, and a 3x3 convolution per frame at full size makes the
            output, so neighbouring pixels of different patches are made together; 0: the
            output is the unfolded last convolution.

    `cond` is a `FrameCond` (its labels, frames and mask), a (B,) long tensor of labels
    (nothing observed), or None (the null label, nothing observed).
    """

    takes_clips = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int | None,
        *,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        num_heads: int = 4,
        dropout: float = 0.0,
        time_dim: int | None = None,
        time_down: bool = True,
        max_frames: int = 16,
        cond_channels: int = 0,
        patch_size: int = 1,
        head_channels: int = 0,
    ):
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if head_channels < 0 or (head_channels and patch_size == 1):
            raise ValueError(f"head_channels ({head_channels}) needs patch_size > 1 and must be >= 0")
        if not channel_mults:
            raise ValueError("channel_mults must name at least one level")
        bad = [lvl for lvl in attention_levels if not 0 <= lvl < len(channel_mults)]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range for {len(channel_mults)} levels")
        self.num_classes, self.cond_channels, self.in_channels = num_classes, cond_channels, in_channels
        self.patch_size = patch_size
        self.size_multiple = patch_size * 2 ** (len(channel_mults) - 1)
        self.frame_multiple = 2 ** (len(channel_mults) - 1) if time_down else 1  # patches are in space only
        self.time_down, self.max_frames = time_down, max_frames
        time_dim = time_dim or 4 * base_channels
        self.embed = TimeLabelEmbedding(time_dim, num_classes, freq_dim=base_channels)
        self.in_conv = nn.Conv2d((in_channels + cond_channels) * patch_size ** 2, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch = [base_channels], base_channels
        for level, mult in enumerate(channel_mults):
            heads = num_heads if level in attention_levels else None
            for _ in range(num_res_blocks):
                self.down.append(_Stage(ch, base_channels * mult, time_dim, dropout, heads, max_frames))
                ch = base_channels * mult
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(Downsample3D(ch, time_down))
                skips.append(ch)
        self.mid = nn.ModuleList([_Stage(ch, ch, time_dim, dropout, num_heads, max_frames),
                                  _Stage(ch, ch, time_dim, dropout, None, max_frames)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            heads = num_heads if level in attention_levels else None
            for _ in range(num_res_blocks + 1):
                self.up.append(_Stage(ch + skips.pop(), base_channels * mult, time_dim, dropout, heads, max_frames))
                ch = base_channels * mult
            if level > 0:
                self.up.append(Upsample3D(ch, time_down))
        assert not skips, "every skip activation must be consumed"
        self.out_norm = group_norm(ch)
        self.out_conv = nn.Conv2d(ch, (head_channels or out_channels) * patch_size ** 2, 3, padding=1)
        self.head = nn.Conv2d(head_channels, out_channels, 3, padding=1) if head_channels else None
        last = self.out_conv if self.head is None else self.head
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def check_clip(self, x: torch.Tensor) -> None:
        """A clear error unless x is (B, C, T, H, W) with sizes this network divides."""
        if x.ndim != 5:
            raise ValueError(f"expected clips of shape (B, C, T, H, W), got {tuple(x.shape)}")
        t, h, w = x.shape[-3:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"frame size {h}x{w} is not supported by this model: height and width must be divisible "
                             f"by {self.size_multiple}")
        if t % self.frame_multiple or t > self.max_frames:
            raise ValueError(f"{t} frames: this model takes clips of at most {self.max_frames} frames, a multiple "
                             f"of {self.frame_multiple}")

    def _keep(self, cond) -> torch.Tensor | None:
        """(B,) 0 for the rows `cond` marks independent, 1 for clips; None when every row is a clip."""
        independent = cond.independent if isinstance(cond, FrameCond) else None
        if independent is None or not independent.any():
            return None
        if self.time_down:
            raise ValueError("rows of independent frames (joint image-video training) need a network without "
                             "temporal down-sampling (time_down false, e.g. stunet-space-down)")
        return (~independent).float()

    def _inputs(self, x: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network input (the clip and, with cond_channels, the observed frames and mask)
        and the labels."""
        labels, frame_cond = cond, None
        if isinstance(cond, FrameCond):
            labels, frame_cond = cond.labels, cond
            if len(cond) != x.shape[0] or cond.num_frames != x.shape[2]:
                raise ValueError(f"the frame condition is {len(cond)} clips of {cond.num_frames} frames for a batch "
                                 f"of {x.shape[0]} clips of {x.shape[2]} frames")
        if not self.cond_channels:
            if frame_cond is not None and frame_cond.mask.any():
                raise ValueError("this model takes no observed frames")
            return x, labels
        b, c, t, h, w = x.shape
        if frame_cond is None or frame_cond.frames is None:
            frames = x.new_zeros(b, self.cond_channels - 1, t, h, w)
            mask = x.new_zeros(b, 1, t, h, w) if frame_cond is None else \
                frame_cond.mask.to(x.device, x.dtype)[:, None, :, None, None].expand(b, 1, t, h, w)
        else:
            if frame_cond.frames.shape[1] != self.cond_channels - 1 or frame_cond.frames.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"observed frames are {tuple(frame_cond.frames.shape[1:])} for clips "
                                 f"{tuple(x.shape[1:])}")
            frames = frame_cond.frames.to(x.device, x.dtype)
            mask = frame_cond.mask.to(x.device, x.dtype)[:, None, :, None, None].expand(b, 1, t, h, w)
        return torch.cat([x, frames, mask], dim=1), labels

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
        self.check_clip(x)
        b = x.shape[0]
        keep = self._keep(cond)
        keep = None if keep is None else keep.to(x.device)
        x, labels = self._inputs(x, cond)
        emb = self.embed(c_noise, None if labels is None else labels.to(x.device))
        h = unfold(self.in_conv(patchify(fold(x), self.patch_size)), b)
        skips, lengths = [h], []
        for block in self.down:
            if isinstance(block, _Stage):
                h = block(h, emb, keep)
            else:
                lengths.append(h.shape[2])
                h = block(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb, keep)
        for block in self.up:
            if isinstance(block, _Stage):
                h = block(torch.cat([h, skips.pop()], dim=1), emb, keep)
            else:
                h = block(h, lengths.pop())
        out = unpatchify(self.out_conv(F.silu(self.out_norm(fold(h)))), self.patch_size)  # frames, full size
        return unfold(out if self.head is None else self.head(F.silu(out)), b)
