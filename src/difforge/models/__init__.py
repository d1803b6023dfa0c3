"""Networks (nn.Modules only): shared layers, the UNets, and the name -> model registry."""

from difforge.models.registry import PRESETS, Preset, build_model, size_multiple
from difforge.models.unet import UNet
from difforge.models.unet_seed import SeedUNet

__all__ = ["PRESETS", "Preset", "build_model", "size_multiple", "UNet", "SeedUNet"]
