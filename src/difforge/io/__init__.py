"""Tensor <-> pixels: PNG grids, GIFs, npz. The only pixel-format code in difforge."""

from difforge.io.images import make_grid, save_gif, save_grid, save_npz, save_png_dir, to_uint8

__all__ = ["make_grid", "save_gif", "save_grid", "save_npz", "save_png_dir", "to_uint8"]
