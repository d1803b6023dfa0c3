"""Checkpoint files: round trip, hashes, fallback past a corrupt newest one, retention."""

import pytest
import torch

from difforge.train.checkpoint import (
    CheckpointError,
    find_resumable,
    load_checkpoint,
    save_checkpoint,
    step_dirs,
    verify_checkpoint,
)


def _save(root, step, keep=3):
    w = {"w": torch.full((3,), float(step))}
    state = {"step": step, "rng": torch.get_rng_state(), "nested": {"lr": [0.1, 0.2]}}
    return save_checkpoint(root, step, w, {"w": w["w"] * 2}, state, keep=keep)


def test_round_trip(tmp_path):
    path = _save(tmp_path, 7)
    model, ema, state = load_checkpoint(path)
    assert torch.equal(model["w"], torch.full((3,), 7.0))
    assert torch.equal(ema["w"], torch.full((3,), 14.0))
    assert state["step"] == 7 and state["nested"] == {"lr": [0.1, 0.2]}
    assert (tmp_path / "latest").read_text().strip() == "step-7"
    assert not list(tmp_path.glob(".tmp-*"))


def test_keeps_last_k(tmp_path):
    for s in (1, 2, 3, 4, 5):
        _save(tmp_path, s, keep=2)
    assert [p.name for p in step_dirs(tmp_path)] == ["step-4", "step-5"]


def test_truncated_newest_falls_back_to_previous(tmp_path):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    f = newest / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="does not match its hash"):
        verify_checkpoint(newest)
    found, problems = find_resumable(tmp_path)
    assert found.name == "step-1"
    assert len(problems) == 1 and "step-2" in problems[0]


def test_half_written_checkpoint_is_ignored(tmp_path):
    _save(tmp_path, 1)
    # A process killed mid-write leaves a temp dir (never a step-N dir without meta).
    (tmp_path / ".tmp-step-2-abc").mkdir()
    (tmp_path / "step-3").mkdir()  # no meta.json: incomplete
    found, problems = find_resumable(tmp_path)
    assert found.name == "step-1"
    assert any("meta.json missing" in p for p in problems)


def test_train_state_refuses_pickled_code(tmp_path):
    path = _save(tmp_path, 1)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, path / "train_state.pt")
    import hashlib
    import json

    meta = json.loads((path / "meta.json").read_text())
    meta["sha256"]["train_state.pt"] = hashlib.sha256((path / "train_state.pt").read_bytes()).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(path)
