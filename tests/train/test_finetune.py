"""Fine-tuning: `train --init-from` (the source's architecture, weights and hash), LoRA
adapters (zero update at init, merge equals the adapted network, only adapters train,
adapter-only checkpoints, a changed base refused), export --lora merged|adapter."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cli_runner import run
from difforge.models import build_model
from difforge.models.lora import LoraSpec, adapter_state, add_adapters, merge_adapters, target_modules
from difforge.pipeline import load_pipeline
from difforge.runs import sha256_file

TRAIN = ["--max-steps", "3", "--batch-size", "8", "--no-progress", "--sample-every", "0", "--no-final-grid"]


def _tiny(num_classes=10):
    """A tiny UNet with every weight random (a new one's output layer is zero: its output too)."""
    torch.manual_seed(0)
    net = build_model("tiny", in_channels=1, num_classes=num_classes)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 8, 8, generator=g), torch.rand(3, generator=g), torch.tensor([0, 4, 10])


def test_adapters_target_the_stages_not_the_stem_head_or_embeddings():
    names = target_modules(_tiny())
    assert "down.0.res.conv1" in names and "mid.0.attn.qkv" in names and "up.0.res.emb" in names
    assert not [n for n in names if n.split(".")[0] in ("in_conv", "out_conv", "embed") or n.endswith("skip")]


def test_lora_at_init_leaves_the_output_unchanged():
    net = _tiny()
    x, t, y = _inputs()
    with torch.no_grad():
        before = net(x, t, y)
        add_adapters(net, LoraSpec(4, 8.0, tuple(target_modules(net))))
        after = net(x, t, y)
    assert before.abs().min() > 0 and torch.equal(before, after)  # B = 0: the low-rank update is exactly zero


def test_merged_network_equals_the_adapted_one():
    net = add_adapters(_tiny(), LoraSpec(2, 3.0, tuple(target_modules(_tiny()))))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        x, t, y = _inputs()
        adapted = net(x, t, y)
        merged = merge_adapters(net)
        assert not [n for n in merged.state_dict() if "lora" in n]
        plain = _tiny()
        plain.load_state_dict(merged.state_dict())  # the base architecture's keys
        out = plain(x, t, y)
    assert not torch.equal(adapted, _tiny()(x, t, y))  # the adapter does change the output
    torch.testing.assert_close(out, adapted, rtol=1e-5, atol=1e-5)


def test_only_adapter_parameters_receive_gradients():
    spec = LoraSpec(2, 2.0, tuple(target_modules(_tiny())))
    net = add_adapters(_tiny(), spec)
    x, t, y = _inputs()
    net(x, t, y).square().mean().backward()
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    lora = {n for n, _ in net.named_parameters() if ".lora_" in n}
    assert with_grad == lora and len(lora) == 2 * len(spec.targets)  # A and B (no bias)
    assert set(adapter_state(net, spec)) == lora


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    assert run(["train", "--dataset", "digits", "--model", "tiny", "--out", str(root / "run"), *TRAIN]) == 0
    assert run(["export", str(root / "run"), "--out", str(root / "model")]) == 0
    return root


