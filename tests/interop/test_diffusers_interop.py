"""diffusers interop both ways, offline, with small random-weight UNet2DModels.

Import: a diffusers pipeline folder becomes a difforge model that samples what diffusers
samples (DDIM, same timesteps, same initial noise). Export: a diffusers-unet model loads
in diffusers' own `from_pretrained` with the same network and the same samples. Round
trip: import -> export -> import keeps every weight and the card.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cli_runner import run
from difforge.defaults import DEFAULT_CFG
from difforge.interop import InteropError, framework_from_scheduler, import_diffusers, scheduler_from_card
from difforge.models.card import ModelCard
from difforge.pipeline import load_pipeline
from difforge.sampling import per_sample_generators, randn_like

diffusers = pytest.importorskip("diffusers")

SIZE, STEPS = 8, 10
# Both sides run float32 networks on the same weights and the same integer timesteps; they
# differ only in float32 rounding: difforge feeds the UNet c_in * x (x in the VE frame,
# c_in = sqrt(alpha_bar)) where diffusers feeds x_t itself, and the DDIM update is written
# in different (equal) forms. These relative errors of ~1e-7 per operation, through 10
# steps of a random network, stay below 1e-4 (measured: a few 1e-6); a wrong timestep,
# schedule, prediction or weight mapping moves samples by 1e-2 or more.
TOL = 1e-4


def _unet(num_class_embeds: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8, num_class_embeds=num_class_embeds)


def _save(folder, unet, **scheduler):
    sched = diffusers.DDPMScheduler(num_train_timesteps=scheduler.pop("num_train_timesteps", 1000), **scheduler)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    """difforge's initial noise of images seed..seed+n-1 (N(0, I) in the VP frame)."""
    return randn_like(torch.empty(n, 3, SIZE, SIZE), per_sample_generators(range(seed, seed + n)))


def _ours(pipe, n: int, labels=None, **kw) -> torch.Tensor:
    """difforge's DDIM result (model space, float) through Pipeline.generate."""
    last = {}

    def keep(d):
        last["x0"] = d["denoised"].clone()  # at the last step (sigma -> 0) the result itself

    pipe.generate(n, labels, sampler="ddim", steps=STEPS, grid="leading", seed=0, callback=keep, **kw)
    return last["x0"]


@torch.no_grad()
def _diffusers_ddim(unet, scheduler_config, x_T: torch.Tensor, labels=None) -> torch.Tensor:
    """diffusers' DDIM from x_T, x0 clipped to [-1, 1] and eps re-derived from it (difforge's clipping)."""
    sched = diffusers.DDIMScheduler.from_config(scheduler_config, clip_sample=True, set_alpha_to_one=True)
    sched.set_timesteps(STEPS)
    x = x_T.clone()
    for t in sched.timesteps:
        out = unet(x, t, class_labels=labels).sample
        x = sched.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x


@pytest.mark.parametrize("schedule,prediction", [("linear", "epsilon"), ("squaredcos_cap_v2", "v_prediction"),
                                                 ("scaled_linear", "sample")])
def test_imported_model_samples_what_diffusers_samples(tmp_path, schedule, prediction):
    unet = _unet()
    src = _save(tmp_path / "src", unet, beta_schedule=schedule, prediction_type=prediction,
                beta_start=0.00085 if schedule == "scaled_linear" else 1e-4,
                beta_end=0.012 if schedule == "scaled_linear" else 0.02)
    assert run(["import", str(src), "--out", str(tmp_path / "m")]) == 0
    pipe = load_pipeline(tmp_path / "m")
    card = pipe.card
    assert (card.architecture.preset, card.framework, card.image_size, card.channels) == ("diffusers-unet", "ddpm",
                                                                                           SIZE, 3)
    assert card.diffusion.schedule == {"linear": "linear", "squaredcos_cap_v2": "cosine",
                                       "scaled_linear": "scaled_linear"}[schedule]
    assert card.prediction == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction]

    ours = _ours(pipe, 3)
    theirs = _diffusers_ddim(unet.eval(), diffusers.DDPMScheduler.from_pretrained(src / "scheduler").config,
                             _noise(3))
    assert (ours - theirs).abs().max() < TOL
    assert (theirs.abs() > 0.05).float().mean() > 0.5  # a real comparison: not all zeros


