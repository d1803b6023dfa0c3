"""Training: the loop, EMA, optimiser/LR setup, checkpoints with exact resume, logging.

The loop sees models only through `build_model` and the eps-prediction interface;
it has no architecture-specific branches.
"""
