"""EMA against its formula, the warm-up copy rule, and per-sample label dropout."""

import torch
from torch import nn

from difforge.models.conditioning import drop_labels
from difforge.train.ema import EMA


def test_ema_warmup_copies_then_follows_formula():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup=2)
    history = []
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        history.append([p.detach().clone() for p in model.parameters()])
        ema.update(model)
    # Steps 0 and 1 copy; steps 2, 3, 4 average: e = 0.9 e + 0.1 w.
    expected = history[1]
    for w in history[2:]:
        expected = [0.9 * e + 0.1 * x for e, x in zip(expected, w)]
    for s, e in zip(ema.shadow.parameters(), expected):
        assert torch.allclose(s, e, atol=1e-6)
    assert ema.step == 5


def test_ema_during_warmup_equals_weights():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.995, warmup=10)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert torch.equal(ema.shadow.weight, model.weight)
    assert not ema.shadow.weight.requires_grad


def test_label_dropout_is_per_sample():
    labels = torch.zeros(100_000, dtype=torch.long)
    out = drop_labels(labels, 0.1, null_label=10, generator=torch.Generator().manual_seed(0))
    frac = (out == 10).float().mean().item()
    assert abs(frac - 0.1) < 0.005  # binomial sd ~ 0.001
    assert set(out.unique().tolist()) == {0, 10}
    # Per sample, not per batch: batches of 8 are neither all kept nor all dropped.
    batches = out.view(-1, 8)
    mixed = ((batches == 10).any(1) & (batches == 0).any(1)).float().mean().item()
    assert mixed > 0.5


def test_label_dropout_zero_keeps_labels():
    labels = torch.arange(10)
    assert torch.equal(drop_labels(labels, 0.0, 10), labels)
