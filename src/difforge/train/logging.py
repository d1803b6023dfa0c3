"""Where training metrics go: metrics.jsonl always; W&B and TensorBoard when asked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def missing_backends(wandb: bool, tensorboard: bool) -> list[str]:
    """One message per asked-for logging backend whose package is not installed, so that
    training can refuse before it writes anything."""
    import importlib.util

    missing = []
    if wandb and importlib.util.find_spec("wandb") is None:
        missing.append("--wandb needs the wandb package: pip install 'difforge[wandb]'")
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        missing.append("--tensorboard needs the tensorboard package: pip install 'difforge[tensorboard]'")
    return missing


class MetricsLogger:
    """Fan out scalars and images to every enabled backend. Rank 0 only."""

    def __init__(self, run_dir: Path, config: dict, *, wandb: bool = False, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._wandb = None
        self._tb = None
        if wandb:
            try:
                import wandb as wb
            except ImportError:
                raise RuntimeError("--wandb needs the wandb package: pip install 'difforge[wandb]'") from None
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            self._wandb = wb.init(
                project=os.environ.get("WANDB_PROJECT", "difforge"),
                name=self.run_dir.name,
                dir=str(self.run_dir),
                config=config,
                mode=mode,
                resume="allow",
                id=self._wandb_id(),
            )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError(
                    "--tensorboard needs the tensorboard package: pip install 'difforge[tensorboard]'"
                ) from None
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _wandb_id(self) -> str:
        """A stable run id kept in the run directory, so a resumed run continues its W&B run."""
        path = self.run_dir / ".wandb_id"
        if not path.exists():
            import uuid

            path.write_text(uuid.uuid4().hex[:12])
        return path.read_text().strip()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)

    def log_image(self, step: int, name: str, path: Path) -> None:
        if self._wandb is not None:
            import wandb as wb

            self._wandb.log({name: wb.Image(str(path))}, step=step)
        if self._tb is not None:
            import numpy as np
            from PIL import Image

            arr = np.asarray(Image.open(path).convert("RGB"))
            self._tb.add_image(name, arr, step, dataformats="HWC")

    def log_artifact(self, directory: Path, name: str = "model") -> None:
        if self._wandb is not None:
            import wandb as wb

            art = wb.Artifact(name, type="model")
            art.add_dir(str(directory))
            self._wandb.log_artifact(art)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class NullLogger:
    """What ranks other than 0 log to under torchrun: nothing."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def log_image(self, step: int, name: str, path: Path) -> None:
        pass

    def log_artifact(self, directory: Path, name: str = "model") -> None:
        pass

    def close(self) -> None:
        pass