def test_class_conditional_import_maps_num_class_embeds(tmp_path):
    unet = _unet(num_class_embeds=4)
    src = _save(tmp_path / "src", unet)
    # no null class: 4 real classes, sampled at guidance scale 1; CFG refused in one line
    assert run(["import", str(src), "--out", str(tmp_path / "plain"), "--class-names", "a,b,c,d"]) == 0
    pipe = load_pipeline(tmp_path / "plain")
    assert pipe.num_classes == 4 and pipe.class_names == ["a", "b", "c", "d"]
    assert pipe.default_cfg == 1.0
    labels = torch.tensor([0, 3, 2])
    ours = _ours(pipe, 3, labels)
    sched = diffusers.DDPMScheduler.from_pretrained(src / "scheduler").config
    assert (ours - _diffusers_ddim(unet.eval(), sched, _noise(3), labels)).abs().max() < TOL
    with pytest.raises(ValueError, match="needs a null class, which this model did not learn"):
        pipe.generate(2, torch.tensor([0, 1]), cfg=3.0, steps=2)
    with pytest.raises(ValueError, match="learned no null class, so it cannot sample without a class"):
        pipe.generate(2, steps=2)
    # serving refuses both with a 422 before any work
    pytest.importorskip("pydantic")
    from difforge.serve.config import ServeConfig
    from difforge.serve.limits import HTTPError
    from difforge.serve.requests import Validator
    from difforge.serve.schemas import GenerateRequest

    validator = Validator(pipe, ServeConfig())
    for body, message in (({"n": 2}, "cannot sample without one"), ({"class": "a", "cfg": 3.0}, "cfg: this model")):
        with pytest.raises(HTTPError, match=message) as err:
            validator.generate(GenerateRequest.model_validate(body))
        assert err.value.status == 422
    assert ModelCard.load(tmp_path / "plain" / "config.json").to_dict()["conditioning"]["null_label"] is None

    # --null-class: the last embedding is the null class; CFG then works and mixes both branches
    assert run(["import", str(src), "--out", str(tmp_path / "cfg"), "--null-class"]) == 0
    pipe = load_pipeline(tmp_path / "cfg")
    assert pipe.num_classes == 3 and pipe.card.conditioning.null_label == 3 and pipe.default_cfg == DEFAULT_CFG
    guided = _ours(pipe, 2, torch.tensor([0, 2]), cfg=2.0)
    assert torch.isfinite(guided).all()


