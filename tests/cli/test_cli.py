"""The CLI through `main(argv)`: train -> sample -> export round trip, help, clear errors."""

import json

import numpy as np
import pytest
import torch

from cli_runner import run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    code = run(["train", "--dataset", "digits", "--model", "tiny", "--max-steps", "8", "--batch-size", "16",
                "--sample-every", "4", "--checkpoint-every", "4", "--ema-warmup", "4", "--out", str(out),
                "--no-progress"])
    assert code == 0
    return out


def test_run_directory_layout(tiny_run):
    assert (tiny_run / "config.yaml").is_file()
    assert (tiny_run / "model.json").is_file()
    assert (tiny_run / "samples" / "final.png").is_file()
    assert (tiny_run / "samples" / "step-0000004.png").is_file()
    # at step 4 the EMA is still a plain copy (warm-up 4): its raw grid would be the same picture
    assert not (tiny_run / "samples" / "step-0000004-raw.png").exists()
    assert (tiny_run / "samples" / "final-raw.png").is_file()  # averaged from step 5 on: both grids
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == ["latest", "step-4", "step-8"]
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in rows) and any("loss" in r and "lr" in r for r in rows)


def test_sample_npz_native_size_and_labels(tiny_run, tmp_path):
    npz = tmp_path / "s.npz"
    code = run(["sample", str(tiny_run), "--classes", "3,7", "--n", "4", "--steps", "5",
                "--out", str(tmp_path / "s.png"), "--npz", str(npz), "--device", "cpu"])
    assert code == 0
    data = np.load(npz)
    assert data["images"].shape == (4, 8, 8, 1) and data["images"].dtype == np.uint8
    assert data["labels"].tolist() == [3, 3, 7, 7] and data["labels"].dtype == np.int64
    # OpenAI's ADM evaluator reads arr_0 (N, H, W, 3) uint8 and arr_1: the same pixels, gray repeated as RGB
    assert data["arr_0"].dtype == np.uint8 and np.array_equal(data["arr_0"], np.repeat(data["images"], 3, axis=-1))
    assert np.array_equal(data["arr_1"], data["labels"])
    assert (tmp_path / "s.png").is_file()


