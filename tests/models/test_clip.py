"""The contrastive image-text model: the symmetric InfoNCE loss against its closed form,
its symmetries, the clamped temperature, and the towers' unit embeddings."""

import math

import pytest
import torch
import torch.nn.functional as F

from difforge.models.clip import CLIPArch, CLIPModel, clip_loss
from difforge.models.text import ScratchConditioner, TextCond


def _by_hand(img, txt, scale, targets):
    """(1/2)(mean_i [-sum_j t_ij log softmax_j(L_i.)] + mean_j [-sum_i t_ji log softmax_i(L_.j)]), written out
    with explicit log-sum-exp over Python floats; t the target rows."""
    b = len(img)
    logits = [[scale * sum(a * c for a, c in zip(img[i], txt[j])) for j in range(b)] for i in range(b)]

    def direction(rows):
        total = 0.0
        for i in range(b):
            lse = math.log(sum(math.exp(v) for v in rows[i]))
            total += sum(-targets[i][j] * (rows[i][j] - lse) for j in range(b))
        return total / b

    cols = [[logits[i][j] for i in range(b)] for j in range(b)]
    return 0.5 * (direction(logits) + direction(cols))


def _unit(rows):
    t = torch.tensor(rows, dtype=torch.float64)
    return t / t.norm(dim=1, keepdim=True)


IMG = _unit([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.3, -1.0]])
TXT = _unit([[0.9, 0.1, 0.0], [0.0, 1.0, 0.2], [0.5, 0.0, -0.5]])


def test_loss_is_the_closed_form_of_a_3x3_batch():
    eye = [[float(i == j) for j in range(3)] for i in range(3)]
    expected = _by_hand(IMG.tolist(), TXT.tolist(), 10.0, eye)
    assert clip_loss(IMG, TXT, 10.0).item() == pytest.approx(expected, rel=1e-12)
    # the 2x2 case by hand: cosines [[1, 0], [0, 1]], scale s: each row is -log(e^s / (e^s + 1))
    two = torch.eye(2, dtype=torch.float64)
    assert clip_loss(two, two, 3.0).item() == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-12)


def test_duplicate_captions_share_the_target_by_closed_form():
    """Pairs 0 and 2 carry one caption: rows 0 and 2 aim at columns 0 and 2 with weight 1/2 each."""
    pos = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    targets = [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]
    expected = _by_hand(IMG.tolist(), TXT.tolist(), 7.0, targets)
    assert clip_loss(IMG, TXT, 7.0, positives=pos).item() == pytest.approx(expected, rel=1e-12)
    assert clip_loss(IMG, TXT, 7.0, positives=torch.eye(3, dtype=torch.bool)).item() == pytest.approx(
        clip_loss(IMG, TXT, 7.0).item(), rel=1e-12)


def test_loss_symmetries():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    b = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    loss = clip_loss(a, b, 5.0)
    assert clip_loss(b, a, 5.0).item() == pytest.approx(loss.item(), rel=1e-12)  # images and texts swap roles
    perm = torch.randperm(6, generator=g)
    assert clip_loss(a[perm], b[perm], 5.0).item() == pytest.approx(loss.item(), rel=1e-12)  # batch order
    rot = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))[0]
    assert clip_loss(a @ rot, b @ rot, 5.0).item() == pytest.approx(loss.item(), rel=1e-10)  # rotation of the space
    # a matched batch of orthogonal pairs approaches 0 as the scale grows; a mismatched one grows with it
    e = torch.eye(4, dtype=torch.float64)
    assert clip_loss(e, e, 100.0).item() < 1e-30
    assert clip_loss(e, e.roll(1, 0), 100.0).item() == pytest.approx(100.0, rel=1e-6)


def test_loss_refuses_mismatched_batches_and_bad_positives():
    with pytest.raises(ValueError, match="3 images and 2 texts"):
        clip_loss(IMG, TXT[:2], 1.0)
    with pytest.raises(ValueError, match="symmetric"):
        clip_loss(IMG, TXT, 1.0, positives=torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool))


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped_at_100():
    net = CLIPModel(CLIPArch(channels=1, widths=(8, 16), embed_dim=8, text_width=16, text_heads=2))
    assert net.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        net.log_logit_scale.fill_(10.0)
    assert net.logit_scale.item() == pytest.approx(100.0, rel=1e-6)


def test_embeddings_are_unit_vectors_independent_of_batch_and_padding():
    torch.manual_seed(0)
    net = CLIPModel(CLIPArch(channels=3, widths=(8, 16), embed_dim=8, text_width=16, text_heads=2, max_tokens=32))
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    img = net.embed_images(x)
    assert torch.allclose(img.norm(dim=1), torch.ones(4))
    assert torch.allclose(net.embed_images(x[1:2]), img[1:2], atol=1e-6)  # GroupNorm: no batch statistics
    cond = ScratchConditioner(32, 16)
    alone = net.embed_text(cond(["a red bag"]))
    padded = net.embed_text(TextCond.cat([cond(["a red bag"]), cond(["a much longer caption here"])]))
    assert torch.allclose(alone.norm(dim=1), torch.ones(1))
    assert torch.allclose(padded[:1], alone, atol=1e-6)
    assert not torch.allclose(padded[1:], alone, atol=1e-3)


def test_a_frozen_encoders_pooled_embedding_feeds_the_projection():
    net = CLIPModel(CLIPArch(channels=1, widths=(8,), embed_dim=8, text_encoder="minilm"))
    assert net.text_encoder is None and net.text_proj.in_features == 384
    pooled = F.normalize(torch.randn(2, 384), dim=1)
    cond = TextCond(mask=torch.ones(2, 1, dtype=torch.bool), emb=pooled[:, None], pooled=pooled)
    assert torch.allclose(net.embed_text(cond), F.normalize(net.text_proj(pooled), dim=1))
    with pytest.raises(ValueError, match="token ids"):
        CLIPModel(CLIPArch(channels=1, widths=(8,), text_width=16, text_heads=2)).embed_text(cond)


def test_arch_refuses_unknown_encoders_and_round_trips():
    with pytest.raises(ValueError, match="unknown text encoder 't5'"):
        CLIPArch(text_encoder="t5")
    arch = CLIPArch(channels=1, widths=(8, 16), text_encoder="minilm")
    assert CLIPArch.from_dict(arch.to_dict()) == arch
