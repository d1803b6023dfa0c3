"""Non-finite losses and gradients (skip, roll back once, stop naming the cause), a
malicious pickle in place of train_state, and impossible set-ups refused before any work."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from difforge.cli import main
from difforge.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from difforge.train import trainer as loop  # where the steps run
from difforge.train.loop import TrainingError, train


def _cfg(out, **train_kw):
    t = dict(max_steps=10, batch_size=16, checkpoint_every=4, keep_checkpoints=5, sample_every=0, log_every=1,
             ema_warmup=2, ema_decay=0.9, lr=1e-3, device="cpu")
    t.update(train_kw)
    # No validation split: every to_model_input call is a training step's.
    return RunConfig(data=DataConfig(dataset="digits", val_fraction=0.0), model=ModelConfig(preset="tiny"),
                     train=TrainConfig(**t), out=str(out))


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _nan_inputs_at(monkeypatch, bad_steps):
    """Training images become NaN (so the loss does) at the given steps."""
    calls = []
    real = loop.to_model_input

    def poisoned(images, size):
        x = real(images, size)
        calls.append(None)
        return x * float("nan") if len(calls) - 1 in bad_steps else x

    monkeypatch.setattr(loop, "to_model_input", poisoned)


def _nan_grads_at(monkeypatch, bad_steps):
    """The loss stays finite but one parameter's gradient is NaN at the given steps."""
    real = loop.build_model
    backward = []

    def build(*a, **k):
        model = real(*a, **k)
        p = next(model.parameters())

        def hook(g):
            backward.append(None)
            return g * float("nan") if len(backward) - 1 in bad_steps else g

        p.register_hook(hook)
        return model

    monkeypatch.setattr(loop, "build_model", build)


def test_nonfinite_losses_are_skipped(tmp_path, monkeypatch, capsys):
    _nan_inputs_at(monkeypatch, {3, 4})
    result = train(_cfg(tmp_path / "r"), progress=False)
    out = capsys.readouterr().out
    assert "non-finite loss at step 3: step skipped" in out and "2 of 10 steps were skipped" in out
    assert result.step == 10 and not result.stopped_early
    skipped = {r["step"]: r["skipped_nonfinite"] for r in _rows(tmp_path / "r") if "skipped_nonfinite" in r}
    assert skipped == {3: "loss", 4: "loss"}
    state = torch.load(tmp_path / "r" / "checkpoints" / "step-10" / "train_state.pt", weights_only=True)
    assert state["ema"]["step"] == 8 and state["skipped"] == 2 and state["rollbacks"] == 0  # 2 of 10 updates skipped
    weights = load_file(tmp_path / "r" / "checkpoints" / "step-10" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_streak_of_nonfinite_gradients_rolls_back_to_the_checkpoint(tmp_path, monkeypatch):
    # Steps 0-5 train, 6 and 7 have NaN gradients: with 2 allowed in a row the run rolls back
    # to step-4 at step 8, so the checkpoint written at step 8 holds step 4's state exactly.
    monkeypatch.setattr(loop, "MAX_BAD_STEPS", 2)
    _nan_grads_at(monkeypatch, {6, 7})
    result = train(_cfg(tmp_path / "r"), progress=False)
    assert result.step == 10 and not result.stopped_early
    ck = tmp_path / "r" / "checkpoints"
    for f in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(ck / "step-4" / f), load_file(ck / "step-8" / f)
        assert all(torch.equal(a[k], b[k]) for k in a), f
    s4, s8 = (torch.load(ck / s / "train_state.pt", weights_only=True) for s in ("step-4", "step-8"))
    o4, o8 = s4["optimizer"]["state"], s8["optimizer"]["state"]
    assert all(torch.equal(o4[k]["exp_avg"], o8[k]["exp_avg"]) for k in o4)
    assert s8["rollbacks"] == 1 and s8["scheduler"]["last_epoch"] == 8  # the schedule goes on
    rows = _rows(tmp_path / "r")
    assert [r["rollback_to"] for r in rows if "rollback_to" in r] == [4]
    assert [r["step"] for r in rows if r.get("skipped_nonfinite") == "gradients"] == [6, 7]


def test_second_streak_stops_naming_the_learning_rate(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "MAX_BAD_STEPS", 2)
    _nan_inputs_at(monkeypatch, set(range(5, 100)))
    with pytest.raises(TrainingError, match=r"again after rolling back.*learning rate \(0\.001\).*--lr"):
        train(_cfg(tmp_path / "r"), progress=False)
    assert "rolled weights, EMA and optimizer back to step-4" in capsys.readouterr().out


def test_streak_without_checkpoint_stops_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "MAX_BAD_STEPS", 3)
    _nan_inputs_at(monkeypatch, set(range(100)))
    with pytest.raises(TrainingError, match="3 non-finite .* at step 3, and no checkpoint to roll back to"):
        train(_cfg(tmp_path / "r", checkpoint_every=0), progress=False)


def test_malicious_pickle_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "2", "--batch-size", "8",
              "--sample-every", "0", "--out", str(run), "--no-progress"])
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = run / "checkpoints" / "step-2"
    torch.save({"step": 2, "x": Evil()}, ckpt / "train_state.pt")
    meta = json.loads((ckpt / "meta.json").read_text())  # an attacker can fix the hash too
    meta["sha256"]["train_state.pt"] = hashlib.sha256((ckpt / "train_state.pt").read_bytes()).hexdigest()
    (ckpt / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", "--out", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "refusing to load" in err and "could run code" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("train_kw, message", [
    (dict(precision="fp16"), "fp16 needs a CUDA device"),
])
def test_impossible_setups_fail_before_any_work(tmp_path, train_kw, message):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=message):
        train(_cfg(out, **train_kw), progress=False)
    assert not out.exists()  # nothing written


def test_corrupt_latest_checkpoint_is_reported_and_the_previous_used(tmp_path, capsys):
    cfg = _cfg(tmp_path / "r", max_steps=8, checkpoint_every=2)
    train(cfg, progress=False, stop_after=6)
    ema = tmp_path / "r" / "checkpoints" / "step-6" / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern in the weights
    ema.write_bytes(bytes(data))
    capsys.readouterr()
    result = train(cfg, resume=True, progress=False)
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "step-6: ema.safetensors does not match its hash" in out
    assert "from step-4 (step 4 of 8)" in out and result.step == 8 and not result.stopped_early