def test_export_round_trip_samples_identically(tiny_run, tmp_path):
    assert run(["export", str(tiny_run), "--out", str(tmp_path / "m")]) == 0
    from difforge.models.card import ModelCard

    card = ModelCard.load(tmp_path / "m" / "config.json")
    assert card.step == 8 and card.weights == "ema" and card.class_names[0] == "0"
    assert card == ModelCard.load(tiny_run / "model.json").exported(8, "ema")
    for src, name in ((tiny_run, "a"), (tmp_path / "m", "b")):
        assert run(["sample", str(src), "--class", "5", "--n", "3", "--steps", "4", "--seed", "9",
                    "--out", str(tmp_path / f"{name}.png"), "--npz", str(tmp_path / f"{name}.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert np.array_equal(a["images"], b["images"])


def test_ddpm_sampler_and_no_ema(tiny_run, tmp_path):
    assert run(["sample", str(tiny_run), "--sampler", "ddpm", "--steps", "20", "--no-ema", "--class", "0",
                "--n", "2", "--out", str(tmp_path / "d.png")]) == 0


def test_help_everywhere(capsys):
    assert run(["--help"]) == 0
    text = capsys.readouterr().out
    for cmd in ("train", "sample", "export"):
        assert cmd in text
        assert run([cmd, "--help"]) == 0
        assert "Usage: difforge " + cmd in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/no/such/dir", "--out", "{tmp}/x"], "no such file or directory"),
        (["train", "--dataset", "digits", "--model", "huge", "--out", "{tmp}/x"], "unknown model 'huge'"),
        (["train", "--dataset", "digits", "--schedule", "quadratic", "--out", "{tmp}/x"], "'quadratic' is not one of"),
    ],
)
def test_clear_errors(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run(argv) != 0
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("klass, message", [("12", "class 12 out of range"), ("Sneaker", "unknown class 'Sneaker'")])
def test_wrong_class(tiny_run, tmp_path, capsys, klass, message):
    assert run(["sample", str(tiny_run), "--class", klass, "--out", str(tmp_path / "x.png")]) != 0
    assert message in capsys.readouterr().err


def test_sample_missing_model(tmp_path, capsys):
    assert run(["sample", str(tmp_path / "nothing")]) != 0
    assert "no such run or model directory" in capsys.readouterr().err


def test_seed_independent_of_batch_size(tiny_run):
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(tiny_run)
    labels = torch.tensor([1, 2, 3, 4])
    a, _ = pipe.generate(labels=labels, steps=5, seed=3, batch_size=4)
    b, _ = pipe.generate(labels=labels, steps=5, seed=3, batch_size=1)
    c, _ = pipe.generate(labels=labels[2:], steps=5, seed=5, batch_size=2)
    assert (a.int() - b.int()).abs().max() <= 1
    assert (a[2:].int() - c.int()).abs().max() <= 1


# ---------------------------------------------------------------- samplers, grids, GIF


def test_cli_choices_match_the_registries():
    from difforge.cli import GRID_NAMES, SAMPLER_NAMES
    from difforge.diffusion.grids import GRIDS
    from difforge.pipeline import DEFAULT_STEPS
    from difforge.sampling import SAMPLERS

    assert set(SAMPLER_NAMES) == set(SAMPLERS) == set(DEFAULT_STEPS)
    assert set(GRID_NAMES) == set(GRIDS)


@pytest.mark.parametrize("sampler, extra", [
    ("euler", []), ("euler-a", ["--eta", "0.5"]), ("heun", ["--schedule", "log-snr"]), ("dpmpp-2m", []),
    ("dpmpp-3m", ["--schedule", "trailing"]), ("ddim", ["--schedule", "karras", "--eta", "1"]),
])
def test_sample_with_each_sampler(tiny_run, tmp_path, sampler, extra):
    npz = tmp_path / "s.npz"
    assert run(["sample", str(tiny_run), "--sampler", sampler, "--steps", "4", "--class", "2", "--n", "2",
                "--out", str(tmp_path / "s.png"), "--npz", str(npz), *extra]) == 0
    assert np.load(npz)["images"].shape == (2, 8, 8, 1)


def test_gif_and_progress_count_steps_not_calls(tiny_run, tmp_path, capsys):
    from PIL import Image

    gif = tmp_path / "steps.gif"
    assert run(["sample", str(tiny_run), "--sampler", "heun", "--steps", "6", "--classes", "1,4", "--n", "4",
                "--out", str(tmp_path / "s.png"), "--gif", str(gif), "--cfg-rescale", "0.7"]) == 0
    captured = capsys.readouterr()
    assert "6/6" in captured.err and "11/" not in captured.err  # heun: 11 denoiser calls, 6 steps
    with Image.open(gif) as im:
        assert im.n_frames == 6  # steps 0..4 (6 steps <= 16 frames), then the result (= step 5's estimate)
        assert im.size == Image.open(tmp_path / "s.png").size
    assert "6 frames" in captured.out


def test_gif_frames_stay_few_for_long_runs(tiny_run, tmp_path):
    from PIL import Image

    gif = tmp_path / "ddpm.gif"
    assert run(["sample", str(tiny_run), "--sampler", "ddpm", "--steps", "40", "--class", "0", "--n", "1",
                "--threshold", "0.995", "--out", str(tmp_path / "s.png"), "--gif", str(gif)]) == 0
    with Image.open(gif) as im:
        assert im.n_frames == 13 + 1  # every ceil(40 / 16) = 3rd step: 0, 3, ..., 36; then the result


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "heun", "--eta", "0.5"], "--eta applies to ddim, euler-a, dpmpp-2m-sde, not to heun"),
    (["--sampler", "plms"], "'plms' is not one of"),
    (["--schedule", "cosine"], "'cosine' is not one of"),
    (["--steps", "0"], "steps must be >= 1"),
    (["--sampler", "euler", "--steps", "2000", "--schedule", "trailing"], "steps must be in 1..1000"),
    (["--cfg-rescale", "2"], "guidance rescale must be in [0, 1]"),
    (["--cfg-interval", "1"], "--cfg-interval takes LO,HI (two noise levels, e.g. 0.3,5) or all, got '1'"),
    (["--cfg-interval", "5,1"], "--cfg-interval needs 0 <= LO <= HI, got '5,1'"),
    (["--threshold", "0"], "percentile must be in (0, 1]"),
])
def test_sample_option_errors(tiny_run, tmp_path, capsys, argv, message):
    assert run(["sample", str(tiny_run), "--n", "1", "--class", "0", "--out", str(tmp_path / "x.png"), *argv]) != 0
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_pipeline_defaults_and_errors(tiny_run):
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(tiny_run)
    assert len(pipe.sigmas("ddpm")) == 1001  # every timestep
    ddim, heun = pipe.sigmas("ddim"), pipe.sigmas("heun")
    assert len(ddim) == 51 and ddim[0] == pipe.process.sigma_max  # trailing starts at t = T - 1
    assert len(heun) == 26 and heun[-2] == pipe.process.sigma_min  # karras spans the whole range
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        pipe.sigmas("plms")
    with pytest.raises(ValueError, match=r"unknown sigma grid 'cosine'; expected one of \['karras', "):
        pipe.sigmas("euler", 10, "cosine")
    with pytest.raises(ValueError, match="sampler 'heun' takes no option 'eta'"):
        pipe.generate(n=1, labels=torch.tensor([0]), sampler="heun", steps=2, eta=1.0)


