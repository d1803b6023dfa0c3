"""The task commands end to end on an exported tiny model and real PNG files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import run
from difforge.models import build_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    net = build_model("tiny", in_channels=1, num_classes=3)
    save_file(net.state_dict(), d / "model.safetensors")
    info = {"format": "difforge-model", "version": 1, "model": {"preset": "tiny", "in_channels": 1, "num_classes": 3},
            "diffusion": {"timesteps": 1000, "schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
            "prediction": "eps", "image_size": 8, "native_size": 8, "channels": 1, "class_names": ["a", "b", "c"]}
    (d / "config.json").write_text(json.dumps(info))
    return d


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    d = tmp_path_factory.mktemp("png")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(d / "low.png")
    m = np.zeros((8, 8), np.uint8)
    m[:, :3] = 255
    Image.fromarray(m).save(d / "mask.png")
    Image.fromarray(m[:6, :6]).save(d / "small-mask.png")
    (d / "broken.png").write_bytes((d / "a.png").read_bytes()[:40])
    return d


def test_inpaint_png_mask_keeps_black_pixels(model_dir, pngs, tmp_path):
    out = tmp_path / "o.png"
    assert run(["inpaint", str(model_dir), "--image", str(pngs / "a.png"), "--mask", str(pngs / "mask.png"),
                "--out", str(out), "--steps", "4", "--class", "b"]) == 0
    src, res = np.asarray(Image.open(pngs / "a.png")), np.asarray(Image.open(out))
    assert res.shape == (8, 8)
    assert np.array_equal(res[:, 3:], src[:, 3:])


@pytest.mark.parametrize("argv", [
    ["restore", "--image", "{p}/a.png", "--strength", "0.4", "--steps", "6"],
    ["denoise", "--image", "{p}/a.png", "--sigma", "0.1"],
    ["upscale", "--image", "{p}/low.png", "--scale", "2", "--steps", "4"],
    ["inpaint", "--image", "{p}/a.png", "--mask", "lines", "--method", "blend", "--steps", "4"],
])
def test_task_commands_write_an_image(model_dir, pngs, tmp_path, argv):
    out = tmp_path / "o.png"
    argv = [a.replace("{p}", str(pngs)) for a in argv]
    assert run([argv[0], str(model_dir), *argv[1:], "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (8, 8)


def test_interpolate_writes_gif_and_strip(model_dir, pngs, tmp_path):
    out = tmp_path / "i.gif"
    assert run(["interpolate", str(model_dir), "--a", str(pngs / "a.png"), "--b", str(pngs / "b.png"),
                "--frames", "4", "--steps", "5", "--out", str(out)]) == 0
    gif = Image.open(out)
    assert gif.n_frames == 6  # a -> b and back, without repeating the ends
    strip = Image.open(tmp_path / "i.png")
    assert strip.width > 3 * strip.height


@pytest.mark.parametrize("argv,message", [
    (["inpaint", "--image", "{p}/a.png", "--mask", "{p}/small-mask.png"], "6x6; the image is 8x8"),
    (["inpaint", "--image", "{p}/a.png", "--mask", "blob"], "neither a preset"),
    (["inpaint", "--image", "{p}/low.png", "--mask", "center"], "4x4; this model works at 8x8"),
    (["denoise", "--image", "{p}/broken.png", "--sigma", "0.1"], "broken.png: not a readable image"),
    (["restore", "--image", "{p}/missing.png", "--strength", "0.5"], "no such image file"),
    (["restore", "--image", "{p}/a.png", "--strength", "0.5", "--class", "zebra"], "unknown class 'zebra'"),
    (["upscale", "--image", "{p}/a.png", "--scale", "2"], "needs 4x4"),
])
def test_clear_one_line_errors(model_dir, pngs, tmp_path, capsys, argv, message):
    argv = [a.replace("{p}", str(pngs)) for a in argv]
    assert run([argv[0], str(model_dir), *argv[1:], "--out", str(tmp_path / "x.png")]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv, count", [
    (["inpaint", "--image", "{p}/a.png", "--mask", "center", "--steps", "4", "--jump-length", "2", "--resample", "2"],
     "6/6"),  # RePaint: 4 steps, and the first 2 once more
    (["restore", "--image", "{p}/a.png", "--strength", "0.5", "--steps", "10"], "6/6"),  # SDEdit: the grid's low end
    (["denoise", "--image", "{p}/a.png", "--sigma", "0.1"], "1/1"),
    (["upscale", "--image", "{p}/low.png", "--steps", "3"], "3/3"),
    (["interpolate", "--a", "{p}/a.png", "--b", "{p}/b.png", "--frames", "3", "--steps", "5"], "13/13"),
])
def test_progress_bar_counts_the_tasks_steps(model_dir, pngs, tmp_path, capsys, argv, count):
    argv = [a.replace("{p}", str(pngs)) for a in argv]
    out = tmp_path / ("o.gif" if argv[0] == "interpolate" else "o.png")
    assert run([argv[0], str(model_dir), *argv[1:], "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"{argv[0]}: 100%" in captured.err and count in captured.err
    assert captured.out.startswith(f"wrote {out}")
    assert run([argv[0], str(model_dir), *argv[1:], "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
