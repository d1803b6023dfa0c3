"""unCLIP: the CLIP-image-embedding conditioning kind, the diffusion prior, and the commands
end to end on tiny models (a 200-garment stand-in for Fashion-MNIST)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import run
from difforge.models import build_model
from difforge.models.card import ModelCard
from difforge.models.conditioning import CLIPImageEmbedding, conditioning_from_dict
from difforge.models.prior import PriorCard, load_prior
from difforge.sampling.guidance import broadcast_cond, cat_cond
from garment_squares import write_garment_squares


def test_the_kind_null_dropout_batching_and_round_trip():
    spec = CLIPImageEmbedding(16, tokens=3, clip="ab12")
    assert torch.equal(spec.null(2), torch.zeros(2, 16))
    emb = torch.nn.functional.normalize(torch.randn(1000, 16), dim=-1)
    dropped = spec.drop(emb, 0.3, torch.Generator().manual_seed(0))
    zero = (dropped == 0).all(1)
    keep = torch.rand(1000, generator=torch.Generator().manual_seed(0)) >= 0.3  # the same draw
    assert torch.equal(~zero, keep) and torch.equal(dropped[keep], emb[keep])
    assert spec.drop(emb, 0.0) is emb
    both = cat_cond(emb[:2], spec.null(1))
    assert both.shape == (3, 16) and torch.equal(both[2], torch.zeros(16)) and torch.equal(both[torch.tensor([1])],
                                                                                            emb[1:2])
    assert torch.equal(broadcast_cond(emb[:1], 4), emb[:1].repeat(4, 1))
    assert conditioning_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match=r"CLIP image embeddings \(N, 16\), got \(2, 8\)"):
        spec.check(torch.zeros(2, 8))


def test_the_unet_reads_the_embedding_and_the_card_round_trips(tmp_path):
    spec = CLIPImageEmbedding(8, tokens=2)
    torch.manual_seed(0)
    net = build_model("tiny", in_channels=3, **spec.network_kwargs(3))
    x, t = torch.randn(3, 3, 16, 16), torch.full((3,), 0.5)
    for p in net.out_conv.parameters():  # the zero-initialised output would hide everything
        torch.nn.init.normal_(p)
    emb = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    batched = net(x, t, emb)
    assert torch.allclose(torch.cat([net(x[i:i + 1], t[i:i + 1], emb[i:i + 1]) for i in range(3)]), batched,
                          atol=1e-4, rtol=1e-4)
    assert not torch.allclose(net(x, t, emb.flip(0)), batched, atol=1e-2)  # the output depends on the embedding
    with pytest.raises(ValueError, match=r"CLIP image embeddings \(3, 8\)"):
        net(x, t, torch.zeros(3, 4))
    card = _card(spec).save(tmp_path / "model.json")
    assert ModelCard.load(card) == _card(spec) and ModelCard.load(card).conditioning == spec


def _card(spec):
    from difforge.diffusion.frameworks import FrameworkSpec
    from difforge.models.card import Architecture

    return ModelCard(Architecture.of_preset("tiny"), 16, 16, 3, FrameworkSpec(), None, spec)


def test_the_prior_outputs_unit_embeddings_of_its_dimension_and_guidance_uses_the_null():
    from difforge.tasks.unclip import prior_sample

    card = PriorCard(12, width=32, depth=2)
    torch.manual_seed(0)
    prior = card.denoiser()
    for p in prior.net.out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    text = torch.nn.functional.normalize(torch.randn(5, 12), dim=-1)
    out = prior_sample(card, prior, text, cfg=3.0, steps=4, seed=0)
    assert out.shape == (5, 12) and torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    # guidance 0 is the unconditional model: the text does not matter; guidance 1 is the conditional one
    assert torch.allclose(prior_sample(card, prior, text, cfg=0.0, steps=4),
                          prior_sample(card, prior, text.flip(0), cfg=0.0, steps=4), atol=1e-5)
    assert not torch.allclose(prior_sample(card, prior, text, cfg=1.0, steps=4),
                              prior_sample(card, prior, text.flip(0), cfg=1.0, steps=4), atol=1e-3)
    assert PriorCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CLIP, a prior and a decoder on a 200-garment stand-in, each a few steps."""
    root = tmp_path_factory.mktemp("unclip")
    write_garment_squares(root / "fm")
    _clip_and_prior(root / "fm", root / "clip", root / "prior", 16)
    data = ["--dataset", "fashion-colour", "--set", f"data.path={root / 'fm'}"]
    assert run(["train", *data, "--clip", str(root / "clip"), "--model", "tiny", "--max-steps", "2",
                "--batch-size", "8", "--sample-every", "0", "--checkpoint-every", "0", "--out", str(root / "run"),
                "--no-progress", "--set", "train.final_grid=false", "--device", "cpu"]) == 0
    return root


