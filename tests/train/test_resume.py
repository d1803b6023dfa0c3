"""Exact resume: N steps straight equals k steps + resume + (N - k) steps, bit for bit."""

import json

import pytest
import torch
from safetensors.torch import load_file

from difforge.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from difforge.train.checkpoint import find_resumable
from difforge.train.loop import train


def _cfg(out, **train_kw):
    t = dict(max_steps=12, batch_size=16, checkpoint_every=0, sample_every=0, log_every=1,
             ema_warmup=3, ema_decay=0.9, lr=1e-3, **train_kw)
    return RunConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(preset="tiny"),
        train=TrainConfig(**t),
        out=str(out),
    )


def _state(run_dir):
    ckpt, _ = find_resumable(run_dir / "checkpoints")
    state = torch.load(ckpt / "train_state.pt", weights_only=True)
    return load_file(ckpt / "model.safetensors"), load_file(ckpt / "ema.safetensors"), state


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: the quick-start setting
def test_resume_is_bit_exact(tmp_path, monkeypatch, precision):
    monkeypatch.setattr("difforge.train.trainer.VAL_MAX_IMAGES", 64)
    straight = train(_cfg(tmp_path / "a", precision=precision, final_grid=False), progress=False)
    assert straight.step == 12 and not straight.stopped_early

    first = train(_cfg(tmp_path / "b", precision=precision, final_grid=False), progress=False, stop_after=5)
    assert first.stopped_early and first.step == 5
    second = train(_cfg(tmp_path / "b"), resume=True, progress=False)  # the run's own config: bf16 too
    assert second.step == 12

    m1, e1, s1 = _state(tmp_path / "a")
    m2, e2, s2 = _state(tmp_path / "b")
    _assert_same(m1, m2)
    _assert_same(e1, e2)
    assert s1["ema"] == s2["ema"]
    o1, o2 = s1["optimizer"]["state"], s2["optimizer"]["state"]
    for k in o1:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(o1[k][name], o2[k][name])
    assert s1["scheduler"]["last_epoch"] == s2["scheduler"]["last_epoch"] == 12
    assert torch.equal(s1["rng"]["train"], s2["rng"]["train"])
    # The logged training losses agree too.
    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    assert losses(tmp_path / "a") == losses(tmp_path / "b") != []
    if precision == "bf16":  # autocast really ran: bf16 losses differ from fp32 ones on the same data
        fp32 = train(_cfg(tmp_path / "c", final_grid=False), progress=False)
        assert fp32.step == 12 and losses(tmp_path / "c") != losses(tmp_path / "a")


def test_refuses_to_overwrite_a_run(tmp_path):
    import pytest

    from difforge.config import ConfigError

    train(_cfg(tmp_path / "a", ), progress=False, stop_after=2)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_cfg(tmp_path / "a"), progress=False)
