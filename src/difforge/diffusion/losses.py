"""Training losses."""

from __future__ import annotations

import torch


def eps_mse_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and true noise (Ho et al. 2020, Eq. 14),
    averaged over every element; computed in float32 whatever the autocast dtype."""
    return torch.mean((eps_pred.float() - eps.float()) ** 2)