def test_default_guidance_interval(tiny_run, tmp_path):
    """A class model guides at DEFAULT_CFG inside DEFAULT_CFG_INTERVAL unless told otherwise: the
    defaults draw the same images as the explicit setting, and `--cfg-interval all` (0, inf)
    the same as a guidance at every level."""
    import math

    from difforge.defaults import DEFAULT_CFG, DEFAULT_CFG_INTERVAL
    from difforge.pipeline import load_pipeline
    from difforge.sampling import CFGDenoiser

    pipe = load_pipeline(tiny_run)
    assert pipe.default_cfg == DEFAULT_CFG and pipe.default_cfg_interval == DEFAULT_CFG_INTERVAL

    def guidance(den):
        return next(m for m in den.modules() if isinstance(m, CFGDenoiser))

    assert guidance(pipe.denoiser()).interval == DEFAULT_CFG_INTERVAL
    assert guidance(pipe.denoiser(cfg=3.0)).interval == DEFAULT_CFG_INTERVAL  # a scale alone keeps the interval
    assert guidance(pipe.denoiser(cfg_interval=(0.0, math.inf))).interval is None
    assert guidance(pipe.denoiser(cfg_interval=(1.0, 2.0))).interval == (1.0, 2.0)
    labels = torch.tensor([0, 3])
    common = {"labels": labels, "sampler": "dpmpp-2m-sde", "steps": 4, "seed": 5}
    default, _ = pipe.generate(**common)
    explicit, _ = pipe.generate(cfg=DEFAULT_CFG, cfg_interval=DEFAULT_CFG_INTERVAL, **common)
    everywhere, _ = pipe.generate(cfg_interval=(0.0, math.inf), **common)
    assert torch.equal(default, explicit) and not torch.equal(default, everywhere)
    assert run(["sample", str(tiny_run), "--n", "2", "--class", "1", "--steps", "3", "--cfg-interval", "all",
                "--out", str(tmp_path / "all.png"), "--no-progress"]) == 0


def test_seed_independent_of_batch_size_stochastic_sampler(tiny_run):
    from difforge.pipeline import load_pipeline

    pipe = load_pipeline(tiny_run)
    labels = torch.tensor([1, 2, 3, 4])
    kw = {"sampler": "euler-a", "steps": 6, "seed": 3}
    a, _ = pipe.generate(labels=labels, batch_size=4, **kw)
    b, _ = pipe.generate(labels=labels, batch_size=1, **kw)
    c, _ = pipe.generate(labels=labels[2:], batch_size=2, **{**kw, "seed": 5})
    assert (a.int() - b.int()).abs().max() <= 1  # batched convolutions may differ in the last bit
    assert (a[2:].int() - c.int()).abs().max() <= 1


def test_n_is_the_total_even_below_the_class_count(tiny_run, tmp_path):
    npz = tmp_path / "few.npz"
    assert run(["sample", str(tiny_run), "--n", "4", "--steps", "2", "--out", str(tmp_path / "few.png"),
                "--npz", str(npz)]) == 0
    assert np.load(npz)["labels"].tolist() == [0, 1, 2, 3]


def test_sampling_precision_and_compile(tiny_run, tmp_path):
    from difforge.pipeline import load_pipeline
    from difforge.runtime import native_bf16

    pipe = load_pipeline(tiny_run)
    x, sigma, cond = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), 2.0, torch.arange(4)
    ref = pipe.model(x, sigma, cond)
    pipe.use_precision("bf16")
    assert pipe.model.autocast is torch.bfloat16
    low = pipe.model(x, sigma, cond)
    assert low.dtype == torch.float32 and not torch.equal(low, ref)  # the network ran in bf16
    assert (low - ref).abs().max() <= 0.05 * ref.abs().max()  # bf16 keeps 8 bits of mantissa
    pipe.use_precision("auto")
    assert pipe.model.autocast is (torch.bfloat16 if native_bf16(torch.device("cpu")) else None)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        pipe.use_precision("fp8")
    pipe.use_precision("fp32").compile(backend="eager")  # the plumbing; inductor's speed is a benchmark
    assert torch.equal(pipe.model(x, sigma, cond), ref)
    assert run(["sample", str(tiny_run), "--n", "2", "--class", "1", "--steps", "3", "--precision", "bf16",
                "--cfg-interval", "0.2,20", "--out", str(tmp_path / "b.png")]) == 0
