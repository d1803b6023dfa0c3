"""The model side: networks (shared layers, the UNets, the name -> model registry), the
model object (`Denoiser`: a network with its noise process and prediction target), the
typed model card and its conditioning specs. Never imports train, eval, serve or tasks."""

from difforge.models.registry import PRESETS, Preset, build_model, size_multiple
from difforge.models.unet import UNet
from difforge.models.unet_seed import SeedUNet

__all__ = ["PRESETS", "Preset", "build_model", "size_multiple", "UNet", "SeedUNet"]
