"""One model, many image tasks: inpainting, restoration, denoising, super-resolution,
interpolation. Each is a thin layer over `difforge.sampling`: a wrapper around the
denoiser, a truncated sigma grid, or a per-step hook between sampler steps.

Images are float (N, C, H, W) in [-1, 1] at the model's native size, or the same pixels
as any kind `Pipeline.generate` returns: uint8 tensors (N, C, H, W), uint8 numpy arrays
(N, H, W, C) or PIL images (`difforge.io.formats`). `inpaint`, `restore`, `denoise`,
`upscale` and `interpolate` return the kind they were given: float in [-1, 1] for a float
tensor, uint8 pixels of that kind otherwise. Masks are (N, 1, H, W) with 1 = fill.
"""

from difforge.tasks import common
from difforge.tasks.ilvr import superres_ilvr
from difforge.tasks.inpaint import METHODS, inpaint, repaint_path
from difforge.tasks.interpolate import decode, interpolate, invert, slerp
from difforge.tasks.masks import PRESETS as MASK_PRESETS
from difforge.tasks.masks import make_mask, mask_from_array
from difforge.tasks.restore import denoise, restore
from difforge.tasks.superres import upscale

__all__ = [
    "METHODS",
    "common",
    "MASK_PRESETS",
    "decode",
    "denoise",
    "inpaint",
    "interpolate",
    "invert",
    "make_mask",
    "mask_from_array",
    "repaint_path",
    "restore",
    "slerp",
    "superres_ilvr",
    "upscale",
]
