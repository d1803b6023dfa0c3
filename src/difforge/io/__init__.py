"""Tensor <-> pixels: PNG grids, GIFs, npz. The only pixel-format code in difforge."""

from difforge.io.images import make_grid, save_gif, save_grid, save_npz, to_uint8

__all__ = ["make_grid", "save_gif", "save_grid", "save_npz", "to_uint8"]