def test_import_refuses_what_does_not_map(tmp_path, capsys):
    src = _save(tmp_path / "src", _unet())
    cases = [({"beta_schedule": "sigmoid"}, "scheduler: beta_schedule 'sigmoid' has no difforge schedule"),
             ({"trained_betas": [0.1, 0.2]}, "scheduler: trained_betas"),
             ({"prediction_type": "flow"}, "scheduler: prediction_type 'flow' has no difforge prediction"),
             ({"variance_type": "learned_range"}, "scheduler: variance_type 'learned_range'"),
             ({"_class_name": "EulerDiscreteScheduler"}, "scheduler: _class_name 'EulerDiscreteScheduler'")]
    config_file = src / "scheduler" / "scheduler_config.json"
    good = json.loads(config_file.read_text())
    for i, (change, message) in enumerate(cases):
        config_file.write_text(json.dumps({**good, **change}))
        assert run(["import", str(src), "--out", str(tmp_path / f"m{i}")]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / f"m{i}").exists()
    config_file.write_text(json.dumps(good))
    unet_file = src / "unet" / "config.json"
    unet_file.write_text(json.dumps({**json.loads(unet_file.read_text()), "time_embedding_type": "fourier"}))
    with pytest.raises(InteropError, match="unet: time_embedding_type 'fourier' is not supported"):
        import_diffusers(src, tmp_path / "f")
    # never into a folder of other files
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert run(["import", str(tmp_path / "src"), "--out", str(tmp_path / "busy")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_flat_folder_and_scheduler_option(tmp_path):
    unet = _unet()
    unet.save_pretrained(tmp_path / "bare")
    with pytest.raises(InteropError, match="has no scheduler config"):
        import_diffusers(tmp_path / "bare", tmp_path / "m")
    diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(tmp_path / "sched")
    import_diffusers(tmp_path / "bare", tmp_path / "m", scheduler=tmp_path / "sched")
    assert ModelCard.load(tmp_path / "m" / "config.json").diffusion.schedule == "cosine"


def test_scheduler_mapping_round_trips():
    spec, pred = framework_from_scheduler({"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear",
                                           "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 500,
                                           "prediction_type": "v_prediction"})
    assert (spec.framework, spec.schedule, spec.timesteps, spec.beta_start, spec.beta_end, pred) == (
        "ddpm", "scaled_linear", 500, 0.00085, 0.012, "v")
    from model_cards import tiny_card

    back = scheduler_from_card(tiny_card(schedule="cosine", prediction="x0"))
    assert (back["beta_schedule"], back["prediction_type"]) == ("squaredcos_cap_v2", "sample")
    # diffusers' betas for the same config equal ours (float32 storage on its side)
    from difforge.diffusion import make_schedule

    for name, ours in (("linear", "linear"), ("scaled_linear", "scaled_linear"), ("squaredcos_cap_v2", "cosine")):
        ref = diffusers.DDPMScheduler(beta_schedule=name, beta_start=0.00085, beta_end=0.012)
        mine = make_schedule(ours, 1000, 0.00085, 0.012)
        assert torch.allclose(ref.alphas_cumprod.double(), mine.alphas_cumprod, rtol=1e-5, atol=1e-7), name


def _difforge_model(tmp_path, num_classes=None):
    """A diffusers-unet model directory with random weights, as `difforge export` writes one."""
    from safetensors.torch import save_file

    from difforge.models.card import Architecture
    from model_cards import tiny_card

    card = tiny_card(size=SIZE, channels=3, num_classes=num_classes, class_names=["x", "y"] if num_classes else None)
    card = ModelCard(Architecture.of_preset("diffusers-unet"), SIZE, SIZE, 3, card.diffusion, "eps",
                     card.conditioning, card.class_names, "toy", 123, "ema")
    torch.manual_seed(1)
    net = card.build_network()
    folder = tmp_path / "ours"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors")
    card.save(folder / "config.json")
    return folder


@pytest.mark.parametrize("num_classes", [None, 2])
def test_export_loads_in_diffusers_with_the_same_outputs(tmp_path, num_classes):
    model = _difforge_model(tmp_path, num_classes)
    assert run(["export", str(model), "--out", str(tmp_path / "hf"), "--format", "diffusers"]) == 0
    out = tmp_path / "hf"
    assert {p.name for p in out.iterdir()} >= {"unet", "scheduler", "model_index.json", "difforge.json", "README.md"}
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet").eval()
    sched = diffusers.DDPMScheduler.from_pretrained(out / "scheduler")
    assert (unet.config.sample_size == SIZE
            and unet.config.num_class_embeds == (num_classes + 1 if num_classes else None))
    pipe = load_pipeline(model)
    labels = torch.tensor([1, 0, 1]) if num_classes else None
    x, t = torch.randn(3, 3, SIZE, SIZE), torch.tensor([5.0, 500.0, 999.0])
    with torch.no_grad():
        assert torch.equal(unet(x, t, class_labels=labels).sample, pipe.net(x, t, labels))
    ours = _ours(pipe, 3, labels, cfg=1.0) if num_classes else _ours(pipe, 3)
    assert (ours - _diffusers_ddim(unet, sched.config, _noise(3), labels)).abs().max() < TOL
    if not num_classes:  # diffusers' own pipeline loads the folder and runs (it passes no class labels)
        images = diffusers.DDPMPipeline.from_pretrained(out)(
            batch_size=1, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
        assert images.shape == (1, SIZE, SIZE, 3)


def test_round_trip_import_export_import_keeps_every_weight(tmp_path):
    src = _save(tmp_path / "src", _unet(num_class_embeds=3), beta_schedule="squaredcos_cap_v2",
                prediction_type="v_prediction")
    import_diffusers(src, tmp_path / "a", null_class=True, dataset="toy", class_names=["p", "q"])
    assert run(["export", str(tmp_path / "a"), "--out", str(tmp_path / "hf"), "--format", "diffusers"]) == 0
    import_diffusers(tmp_path / "hf", tmp_path / "b")  # difforge.json restores classes, null class, dataset
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card_a = json.loads((tmp_path / "a" / "config.json").read_text())
    card_b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert card_a == card_b
    # and the diffusers UNet's weights are the imported ones, key for key
    theirs = load_file(tmp_path / "hf" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(theirs[k], a[f"unet.{k}"]) for k in theirs) and len(theirs) == len(a)


def test_export_refuses_difforge_presets_in_one_line(tmp_path, capsys):
    from pathlib import Path

    fixture = Path(__file__).parents[1] / "fixtures" / "model-ddpm"
    assert run(["export", str(fixture), "--out", str(tmp_path / "hf"), "--format", "diffusers"]) == 1
    err = capsys.readouterr().err
    assert "is difforge's own network, which diffusers has no class for" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "hf").exists()


def test_trained_diffusers_unet_run_exports_to_diffusers(tmp_path):
    """difforge trains the diffusers-unet preset (class-conditional digits, with its null
    class); the run's newest checkpoint exports to a folder diffusers loads."""
    run_dir = tmp_path / "run"
    assert run(["train", "--dataset", "digits", "--model", "diffusers-unet", "--max-steps", "2", "--batch-size", "8",
                "--out", str(run_dir), "--no-progress"]) == 0
    assert run(["export", str(run_dir), "--out", str(tmp_path / "hf"), "--format", "diffusers", "--no-ema"]) == 0
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "hf" / "unet")
    assert unet.config.num_class_embeds == 11  # 10 digits and the null class
    card = ModelCard.load(tmp_path / "hf" / "difforge.json")
    assert (card.step, card.weights, card.dataset) == (2, "raw", "digits")
    assert "label 10 is the null class" in (tmp_path / "hf" / "README.md").read_text()
    pipe = load_pipeline(run_dir, ema=False)
    x, t, y = torch.randn(2, 1, unet.config.sample_size, unet.config.sample_size), torch.tensor([3.0, 700.0]), \
        torch.tensor([4, 10])
    with torch.no_grad():
        assert torch.equal(unet(x, t, class_labels=y).sample, pipe.net(x, t, y))


def test_an_imported_diffusers_model_fine_tunes_in_full_and_with_lora(tmp_path):
    import numpy as np
    from PIL import Image

    src = _save(tmp_path / "src", _unet())
    assert run(["import", str(src), "--out", str(tmp_path / "imported")]) == 0
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(12):
        pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(tmp_path / "imgs" / f"{i}.png")
    common = ["--data", str(tmp_path / "imgs"), "--init-from", str(tmp_path / "imported"), "--max-steps", "2",
              "--batch-size", "4", "--no-progress", "--sample-every", "0", "--no-final-grid"]
    assert run(["train", *common, "--out", str(tmp_path / "full")]) == 0
    assert run(["train", *common, "--lora-rank", "2", "--out", str(tmp_path / "lora")]) == 0
    for run_dir in ("full", "lora"):
        pipe = load_pipeline(tmp_path / run_dir)
        assert pipe.card.architecture.preset == "diffusers-unet" and pipe.card.source is not None
        images, _ = pipe.generate(n=2, steps=2, seed=0)
        assert images.shape == (2, 3, SIZE, SIZE)