def _clip_and_prior(fm, clip_dir, prior_dir, dim):
    from difforge.config import DataConfig
    from difforge.data import load_dataset
    from difforge.eval.clip import CLIPConfig, train_clip
    from difforge.models.prior import save_prior
    from difforge.train.prior import PriorConfig, train_prior

    bundle = load_dataset(DataConfig(dataset="fashion-colour", path=str(fm)))
    cfg = CLIPConfig(steps=3, batch_size=16, widths=(8, 16), embed_dim=dim, eval_images=32)
    train_clip(bundle, cfg).save(clip_dir)
    save_prior(*train_prior(bundle, clip_dir, PriorConfig(width=32, depth=1, steps=3, batch_size=16)), prior_dir)


def test_train_sample_unclip_and_variations_end_to_end(trained, tmp_path, capsys):
    from difforge.model_files import export_model
    from difforge.pipeline import load_pipeline

    card = json.loads((trained / "run" / "model.json").read_text())
    assert card["conditioning"]["kind"] == "clip-image-embedding" and card["conditioning"]["dim"] == 16
    assert (trained / "run" / "clip" / "clip.json").is_file()
    prior_card, _ = load_prior(trained / "prior")
    assert prior_card.dim == 16 and prior_card.clip_fingerprint == card["conditioning"]["clip"]
    assert run(["unclip", str(trained / "run"), "--prior", str(trained / "prior"), "--prompt", "a large red bag",
                "--prompt", "a small blue sneaker", "--n", "2", "--steps", "2", "--prior-steps", "2",
                "--out", str(tmp_path / "u.png"), "--no-progress", "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "u.png").size[0] > 0 and "4 images" in capsys.readouterr().out
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "x.png")
    assert run(["variations", str(trained / "run"), "--image", str(tmp_path / "x.png"), "--n", "3", "--steps", "2",
                "--out", str(tmp_path / "v.png"), "--png-dir", str(tmp_path / "v"), "--no-progress",
                "--device", "cpu"]) == 0
    assert len(list((tmp_path / "v").glob("*.png"))) == 3
    assert run(["sample", str(trained / "run"), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png"),
                "--no-progress", "--device", "cpu"]) == 0  # unconditional: the null embedding
    exported = export_model(trained / "run", tmp_path / "model")
    pipe = load_pipeline(exported)
    assert pipe.takes_image_embeddings and pipe.clip is not None
    emb = pipe.clip.embed_images(torch.full((1, 3, 32, 32), 90, dtype=torch.uint8))
    a, _ = pipe.generate(embeddings=emb, n=2, steps=2, seed=5)
    b, _ = load_pipeline(trained / "run").generate(embeddings=emb.repeat(2, 1), steps=2, seed=5)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)


def test_one_line_errors(trained, tmp_path, capsys):
    def fails(args, *needles):
        assert run(args) != 0
        err = capsys.readouterr().err
        assert all(s in err for s in needles) and len(err.strip().splitlines()) == 1, err

    data = ["--dataset", "fashion-colour", "--set", f"data.path={trained / 'fm'}"]
    fails(["train-prior", "--clip", str(tmp_path / "none"), "--out", str(tmp_path / "p")], "no CLIP model")
    fails(["train", *data, "--clip", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--max-steps", "1"],
          "--clip", "no CLIP model")
    _clip_and_prior(trained / "fm", tmp_path / "clip8", tmp_path / "p8", 8)  # a prior of another CLIP
    capsys.readouterr()
    fails(["unclip", str(trained / "run"), "--prior", str(tmp_path / "p8"), "--prompt", "a red bag",
           "--steps", "1", "--out", str(tmp_path / "u.png")], "8-d", "16-d")
    fails(["unclip", str(trained / "run"), "--prior", str(tmp_path / "nowhere"), "--prompt", "a red bag"],
          "no prior")
    fails(["variations", str(trained / "run"), "--image", str(tmp_path / "missing.png")], "missing.png")
    fails(["sample", str(trained / "run"), "--prompt", "a red bag", "--out", str(tmp_path / "s.png")], "prompt")
