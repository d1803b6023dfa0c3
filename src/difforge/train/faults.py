"""What the Trainer does when a step goes wrong: a non-finite loss or gradient skips the
step; MAX_BAD_STEPS in a row roll weights, EMA and optimiser back to the last checkpoint
once, then stop with the likely cause named."""

from __future__ import annotations

import warnings

import torch

MAX_BAD_STEPS = 20  # consecutive non-finite steps before a rollback (once), then a stop


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. non-finite losses persist after a rollback)."""


class FaultHandling:
    """Mixed into the Trainer: uses its step counters, scheduler, logger and checkpoints."""

    def skip_step(self, what: str) -> None:
        with warnings.catch_warnings():  # a skipped first step is not a misordered scheduler
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.bad_in_a_row += 1
        self.skipped += 1
        self.logger.log(self.step, {"skipped_nonfinite": what})
        if self.bad_in_a_row == 1:
            self.say(f"warning: non-finite {what} at step {self.step}: step skipped")

    def non_finite_streak(self) -> None:
        """MAX_BAD_STEPS non-finite steps in a row: roll back once, else stop."""
        streak = self.bad_in_a_row
        ckpt = self.newest_checkpoint() if self.rollbacks == 0 else None
        if ckpt is not None:
            self.load_weights_and_optimizer(ckpt)
            self.rollbacks += 1
            self.bad_in_a_row = 0
            self.logger.log(self.step, {"rollback_to": int(ckpt.name[5:])})
            self.say(f"warning: {streak} non-finite steps in a row at step {self.step}: rolled weights, EMA "
                     f"and optimizer back to {ckpt.name}; going on from step {self.step} with the following batches")
            return
        if self.amp_dtype == torch.float16:
            hint = "fp16 overflow is the likely cause: train with --precision bf16 (or fp32)"
        else:
            hint = f"the learning rate ({self.cfg.train.lr:g}) is the likely cause: try a lower --lr"
        when = ("again after rolling back to the last checkpoint" if self.rollbacks
                else "and no checkpoint to roll back to")
        raise TrainingError(f"{streak} non-finite losses or gradients in a row at step {self.step}, {when}; "
                            f"{hint}")
