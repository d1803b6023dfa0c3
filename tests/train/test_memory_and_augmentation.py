"""Gradient accumulation, gradient checkpointing, horizontal flips and the device choice."""

import pytest
import torch
from safetensors.torch import load_file

from difforge.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, config_from_dict
from difforge.models import build_model
from difforge.train import distributed
from difforge.train.checkpoint import find_resumable
from difforge.train.loop import train
from difforge.train.trainer import Trainer


def _cfg(out, data=None, model=None, **train_kw):
    t = dict(max_steps=3, batch_size=16, checkpoint_every=0, sample_every=0, log_every=1, ema_warmup=1,
             lr=1e-3, device="cpu", final_grid=False)
    t.update(train_kw)
    return RunConfig(data=DataConfig(dataset="digits", val_fraction=0.0, **(data or {})),
                     model=ModelConfig(preset="tiny", **(model or {})), train=TrainConfig(**t), out=str(out))


def _weights(run):
    ckpt, _ = find_resumable(run / "checkpoints")
    return load_file(ckpt / "model.safetensors")


def test_two_micro_batches_of_8_give_the_gradients_of_one_batch_of_16(tmp_path):
    """fp32, one step's batch: the same loss and gradients to float rounding, and the
    training generator left where one big draw leaves it."""
    one, two = _trainer(tmp_path, "one"), _trainer(tmp_path, "two", grad_accum=2)
    for t in (one, two):  # a non-zero output layer (it starts at zero), so every gradient flows
        with torch.no_grad():
            t.model.out_conv.weight.copy_(torch.randn(t.model.out_conv.weight.shape,
                                                      generator=torch.Generator().manual_seed(5)) * 0.1)
    x0, cond, n = one.batch()
    assert torch.equal(two.batch()[0], x0)
    loss, finite, value = one.forward(x0, cond, n)
    loss.backward()
    left, finite2, value2 = two.forward(x0, cond, n)
    assert left is None and finite and finite2 and value2 == pytest.approx(value, rel=1e-6)
    assert torch.equal(one.gen.get_state(), two.gen.get_state())
    scale = max(float(p.grad.abs().max()) for p in one.model.parameters())  # rounding is relative to the sums
    for (name, p), q in zip(one.model.named_parameters(), two.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6 * scale, msg=name)
    assert all(p.grad.abs().max() > 0 for p in one.model.parameters() if p.ndim > 1)  # every weight learns


def test_two_micro_batches_of_8_update_as_one_batch_of_16(tmp_path):
    """fp32: the same weights after 3 AdamW steps. Biases that feed a GroupNorm have a zero
    gradient in exact arithmetic; Adam divides their rounding noise by its own size, so
    those may move by up to lr / 100 apart: the tolerance (the rest agree to ~1e-7)."""
    one = train(_cfg(tmp_path / "one"), progress=False)
    two = train(_cfg(tmp_path / "two", grad_accum=2), progress=False)
    assert one.step == two.step == 3
    a, b, init = _weights(tmp_path / "one"), _weights(tmp_path / "two"), _weights_at_init()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    assert max((a[k] - init[k]).abs().max() for k in a) > 1e-3  # training moved the weights: lr 1e-3, 3 steps


def _weights_at_init():
    torch.manual_seed(0)
    return build_model("tiny", in_channels=1, num_classes=10).state_dict()


def _trainer(tmp_path, name, grad_accum=1, **data):
    cfg = _cfg(tmp_path / name, data=data, model={"conditional": False}, grad_accum=grad_accum)
    t = Trainer(cfg, tmp_path / name, distributed.world_from_env({}), torch.device("cpu"), None, progress=False,
                stop_after=None)
    t.load_data()
    t.describe_model()
    t.build()
    return t


def test_hflip_mirrors_the_images_drawn_from_the_training_generator(tmp_path):
    plain, flipped = _trainer(tmp_path, "a"), _trainer(tmp_path, "b", hflip=True)
    x, _, n = plain.batch()
    y, _, _ = flipped.batch()
    expected = torch.rand(n, generator=torch.Generator().manual_seed(0 + 1)) < 0.5  # train.seed + 1, first draw
    for i in range(n):
        assert torch.equal(y[i], x[i].flip(-1) if expected[i] else x[i]), i
    assert 0 < int(expected.sum()) < n
    assert torch.equal(plain.gen.get_state(), torch.Generator().manual_seed(1).get_state())  # off: no draw


@pytest.mark.parametrize("options", [{"data": {"hflip": True}}, {"grad_accum": 4}])
def test_resume_stays_bit_exact_with_the_new_options(tmp_path, options):
    kw = dict(options, max_steps=6)
    train(_cfg(tmp_path / "a", **kw), progress=False)
    train(_cfg(tmp_path / "b", **kw), progress=False, stop_after=2)
    train(_cfg(tmp_path / "b", **kw), resume=True, progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_grad_checkpoint_gives_the_same_loss_and_gradients():
    """With dropout on: the recomputed forward replays the RNG, so even the masks match."""
    torch.manual_seed(0)
    net = build_model("tiny", in_channels=1, num_classes=3, kwargs={"dropout": 0.3}).train()
    x, c, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 0])

    def run(on: bool):
        net.grad_checkpoint = on
        net.zero_grad()
        torch.manual_seed(7)
        loss = (net(x, c, y) ** 2 + net(x, c, y)).mean()  # a non-trivial function of the output
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    with torch.no_grad():
        for p in net.out_conv.parameters():  # a non-zero output layer, so every gradient flows
            p.normal_(0, 0.1)
    (l0, g0), (l1, g1) = run(False), run(True)
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)
    assert sum(g.abs().sum() for g in g0.values()) > 0


def test_new_keys_are_config_fields_with_one_line_errors():
    cfg = config_from_dict({"train": {"grad_accum": 2}, "model": {"grad_checkpoint": True}, "data": {"hflip": True}})
    assert (cfg.train.grad_accum, cfg.model.grad_checkpoint, cfg.data.hflip) == (2, True, True)
    default = RunConfig()
    assert (default.train.grad_accum, default.model.grad_checkpoint, default.data.hflip) == (1, False, False)
    for d, match in [({"train": {"grad_accum": 0}}, "grad_accum must be in 1..batch_size"),
                     ({"train": {"grad_accum": 200, "batch_size": 128}}, "grad_accum must be in 1..batch_size"),
                     ({"model": {"grad_checkpoint": True, "preset": "unet-seed"}}, "does not support")]:
        with pytest.raises(ConfigError, match=match) as e:
            config_from_dict(d)
        assert "\n" not in str(e.value)


def test_auto_device_prefers_cuda_then_mps(monkeypatch):
    from difforge import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "mps_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(runtime, "mps_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="MPS .* is not available"):
        runtime.resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime, "mps_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        runtime.resolve_device("gpu")


def test_auto_precision_takes_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    from difforge import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    assert runtime.autocast_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    assert runtime.autocast_dtype("auto", cpu) is None
    assert runtime.resolve_precision("bf16", cpu) == "bf16"  # asked for explicitly: as given
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert runtime.resolve_precision("auto", torch.device("mps")) == "fp32"
    assert config_from_dict({"train": {"precision": "auto"}}).train.precision == "auto"
