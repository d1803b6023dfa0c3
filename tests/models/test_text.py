"""Text conditioning: the byte tokenizer, TextCond as a batch, cross-attention that never
sees padding, the text UNet (scratch and frozen-encoder paths), the `text` conditioning
kind (caption dropout, null, card round trip)."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch
from torch import nn

from difforge.diffusion.frameworks import FrameworkSpec
from difforge.models import build_model
from difforge.models.card import Architecture, ModelCard
from difforge.models.conditioning import KINDS, MINILM_DIM, TextPrompts, _conditioner, conditioning_from_dict
from difforge.models.layers import CrossAttention
from difforge.models.text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    ByteTokenizer,
    ScratchConditioner,
    ScratchTextEncoder,
    TextCond,
)
from difforge.models.unet import UNet

PROMPTS = ["a red square", "", "ein blauer Kreis \u00fcber Gr\u00fcn \U0001f600", "x"]
ENCODER = {"width": 16, "layers": 1, "heads": 2, "max_tokens": 48}  # a tiny scratch text encoder
CONDITIONER = ScratchConditioner(48, width=16)


def _perturb_all(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Every parameter moved by noise (zero-initialised output layers included), so outputs depend on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def _text_unet() -> UNet:
    torch.manual_seed(0)
    net = build_model("tiny", in_channels=3, num_classes=None, context_dim=16, pooled_dim=16, text_encoder=ENCODER)
    return _perturb_all(net).eval()


def _frozen_unet(context_dim: int = 12, pooled_dim: int | None = 6) -> UNet:
    torch.manual_seed(0)
    net = UNet(3, 3, None, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
               num_heads=2, context_dim=context_dim, pooled_dim=pooled_dim)
    return _perturb_all(net).eval()


def _frozen_cond(lengths: list[int], d: int = 12, p: int = 6, seed: int = 0) -> TextCond:
    g = torch.Generator().manual_seed(seed)
    length = max(lengths)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    emb = torch.randn(len(lengths), length, d, generator=g) * mask[..., None]
    return TextCond(mask=mask, emb=emb, pooled=torch.randn(len(lengths), p, generator=g))


def _xt(n: int, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.rand(n, generator=g) * 50


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_any_text_with_bos_eos_and_padding():
    tok = ByteTokenizer(64)
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID and len(ids) == len(prompt.encode("utf-8")) + 2
        assert tok.decode(ids) == prompt
    ids, mask = tok(PROMPTS)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == (4, max(len(p.encode()) for p in PROMPTS) + 2)
    assert torch.equal(mask, ids != PAD_ID) and bool(mask[:, :2].all())  # BOS and EOS always real
    assert [tok.decode(row) for row in ids] == PROMPTS
    assert ids[1].tolist()[:3] == [BOS_ID, EOS_ID, PAD_ID]  # the empty prompt


def test_too_long_prompt_is_a_one_line_error_or_truncated():
    with pytest.raises(ValueError) as e:
        ByteTokenizer(10)(["a prompt far too long\nfor ten tokens"])
    message = str(e.value)
    assert "38 tokens" in message and "limit of 10" in message and "\n" not in message
    cut = ByteTokenizer(10, truncate=True)
    ids = cut.encode("a prompt far too long")
    assert len(ids) == 10 and ids[0] == BOS_ID and ids[-1] == EOS_ID and cut.decode(ids) == "a prompt"
    # a multi-byte character is never split: 3 x 2 bytes into 5 byte slots keeps 2 characters
    assert cut.decode(ByteTokenizer(7, truncate=True).encode("\u00e9\u00e9\u00e9")) == "\u00e9\u00e9"
    assert len(ByteTokenizer(12).encode("x" * 10)) == 12  # exactly at the limit is fine
    with pytest.raises(ValueError, match="max_tokens must be >= 2"):
        ByteTokenizer(1)


def test_scratch_conditioner_gives_ids_and_mask():
    cond = CONDITIONER(PROMPTS)
    assert cond.emb is None and cond.pooled is None and len(cond) == 4
    one = CONDITIONER("a red square")  # a single string is one prompt
    assert len(one) == 1 and torch.equal(one.ids[0], cond.ids[0, : one.ids.shape[1]])
    with pytest.raises(ValueError, match="prompts must be strings"):
        CONDITIONER(["ok", 3])


# ---------------------------------------------------------------- TextCond


def test_textcond_cat_pads_then_equals_the_parts():
    a, b = CONDITIONER(["a", "bb"]), CONDITIONER(["a much longer prompt"])
    both = TextCond.cat([a, b])
    assert len(both) == 3 and both.ids.shape[1] == b.ids.shape[1]
    la = a.ids.shape[1]
    assert torch.equal(both.ids[:2, :la], a.ids) and torch.equal(both.mask[:2, :la], a.mask)
    assert not both.mask[:2, la:].any() and not both.ids[:2, la:].any()
    assert torch.equal(both.ids[2:], b.ids) and torch.equal(both.mask[2:], b.mask)
    f1, f2 = _frozen_cond([2, 3]), _frozen_cond([5], seed=1)
    ff = TextCond.cat([f1, f2])
    assert ff.emb.shape == (3, 5, 12) and not ff.emb[:2, 3:].any() and torch.equal(ff.emb[:2, :3], f1.emb)
    assert torch.equal(ff.pooled, torch.cat([f1.pooled, f2.pooled]))
    with pytest.raises(ValueError, match="different fields"):
        TextCond.cat([a, f1])


def test_textcond_indexes_moves_and_chooses_rows():
    cond = CONDITIONER(PROMPTS)
    assert torch.equal(cond[1:3].ids, cond.ids[1:3]) and len(cond[2]) == 1 and torch.equal(cond[-1].ids, cond.ids[3:])
    assert torch.equal(cond[torch.tensor([3, 0])].mask, cond.mask[[3, 0]])
    assert torch.equal(cond[torch.tensor([True, False, True, False])].ids, cond.ids[[0, 2]])
    assert cond.to("cpu").ids.device.type == "cpu" and cond.device.type == "cpu"
    null = CONDITIONER([""])
    keep = torch.tensor([True, False, False, True])
    mixed = cond.where(keep, null)  # a 1-row other is broadcast
    assert torch.equal(mixed.ids[[0, 3]], cond.ids[[0, 3]])
    assert torch.equal(mixed.ids[1:3, :2], null.ids.expand(2, 2)) and not mixed.mask[1:3, 2:].any()
    with pytest.raises(ValueError, match="2 rows cannot stand for 4"):
        cond.where(keep, cond[:2])
    with pytest.raises(ValueError, match="token ids .* or emb"):
        TextCond(mask=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="ids must be"):
        TextCond(mask=torch.ones(1, 2, dtype=torch.bool), ids=torch.zeros(1, 3, dtype=torch.long))


# ---------------------------------------------------------------- cross-attention and the scratch encoder


def test_cross_attention_ignores_padding_tokens():
    torch.manual_seed(0)
    layer = _perturb_all(CrossAttention(8, 12, heads=2))
    x = torch.randn(2, 8, 4, 4)
    cond = _frozen_cond([3, 5])
    out = layer(x, cond.emb, cond.mask)
    changed = cond.emb + 100.0 * torch.randn(cond.emb.shape) * ~cond.mask[..., None]
    assert torch.equal(layer(x, changed, cond.mask), out)  # masked keys get exactly zero weight
    # without the mask the padding would matter
    assert not torch.allclose(layer(x, changed, None), layer(x, cond.emb, None))
    # a row attends only to its own real tokens: row 0 alone, at its own length, is the same
    alone = layer(x[:1], cond.emb[:1, :3], cond.mask[:1, :3])
    assert torch.allclose(alone, out[:1], atol=1e-6)


def test_scratch_encoder_pools_the_eos_state_and_ignores_padding():
    torch.manual_seed(0)
    enc = ScratchTextEncoder(width=16, layers=2, heads=2, max_tokens=32).eval()
    cond = ScratchConditioner(32, 16)(["hello", "a much longer prompt"])
    tokens, pooled = enc(cond.ids, cond.mask)
    assert tokens.shape == (2, cond.ids.shape[1], 16) and pooled.shape == (2, 16)
    assert torch.equal(pooled[0], tokens[0, 6]) and torch.equal(pooled[1], tokens[1, -1])  # EOS rows
    t0, p0 = enc(cond.ids[:1, :7], cond.mask[:1, :7])  # "hello" without padding
    assert torch.allclose(t0, tokens[:1, :7], atol=1e-5) and torch.allclose(p0, pooled[:1], atol=1e-5)
    with pytest.raises(ValueError, match="more than this text encoder's max_tokens 32"):
        enc(torch.ones(1, 33, dtype=torch.long), torch.ones(1, 33, dtype=torch.bool))


# ---------------------------------------------------------------- the text UNet


def test_text_unet_padding_has_no_effect_frozen_path():
    net = _frozen_unet()
    x, t = _xt(2)
    cond = _frozen_cond([3, 6])
    with torch.no_grad():
        out = net(x, t, cond)
        changed = TextCond(mask=cond.mask, emb=cond.emb + 50.0 * ~cond.mask[..., None], pooled=cond.pooled)
        assert torch.equal(net(x, t, changed), out)
        longer = TextCond.cat([cond, _frozen_cond([9], seed=3)])[:2]  # padded to 9 tokens
        assert torch.allclose(net(x, t, longer), out, atol=1e-5)
        assert not torch.allclose(net(x, t, _frozen_cond([3, 6], seed=5)), out)  # the text matters


@pytest.mark.parametrize("path", ["scratch", "frozen"])
def test_a_batch_of_prompts_equals_each_prompt_alone(path):
    if path == "scratch":
        net, conditioner = _text_unet(), CONDITIONER
        cond, parts = conditioner(PROMPTS), [conditioner([p]) for p in PROMPTS]
    else:
        net = _frozen_unet()
        parts = [_frozen_cond([n], seed=n) for n in (1, 4, 7, 2)]
        cond = TextCond.cat(parts)
    x, t = _xt(4)
    with torch.no_grad():
        batched = net(x, t, cond)
        alone = torch.cat([net(x[i : i + 1], t[i : i + 1], parts[i]) for i in range(4)])
        assert torch.allclose(batched, alone, atol=1e-5)
        assert batched.abs().mean() > 0.1  # a network whose output depends on its input
        assert not torch.allclose(net(x, t, cond[torch.tensor([1, 0, 3, 2])]), batched, atol=1e-3)


def test_no_text_no_new_parameters():
    torch.manual_seed(0)
    plain = build_model("tiny", in_channels=1, num_classes=10)
    assert not [n for n in plain.state_dict() if "cross" in n or "text" in n or "pooled" in n]
    assert plain.context_dim is None and plain.text_encoder is None
    text = _text_unet()
    names = set(text.state_dict())
    assert any(n.startswith("text_encoder.") for n in names) and any(".cross." in n for n in names)
    assert any(n.startswith("pooled_proj.") for n in names)
    # the plain network's parameters are a subset: same names, same shapes
    plain3 = build_model("tiny", in_channels=3, num_classes=None).state_dict()
    assert all(text.state_dict()[n].shape == v.shape for n, v in plain3.items())


def test_text_unet_errors_are_clear():
    net = _text_unet()
    x, t = _xt(2)
    with pytest.raises(ValueError, match="needs a TextCond"):
        net(x, t, None)
    with pytest.raises(ValueError, match="1 prompts for a batch of 2"):
        net(x, t, CONDITIONER(["one"]))
    with pytest.raises(ValueError, match="encodes token ids itself"):
        net(x, t, _frozen_cond([2, 3], d=16, p=16))
    frozen = _frozen_unet()
    with pytest.raises(ValueError, match="token embeddings of width 12"):
        frozen(x, t, _frozen_cond([2, 3], d=8))
    with pytest.raises(ValueError, match="pooled text embedding of width 6"):
        frozen(x, t, TextCond(mask=torch.ones(2, 2, dtype=torch.bool), emb=torch.zeros(2, 2, 12)))
    for bad, message in [(dict(num_classes=3), "takes no class labels"),
                         (dict(attention_levels=(), mid_attention=False), "needs attention"),
                         (dict(pooled_dim=4), "needs the text tokens"),
                         (dict(context_dim=8, text_encoder={"width": 16}), "must be the text encoder's width 16")]:
        kw = {"context_dim": 12, **bad} if "context_dim" not in bad and "pooled_dim" not in bad else bad
        with pytest.raises(ValueError, match=message):
            UNet(3, 3, kw.pop("num_classes", None), base_channels=8, channel_mults=(1, 2), **kw)
    with pytest.raises(ValueError, match="cannot take text"):
        build_model("unet-seed", in_channels=3, num_classes=None, context_dim=8)


def test_gradient_reaches_every_text_parameter_and_checkpointing_agrees():
    net = _text_unet().train()
    cond = CONDITIONER(PROMPTS)
    x, t = _xt(4)
    w = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    grads = {}
    for on in (False, True):
        net.zero_grad()
        net.grad_checkpoint = on
        loss = (net(x, t, cond) * w).sum()
        loss.backward()
        grads[on] = (loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    net.grad_checkpoint = False
    (loss0, g0), (loss1, g1) = grads[False], grads[True]
    assert torch.allclose(loss0, loss1) and g0.keys() == g1.keys()
    assert all(torch.allclose(g0[n], g1[n], atol=1e-5) for n in g0)
    unused = {"text_encoder.token.weight", "text_encoder.position"}  # only the rows of tokens seen
    missing = [n for n, p in net.named_parameters() if n not in unused and (n not in g0 or not g0[n].abs().sum() > 0)]
    assert not missing
    used = torch.unique(cond.ids[cond.mask])  # PAD never reaches the output: its row gets no gradient
    assert bool((g0["text_encoder.token.weight"][used].abs().sum(1) > 0).all())


def test_text_unet_runs_under_bf16_autocast():
    net = _text_unet().train()
    x, t = _xt(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, CONDITIONER(PROMPTS[:2]))
    out.float().square().mean().backward()
    assert out.shape == x.shape


# ---------------------------------------------------------------- the `text` conditioning kind

SPEC = TextPrompts("scratch", 48, width=16, layers=1, heads=2)


def test_unet_text_preset_builds_with_a_text_spec():
    spec = TextPrompts("scratch", 64)
    net = build_model("unet-text", in_channels=3, num_classes=None,
                      **{k: v for k, v in spec.network_kwargs(3).items() if k != "num_classes"})
    crosses = sum(isinstance(m, CrossAttention) for m in net.modules())
    assert net.context_dim == 128 and crosses == 7  # levels 1 and 2: 2 down, 4 up; 1 in the middle


def test_text_prompts_spec_round_trips_and_knows_its_network():
    assert KINDS["text"] is TextPrompts and SPEC.task == "generate"
    for spec in (SPEC, TextPrompts("minilm", 128)):
        assert conditioning_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert SPEC.to_dict() == {"kind": "text", "encoder": "scratch", "max_tokens": 48, "width": 16, "layers": 1,
                              "heads": 2}
    net_kwargs = SPEC.network_kwargs(3)
    assert net_kwargs == {"num_classes": None, "context_dim": 16, "pooled_dim": 16, "text_encoder": ENCODER}
    assert TextPrompts("minilm", 128).network_kwargs(3) == {"num_classes": None, "context_dim": MINILM_DIM,
                                                            "pooled_dim": MINILM_DIM, "text_encoder": None}
    for bad, message in [(("clip", 8), "unknown text encoder 'clip'"), (("scratch", 1), "max_tokens must be >= 2"),
                         (("scratch", 8, 10, 1, 4), "heads dividing width")]:
        with pytest.raises(ValueError, match=message):
            TextPrompts(*bad)


def test_null_is_the_empty_prompt_and_the_conditioner_is_cached():
    null = SPEC.null(3)
    assert len(null) == 3 and null.ids.tolist() == [[BOS_ID, EOS_ID]] * 3 and bool(null.mask.all())
    assert SPEC.conditioner() is SPEC.conditioner() and SPEC.conditioner().context_dim == 16
    assert SPEC.conditioner(truncate=True)(["x" * 100]).ids.shape == (1, 48)


def test_caption_dropout_rate_and_dropped_rows_are_the_null():
    n, p = 4000, 0.3
    cond = SPEC.conditioner()(["a red square", "a blue circle"] * (n // 2))
    dropped = SPEC.drop(cond, p, torch.Generator().manual_seed(0))
    null = SPEC.null(1)
    is_null = (dropped.ids[:, :2] == null.ids).all(1) & ~dropped.mask[:, 2:].any(1)
    k = int(is_null.sum())
    assert abs(k - n * p) < 4.5 * math.sqrt(n * p * (1 - p))  # a binomial(n, p) count, fixed generator
    assert torch.equal(dropped.ids[~is_null], cond.ids[~is_null]) and torch.equal(dropped.mask[~is_null],
                                                                                  cond.mask[~is_null])
    again = SPEC.drop(cond, p, torch.Generator().manual_seed(0))
    assert torch.equal(again.ids, dropped.ids)  # reproducible
    assert SPEC.drop(cond, 0.0) is cond and bool(SPEC.drop(cond[:8], 1.0).mask[:, 2:].sum() == 0)


def test_minilm_conditioner_is_imported_lazily_with_max_tokens(monkeypatch):
    made = []

    class Fake:
        def __init__(self, max_tokens, **kw):
            made.append((max_tokens, kw))

    monkeypatch.setitem(sys.modules, "difforge.models.minilm", types.SimpleNamespace(MiniLMConditioner=Fake))
    _conditioner.cache_clear()
    try:
        assert isinstance(TextPrompts("minilm", 77).conditioner(), Fake)
        TextPrompts("minilm", 77).conditioner(truncate=True)
    finally:
        _conditioner.cache_clear()
    assert made == [(77, {}), (77, {"truncate": True})]


def test_model_card_with_text_round_trips_and_builds_a_denoiser():
    card = ModelCard(Architecture("tiny", {"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1,
                                           "attention_levels": (1,), "num_heads": 2}),
                     8, 8, 3, FrameworkSpec("edm"), None, SPEC)
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card and again.conditioning == SPEC and again.num_classes is None
    den = again.denoiser()
    assert den.net.context_dim == 16 and isinstance(den.net.text_encoder, ScratchTextEncoder)
    x = torch.zeros(2, 3, 8, 8)
    assert den(x, 1.0, SPEC.null(2)).shape == x.shape


@pytest.mark.slow  # ~5-10 s on two CPU cores; still part of CI
def test_a_tiny_text_unet_learns_two_prompts():
    """Trained with caption dropout on two prompts, each a flat colour, the model samples
    (with guidance from the empty prompt) the colour its prompt names."""
    from difforge.sampling import CFGDenoiser, sample_heun

    spec = TextPrompts("scratch", 16, width=16, layers=1, heads=2)
    card = ModelCard(Architecture("tiny", {"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1,
                                           "attention_levels": (1,), "num_heads": 2}),
                     8, 8, 3, FrameworkSpec("edm"), None, spec)
    torch.manual_seed(0)
    den = card.denoiser()
    colours = {"red": torch.tensor([1.0, -1.0, -1.0]), "blue": torch.tensor([-1.0, -1.0, 1.0])}
    prompts = ["red", "blue"] * 8
    x0 = torch.stack([colours[p] for p in prompts])[:, :, None, None].expand(-1, 3, 8, 8).contiguous()
    cond = spec.conditioner()(prompts)
    opt = torch.optim.AdamW(den.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = den.loss(x0, spec.drop(cond, 0.2, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    den.eval()
    sigmas = torch.tensor([80.0, 20.0, 5.0, 1.0, 0.2, 0.0], dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 80.0
    guided = CFGDenoiser(den, 2.0, null=spec.null(1))
    with torch.no_grad():
        out = sample_heun(guided, x, sigmas, cond=spec.conditioner()(["red", "blue"]))
    means = out.mean((2, 3))  # (2, 3): per prompt, per channel
    assert torch.allclose(means.sign(), torch.stack(list(colours.values()))), means
