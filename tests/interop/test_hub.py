"""Models by Hub id from the local Hugging Face cache (never downloaded), and the README
model card exported models carry. The cache is built by hand in the layout
huggingface_hub writes: models--owner--name/{blobs, snapshots/<commit>, refs/main}."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_runner import run
from difforge.model_files import ModelLoadError, export_model
from difforge.pipeline import load_pipeline

hub = pytest.importorskip("huggingface_hub")
hub_constants = pytest.importorskip("huggingface_hub.constants")

FIXTURES = Path(__file__).parents[1] / "fixtures"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(hub_cache: Path, repo_id: str, folder: Path) -> Path:
    """Put `folder`'s files into the cache as repo `repo_id` (blobs + symlinked snapshot)."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    for f in folder.rglob("*"):
        if f.is_file():
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, blob)
            link = snapshot / f.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))  # read when snapshot_download is called
    return cache


def test_load_pipeline_takes_a_hub_id_from_the_cache(hub_cache, tmp_path, monkeypatch):
    _cache(hub_cache, "someone/ddpm-toy", FIXTURES / "model-ddpm")
    by_id, by_path = load_pipeline("someone/ddpm-toy"), load_pipeline(FIXTURES / "model-ddpm")
    assert by_id.card == by_path.card
    a, b = by_id.net.state_dict(), by_path.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ModelLoadError, match="no such run or model directory: someone/other .*hf "
                                             "download someone/other"):
        load_pipeline("someone/other")
    # a local folder of that name wins over the cache
    monkeypatch.chdir(tmp_path)
    shutil.copytree(FIXTURES / "model-sr3", tmp_path / "someone" / "ddpm-toy")
    assert load_pipeline("someone/ddpm-toy").card.task == "superres" and by_id.card.task == "generate"


def test_every_model_command_takes_a_hub_id(hub_cache, tmp_path, capsys):
    _cache(hub_cache, "someone/ddpm-toy", FIXTURES / "model-ddpm")
    out = tmp_path / "s.png"
    assert run(["sample", "someone/ddpm-toy", "--out", str(out), "--n", "2", "--steps", "2", "--no-progress"]) == 0
    assert out.is_file()
    assert run(["evaluate", "someone/ddpm-toy", "--n", "4"]) == 1  # the cache is not ours to write a report in
    assert "give --out for the report" in capsys.readouterr().err


def test_import_takes_a_diffusers_model_from_the_cache(hub_cache, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "src")
    _cache(hub_cache, "google/ddpm-toy", tmp_path / "src")
    assert run(["import", "google/ddpm-toy", "--out", str(tmp_path / "m"), "--dataset", "toy"]) == 0
    pipe = load_pipeline(tmp_path / "m")
    assert pipe.card.dataset == "toy" and pipe.card.channels == 1
    assert torch.equal(pipe.net.unet.conv_in.weight, unet.conv_in.weight)
    assert "# google/ddpm-toy" in (tmp_path / "m" / "README.md").read_text()


def test_hub_id_through_the_environment_in_a_fresh_process(tmp_path):
    """The user's way: HF_HOME set in the environment, nothing patched, offline."""
    _cache(tmp_path / "home" / "hub", "someone/ddpm-toy", FIXTURES / "model-ddpm")
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "difforge", "sample", "someone/ddpm-toy", "--out",
                           str(tmp_path / "s.png"), "--n", "1", "--steps", "2", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s.png").is_file()


def test_exported_model_carries_a_hub_readme(tmp_path):
    out = export_model(FIXTURES / "run-ddpm", tmp_path / "model")
    text = (out / "README.md").read_text()
    card = hub.ModelCard(text)  # the Hub's own parser reads the metadata
    meta = card.data.to_dict()
    assert meta["library_name"] == "difforge"
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    assert {"difforge", "diffusion", "ddpm"} <= set(meta["tags"])
    assert meta["datasets"] == ["digits"] and "class-conditional" in meta["tags"]  # the fixture: 10 digits
    assert f"training steps | {load_pipeline(out).card.step} (ema weights)" in text
    assert "hf download" in text


@pytest.fixture
def fake_hub(monkeypatch):
    """HfApi with create_repo and upload_folder recorded instead of sent; the files an upload
    would send are chosen by huggingface_hub's own pattern filter, as upload_folder does."""
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kw):
        root = Path(folder_path)
        every = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        sent = sorted(filter_repo_objects(every, allow_patterns=allow_patterns))
        calls.append(("upload_folder", repo_id, {"files": sent, "folder": root, "token": self.token, **kw}))

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    return calls


def test_push_uploads_the_model_card_config_and_weights(fake_hub, tmp_path, capsys):
    from difforge.models.card import ModelCard

    model = export_model(FIXTURES / "run-ddpm", tmp_path / "model")
    (model / "notes.txt").write_text("mine, not the Hub's")
    (model / "eval").mkdir()
    (model / "eval" / "report.json").write_text("{}")
    assert run(["push", str(model), "someone/toy", "--private"]) == 0
    (create, repo, kw), (upload, repo2, sent) = fake_hub
    assert (create, repo, kw["private"], kw["exist_ok"]) == ("create_repo", "someone/toy", True, True)
    assert (upload, repo2, sent["token"]) == ("upload_folder", "someone/toy", "hf_not_a_real_token")
    assert sent["files"] == ["README.md", "config.json", "model.safetensors"]
    meta = hub.ModelCard((sent["folder"] / "README.md").read_text()).data.to_dict()
    assert meta["library_name"] == "difforge" and "ddpm" in meta["tags"]
    assert ModelCard.load(sent["folder"] / "config.json").step is not None
    assert "pushed README.md, config.json, model.safetensors to https://huggingface.co/someone/toy" \
        in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("no token", "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN"),
    ("offline", "HF_HUB_OFFLINE is set: pushing to the Hub needs the network"),
    ("run directory", "is not an exported model; export it first: difforge export"),
    ("no card", "has no README.md model card"),
    ("bad id", "'toy' is not a Hub model id (OWNER/NAME)"),
])
def test_push_refusals_are_one_line_before_any_upload(case, message, fake_hub, tmp_path, capsys, monkeypatch):
    model = export_model(FIXTURES / "run-ddpm", tmp_path / "model")
    target, repo = str(model), "someone/toy"
    if case == "no token":
        monkeypatch.setattr(hub, "get_token", lambda: None)  # neither HF_TOKEN nor a saved login
    elif case == "offline":
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    elif case == "run directory":
        target = str(FIXTURES / "run-ddpm")
    elif case == "no card":
        (model / "README.md").unlink()
    else:
        repo = "toy"
    assert run(["push", target, repo]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert fake_hub == []  # nothing created, nothing sent


def test_push_takes_a_diffusers_export_with_its_subfolders(tmp_path):
    from difforge.hub import push_files

    names = ["model_index.json", "difforge.json", "README.md", "unet/config.json",
             "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "samples/a.png", "x.txt"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert push_files(tmp_path) == sorted(names[:6])
