"""Training images as latents of a frozen autoencoder (latent diffusion).

The diffusion model of a latent run trains on x0 = scale * z, z = mean + std * n a sample
of the autoencoder's posterior for the image (as LDM trains on posterior samples). The
posteriors' means and log-variances are computed once per split and kept in memory (and in
`RUN/cache/`, keyed by the autoencoder's weights and the images, so a resumed run reads
them back) when they fit in `CACHE_MAX_BYTES`; otherwise, or with
`model.cache_latents: false`, each batch is encoded as it is drawn. Either way the noise n
is drawn for the whole global batch from the training generator and then sliced, so both
paths give the same x0 and any number of processes sees the same global batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from difforge.io.space import to_model_input
from difforge.models.autoencoder import AutoencoderCard, KLAutoencoder

CACHE_MAX_BYTES = 4 * 2**30  # means + log-variances of a split above this are not cached
ENCODE_BATCH = 500


def _digest(images: torch.Tensor, ae: KLAutoencoder) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    for k, v in sorted(ae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


class LatentSource:
    """`x0(idx, rows, generator)`: the scaled latents of images `idx[rows]`, on `device`."""

    def __init__(self, ae: KLAutoencoder, card: AutoencoderCard, images: torch.Tensor, device: torch.device, *,
                 cache: bool = True, cache_dir: Path | None = None, name: str = "train",
                 log: Callable[[str], None] | None = None):
        self.ae, self.card, self.images, self.device = ae, card, images, device
        self.shape = (card.latent_channels, card.latent_size, card.latent_size)
        need = 2 * len(images) * card.latent_channels * card.latent_size ** 2 * 4
        self.cached = cache and need <= CACHE_MAX_BYTES
        if cache and not self.cached and log:
            log(f"note: the {name} latents would take {need / 2**30:.1f} GiB: encoding each batch as it is drawn")
        self.mean = self.logvar = None
        if self.cached:
            self.mean, self.logvar = self._load_or_encode(cache_dir, name, log)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> the posterior's (mean, logvar), float32 on the CPU."""
        means, logvars = [], []
        for s in range(0, len(images), ENCODE_BATCH):
            x = to_model_input(images[s: s + ENCODE_BATCH], self.card.image_size).to(self.device)
            mean, logvar = self.ae.encode(x)
            means.append(mean.float().cpu())
            logvars.append(logvar.float().cpu())
        empty = torch.zeros(0, *self.shape)
        return (torch.cat(means), torch.cat(logvars)) if means else (empty, empty.clone())

    def _load_or_encode(self, cache_dir: Path | None, name: str, log) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors.torch import load_file, save_file

        path = None
        if cache_dir is not None:
            path = cache_dir / f"latents-{name}-{_digest(self.images, self.ae)}.safetensors"
            if path.is_file():
                try:
                    t = load_file(str(path))
                    if tuple(t["mean"].shape) == (len(self.images), *self.shape):
                        return t["mean"], t["logvar"]
                except Exception:  # noqa: BLE001 - a damaged cache is recomputed
                    pass
        if log:
            log(f"encoding {len(self.images)} {name} images to latents {'x'.join(map(str, self.shape))}"
                + (f" (cached in {cache_dir})" if path is not None else ""))
        mean, logvar = self.encode(self.images)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"mean": mean.contiguous(), "logvar": logvar.contiguous()}, str(tmp))
            tmp.replace(path)
        return mean, logvar

    def x0(self, idx: torch.Tensor, rows: slice, generator: torch.Generator) -> torch.Tensor:
        """scale * (mean + exp(logvar / 2) * n) for images idx[rows]; n is drawn for all of
        `idx` from `generator` (CPU) and sliced."""
        noise = torch.randn(len(idx), *self.shape, generator=generator)[rows]
        mine = idx[rows]
        if self.cached:
            mean, logvar = self.mean[mine], self.logvar[mine]
        else:
            mean, logvar = self.encode(self.images[mine])
        z = mean + torch.exp(0.5 * logvar) * noise
        return (self.card.scale * z).to(self.device)
