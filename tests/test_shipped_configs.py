"""Every config shipped in configs/ loads, passes validation (its model's architecture
arguments included, built on the meta device) and names a dataset and a run folder."""

from pathlib import Path

import pytest

from difforge.config import load_config, validate

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_are_found():
    assert {p.stem for p in CONFIGS} >= {"quickstart", "video", "video-rvd", "text"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_shipped_config_validates(path):
    cfg = validate(load_config(path))
    assert cfg.out.startswith("runs/")
    assert cfg.train.max_steps and cfg.train.max_steps > 0