def test_init_from_takes_the_source_weights_architecture_and_records_its_hash(base, tmp_path, capsys):
    out = tmp_path / "ft"
    assert run(["train", "--dataset", "digits", "--init-from", str(base / "model"), "--out", str(out),
                "--max-steps", "1", "--lr", "1e-12", "--ema-warmup", "0", *TRAIN[2:]]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["architecture"]["preset"] == "tiny" and card["image_size"] == 8  # not the default unet
    assert card["source"] == {"path": str((base / "model").resolve()), "weights": "model.safetensors",
                              "sha256": sha256_file(base / "model" / "model.safetensors"), "step": 3}
    ckpt = out / "checkpoints" / "step-1"
    state = torch.load(ckpt / "train_state.pt", weights_only=True)
    assert state["step"] == 1 and all(s["step"] == 1 for s in state["optimizer"]["state"].values())  # fresh AdamW
    source = load_file(base / "model" / "model.safetensors")
    for name in ("model.safetensors", "ema.safetensors"):  # one step at lr 1e-12: still the source's weights
        got = load_file(ckpt / name)
        assert got.keys() == source.keys()
        for k in source:
            torch.testing.assert_close(got[k], source[k], rtol=0, atol=1e-6)
    assert "fine-tuning from" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--model", "unet"], "network is tiny, this run's unet"),
    (["--image-size", "16"], "image size is 8, this run's 16"),
    (["--schedule", "cosine"], "diffusion.schedule is linear, this run's cosine"),
    (["--unconditional"], "conditioning is class-labels, this run's none"),
])
def test_a_setting_that_contradicts_the_source_is_refused(base, tmp_path, capsys, argv, message):
    out = tmp_path / "bad"
    assert run(["train", "--dataset", "digits", "--init-from", str(base / "run"), "--out", str(out),
                *argv, *TRAIN]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def _two_classes(root):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(root / name / f"{i}.png")
    return root


def test_a_new_class_count_reinitialises_only_the_label_embedding(base, tmp_path, capsys):
    out = tmp_path / "two"
    assert run(["train", "--data", str(_two_classes(tmp_path / "imgs")), "--init-from", str(base / "run"),
                "--lora-rank", "2", "--out", str(out), *TRAIN]) == 0
    assert "label embedding is re-initialised" in capsys.readouterr().out
    card = json.loads((out / "model.json").read_text())
    assert card["conditioning"]["num_classes"] == 2 and card["lora"]["modules"] == ["embed.label"]
    saved = load_file(out / "checkpoints" / "step-3" / "model.safetensors")
    assert saved["embed.label.weight"].shape == (3, 32)  # 2 classes + the null class, trained in full
    assert load_pipeline(out).num_classes == 2


def test_lora_run_saves_only_the_adapter_resumes_samples_and_exports(base, tmp_path):
    out = tmp_path / "lora"
    assert run(["train", "--dataset", "digits", "--init-from", str(base / "model"), "--lora-rank", "2",
                "--lora-alpha", "4", "--out", str(out), *TRAIN]) == 0
    for name in ("model.safetensors", "ema.safetensors"):
        keys = load_file(out / "checkpoints" / "step-3" / name).keys()
        assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    card = json.loads((out / "model.json").read_text())
    assert card["lora"]["rank"] == 2 and card["lora"]["alpha"] == 4.0
    assert run(["train", "--resume", "--out", str(out), "--max-steps", "4", "--no-progress"]) == 0
    assert (out / "checkpoints" / "step-4").is_dir()
    assert run(["export", str(out), "--out", str(tmp_path / "merged"), "--lora", "merged"]) == 0
    assert run(["export", str(out), "--out", str(tmp_path / "adapter"), "--lora", "adapter"]) == 0
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["README.md", "adapter.safetensors",
                                                                       "config.json"]
    merged_card = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "lora" not in merged_card and merged_card["source"] == card["source"]
    images = [load_pipeline(p).generate(n=2, steps=3, seed=5, labels=[1, 2], output_type="np")[0]
              for p in (out, tmp_path / "merged", tmp_path / "adapter")]
    np.testing.assert_array_equal(images[0], images[1])
    np.testing.assert_array_equal(images[0], images[2])
    assert run(["export", str(base / "run"), "--out", str(tmp_path / "x"), "--lora", "adapter"]) == 1


def test_a_changed_base_is_refused_in_one_line(base, tmp_path, capsys):
    model = tmp_path / "base-model"
    shutil.copytree(base / "model", model)
    out = tmp_path / "lora"
    assert run(["train", "--dataset", "digits", "--init-from", str(model), "--lora-rank", "1", "--out", str(out),
                *TRAIN]) == 0
    weights = load_file(model / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, model / "model.safetensors")
    capsys.readouterr()
    assert run(["sample", str(out), "--n", "1", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "the base model changed" in err and len(err.splitlines()) == 1
    assert run(["train", "--resume", "--out", str(out), "--max-steps", "4", "--no-progress"]) == 1
    assert "the base model changed" in capsys.readouterr().err


def test_lora_needs_a_source(tmp_path, capsys):
    assert run(["train", "--dataset", "digits", "--lora-rank", "2", "--out", str(tmp_path / "r"), *TRAIN]) == 1
    assert "--init-from" in capsys.readouterr().err
