"""`train`'s options and `--set` reach the run's config: every key of every section can be
set, bad settings fail in one line, and --resume keeps its run's config."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from cli_runner import run
from difforge.cli.train import OPTIONS
from difforge.config import SECTIONS, RunConfig, load_config

# A valid value other than the default for every config key (a new key needs one here),
# and the settings some need beside them to pass validation.
VALUES = {
    "data.dataset": "digits", "data.path": "some/idx-folder", "data.image_size": 16, "data.channels": 3,
    "data.val_fraction": 0.25, "data.split_seed": 7, "data.hflip": True,
    "model.preset": "tiny", "model.conditional": False, "model.label_dropout": 0.2, "model.task": "superres",
    "model.scale": 4, "model.grad_checkpoint": True, "model.text_encoder": "scratch", "model.caption_dropout": 0.2,
    "model.max_tokens": 32, "model.latent": "runs/ae", "model.cache_latents": False, "model.clip": "runs/clip",
    "model.architecture": {"base_channels": 16},
    "model.init_from": str(Path(__file__).parents[1] / "fixtures" / "model-ddpm"), "model.lora_rank": 4,
    "model.lora_alpha": 8.0,
    "diffusion.timesteps": 500, "diffusion.schedule": "cosine", "diffusion.beta_start": 0.0002,
    "diffusion.beta_end": 0.03, "diffusion.framework": "vp-sde", "diffusion.prediction": "v",
    "diffusion.min_snr_gamma": 5.0, "diffusion.sigma_min": 0.02, "diffusion.sigma_max": 50.0,
    "diffusion.sigma_data": 1.0,
    "train.max_steps": 12, "train.epochs": 3, "train.batch_size": 32, "train.grad_accum": 2, "train.lr": 0.0005,
    "train.weight_decay": 0.01,
    "train.lr_schedule": "cosine", "train.warmup_steps": 50, "train.grad_clip": 0.5, "train.precision": "bf16",
    "train.ema_decay": 0.999, "train.ema_warmup": 10, "train.log_every": 5, "train.sample_every": 0,
    "train.checkpoint_every": 200, "train.keep_checkpoints": 1, "train.seed": 3, "train.device": "cpu",
    "train.wandb": True, "train.tensorboard": True, "train.eval_every": 100, "train.eval_samples": 64,
    "train.final_grid": False, "train.joint_images": 0.5,
}
FIXTURE = VALUES["model.init_from"]
NEEDS = {"train.joint_images": ["data.dataset=moving-fashion-mnist", "model.preset=stunet-space-down"],
         "diffusion.sigma_min": ["diffusion.framework=ve-sde"], "diffusion.sigma_max": ["diffusion.framework=ve-sde"],
         "diffusion.sigma_data": ["diffusion.framework=edm"],
         "model.lora_rank": [f"model.init_from={FIXTURE}"],
         "model.lora_alpha": [f"model.init_from={FIXTURE}", "model.lora_rank=2"]}
KEYS = [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


@pytest.fixture
def trained(monkeypatch):
    """Replaces the training loop: records what `train` would run with."""
    import difforge.train.loop

    calls = []

    def fake(cfg, resume=False, progress=True, length=None):
        calls.append(SimpleNamespace(cfg=cfg, resume=resume, length=length))
        return SimpleNamespace(signum=None, stopped_early=True, rank=0, step=0, run_dir=None)

    monkeypatch.setattr(difforge.train.loop, "train", fake)
    return calls


def _get(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("key", KEYS)
def test_set_reaches_every_config_key(key, trained, tmp_path):
    value = VALUES[key]
    assert value != _get(RunConfig(), key), "pick a value other than the default"
    extra = [a for setting in NEEDS.get(key, []) for a in ("--set", setting)]
    assert run(["train", "--out", str(tmp_path / "r"), *extra, "--set", f"{key}={_text(value)}"]) == 0
    assert _get(trained[-1].cfg, key) == value


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_sets_its_config_key(name, trained, tmp_path):
    key = OPTIONS[name][0]
    if key == "out":
        assert run(["train", "--out", str(tmp_path / "r")]) == 0
        assert trained[-1].cfg.out == str(tmp_path / "r")
        return
    value = VALUES[key]
    if isinstance(value, bool):  # the flag that gives the value: --wandb, --unconditional, --no-final-grid
        argv = [name.split("/")[0] if value else name.split("/")[1]]
    elif key == "data.path":
        (tmp_path / "images").mkdir()
        argv, value = [name, str(tmp_path / "images")], str(tmp_path / "images")
    else:
        argv = [name, _text(value)]
    argv += [a for setting in NEEDS.get(key, []) for a in ("--set", setting)]
    assert run(["train", "--out", str(tmp_path / "r"), *argv]) == 0
    assert _get(trained[-1].cfg, key) == value
    if key == "data.path":
        assert trained[-1].cfg.data.dataset == "folder"  # --data also picks the kind


def test_set_reads_yaml_values(trained, tmp_path):
    assert run(["train", "--set", "train.lr=1e-3", "--set", "data.image_size=null", "--set", "train.max_steps=1_000",
                "--set", f"out={tmp_path / 'r'}", "--set", "train.lr=2e-3"]) == 0
    cfg = trained[-1].cfg
    assert cfg.train.lr == 2e-3 and cfg.data.image_size is None and cfg.train.max_steps == 1000  # last --set wins
    assert cfg.out == str(tmp_path / "r")


def test_set_goes_on_top_of_a_config_file(trained, tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  grad_clip: 2.0\n  weight_decay: 0.1\n")
    assert run(["train", "--config", str(tmp_path / "c.yaml"), "--set", "train.grad_clip=0.25",
                "--out", str(tmp_path / "r")]) == 0
    assert trained[-1].cfg.train.grad_clip == 0.25 and trained[-1].cfg.train.weight_decay == 0.1


@pytest.mark.parametrize("setting, message", [
    ("train.nope=1", "unknown key(s) ['nope'] in section 'train'"),
    ("trian.lr=1", "unknown config section(s) ['trian']"),
    ("train.batch_size=abc", "train.batch_size must be int, got 'abc' (str)"),
    ("train.wandb=maybe", "train.wandb must be bool"),
    ("train.lr=-1", "train.lr must be > 0"),
    ("train.lr", "expected SECTION.KEY=VALUE"),
    ("lr=0.1", "expected SECTION.KEY=VALUE"),
    ("train.lr.max=0.1", "expected SECTION.KEY=VALUE"),
    ("train.device=[0, 1]", "expected one value"),
    ("train.device='cuda", "is not a YAML value"),
    ("model.architecture={base_channel: 16}", "model.architecture: ['base_channel'] are not arguments of model "
                                              "'unet' (UNet); expected some of ['attention_levels', 'base_channels'"),
    ("model.architecture={channel_mults: 3}", "model.architecture: model 'unet' cannot be built with"),
    ("model.architecture=[1, 2]", "expected one value"),
])
def test_bad_settings_fail_in_one_line(setting, message, trained, tmp_path, capsys):
    assert run(["train", "--out", str(tmp_path / "r"), "--set", setting]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not trained


def test_set_and_an_option_that_disagree_are_refused(trained, tmp_path, capsys):
    assert run(["train", "--out", str(tmp_path / "r"), "--lr", "0.1", "--set", "train.lr=0.2"]) != 0
    assert "--set train.lr=0.2 and --lr 0.1 disagree" in capsys.readouterr().err
    assert run(["train", "--out", str(tmp_path / "r"), "--lr", "0.1", "--set", "train.lr=0.1"]) == 0


def test_resume_changes_only_the_length(trained, tmp_path, capsys):
    assert run(["train", "--out", str(tmp_path / "r"), "--resume", "--lr", "0.1", "--set", "train.grad_clip=0.2",
                "--set", "train.epochs=4", "--max-steps", "9"]) == 0
    assert "ignoring lr, grad_clip" in capsys.readouterr().err
    call = trained[-1]
    assert call.resume and call.length == {"max_steps": 9, "epochs": 4}


def test_a_set_key_is_in_the_runs_config_yaml(tmp_path):
    out = tmp_path / "r"
    assert run(["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "1", "--batch-size", "8",
                "--sample-every", "0", "--checkpoint-every", "0", "--no-final-grid", "--no-progress",
                "--set", "train.grad_clip=0.5", "--set", "diffusion.timesteps=200", "--out", str(out)]) == 0
    cfg = load_config(out / "config.yaml")
    assert cfg.train.grad_clip == 0.5 and cfg.diffusion.timesteps == 200
