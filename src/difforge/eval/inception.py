"""Inception-v3 pool features for the standard FID protocol, from a local TorchScript file.

difforge never downloads weights. Give it NVIDIA's TorchScript port of the original
TensorFlow FID network, `inception-2015-12-05.pt` (the file StyleGAN2-ADA and EDM
compute FID with): `--inception PATH`, or put it at
`$DIFFORGE_CACHE/inception-2015-12-05.pt` (default `~/.cache/difforge/`).

The calling convention is that file's: `model(images, return_features=True)` on float
(N, 3, H, W) images in 0..255 (it resizes to 299x299 itself) gives (N, 2048) pool3
features, and `model(images, no_output_bias=True)` the softmax over 1008 classes used for
the Inception Score. Any TorchScript module taking such images and returning (N, D)
(or (N, D, 1, 1)) features also works; grayscale images are repeated to 3 channels.
State dicts (e.g. pytorch-fid's `pt_inception-2015-12-05-*.pth`) are not accepted: they
need an Inception implementation, which difforge does not ship.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

DEFAULT_NAME = "inception-2015-12-05.pt"


def default_inception_path() -> Path | None:
    """The cached TorchScript file when it exists, else None."""
    from difforge.eval.classifier import cache_root

    path = cache_root() / DEFAULT_NAME
    return path if path.is_file() else None


class InceptionFeatures:
    """A TorchScript Inception-v3: pool features and (when it offers them) class probabilities."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights {path}: no such file "
                                    "(difforge never downloads; see docs/evaluation.md)")
        try:
            with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; the FID file is one
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as e:
            raise ValueError(
                f"{path} is not a TorchScript module ({str(e).splitlines()[0][:80]}); --inception needs a TorchScript "
                f"Inception-v3 such as NVIDIA's {DEFAULT_NAME}, not a state dict"
            ) from None
        self.path, self.device = path, torch.device(device)
        self._returns_features = True  # whether the module takes return_features=True

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 100) -> np.ndarray:
        """Pool features (N, D) as float64."""
        out = []
        for s in range(0, len(images), batch_size):
            x = self._input(images[s : s + batch_size])
            if self._returns_features:
                try:
                    f = self.model(x, return_features=True)
                except RuntimeError:  # a module without that keyword
                    self._returns_features = False
            if not self._returns_features:
                f = self.model(x)
            if f.ndim == 4 and f.shape[2:] == (1, 1):
                f = f.flatten(1)
            if f.ndim != 2 or f.shape[0] != x.shape[0]:
                raise ValueError(f"{self.path} returned shape {tuple(f.shape)}; expected features (N, D)")
            out.append(f.double().cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def probs(self, images: torch.Tensor, batch_size: int = 100) -> np.ndarray | None:
        """Class probabilities (N, K) for the Inception Score, or None if the module has none."""
        out = []
        try:
            for s in range(0, len(images), batch_size):
                p = self.model(self._input(images[s : s + batch_size]), no_output_bias=True)
                out.append(p.double().cpu())
        except RuntimeError:
            return None
        p = torch.cat(out).numpy()
        if p.ndim != 2 or (p < 0).any() or not np.allclose(p.sum(1), 1, atol=1e-3):
            return None
        return p
