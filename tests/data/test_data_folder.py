"""Image-folder loading: layouts, mode conversions, bad files, sizing."""

import numpy as np
import pytest
import torch
from PIL import Image

from difforge.data import load_image_folder

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _rgb(path, color, size=(16, 16)):
    Image.new("RGB", size, color).save(path)


def _rgba_half_transparent(path):
    a = np.zeros((16, 16, 4), np.uint8)
    a[:, :8] = (255, 0, 0, 255)  # left: opaque red; right: fully transparent black
    Image.fromarray(a, "RGBA").save(path)


def _palette(path):
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)  # index 0 blue, 1 green
    im.paste(1, (0, 0, 16, 8))  # top half green
    im.save(path)


def _gray16(path):
    a = np.zeros((16, 16), np.uint16)
    a[:, 4:8], a[:, 8:] = 32896, 65535  # 0 -> 0, 128 * 257 -> 128, 65535 -> 255
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I")


def _cmyk(path):
    im = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # white
    im.paste((255, 0, 0, 0), (0, 0, 8, 16))  # left: cyan
    im.save(path)


def _truncated_png(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "pets"
    (root / "cats" / "nested").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "empty_dir").mkdir()
    (root / ".hidden").mkdir()
    _rgb(root / "cats" / "a.png", RED)
    _rgba_half_transparent(root / "cats" / "b.PNG")
    _rgb(root / "cats" / "nested" / "c.bmp", BLUE)
    _palette(root / "dogs" / "d.gif")
    Image.new("L", (16, 16), 100).save(root / "dogs" / "e.png")
    _gray16(root / "dogs" / "f.png")
    _cmyk(root / "dogs" / "g.tif")
    _truncated_png(root / "dogs" / "broken.png")
    (root / "dogs" / "fake.jpg").write_text("this is not an image\n")
    (root / "dogs" / "notes.txt").write_text("notes\n")
    (root / ".hidden" / "x.png").write_bytes(b"ignored")
    _rgb(root / "loose.png", BLUE)  # outside the class folders
    return root


def test_class_folders_and_conversions(class_folder):
    ds, skipped = load_image_folder(class_folder, size=16)
    assert ds.class_names == ["cats", "dogs"] and ds.name == "pets"
    assert ds.images.shape == (7, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    img = ds.images.permute(0, 2, 3, 1)  # (N, H, W, 3) for readable colour checks
    a, b, c, d, e, f, g = img  # order: cats/a, cats/b, cats/nested/c, dogs/d, e, f, g
    assert (a == torch.tensor(RED, dtype=torch.uint8)).all()
    assert (b[:, :8] == torch.tensor(RED, dtype=torch.uint8)).all()
    assert (b[:, 8:] == 255).all()  # transparency composited on white
    assert (c == torch.tensor(BLUE, dtype=torch.uint8)).all()
    assert (d[:8] == torch.tensor((0, 255, 0), dtype=torch.uint8)).all() and (d[8:, :, 2] == 255).all()
    assert (e == 100).all()  # grayscale repeated to RGB
    assert f[0, :, 0].tolist() == [0] * 4 + [128] * 4 + [255] * 8  # 16-bit scaled, not clipped
    assert (g[:, :8] == torch.tensor((0, 255, 255), dtype=torch.uint8)).all() and (g[:, 8:] == 255).all()

    reasons = {p.split("pets/")[1]: r for p, r in skipped}
    assert set(reasons) == {"dogs/broken.png", "dogs/fake.jpg", "dogs/notes.txt", "loose.png"}
    assert "truncated" in reasons["dogs/broken.png"] or "broken" in reasons["dogs/broken.png"]
    assert "UnidentifiedImageError" in reasons["dogs/fake.jpg"]
    assert "unsupported file type '.txt'" in reasons["dogs/notes.txt"]
    assert "class sub-folder" in reasons["loose.png"]


def test_forced_grayscale_uses_luma(class_folder):
    ds, _ = load_image_folder(class_folder, size=16, channels=1)
    assert ds.images.shape == (7, 1, 16, 16)
    assert int(ds.images[0, 0, 0, 0]) == 76  # ITU-R 601-2: 0.299 * 255
    assert int(ds.images[4, 0, 0, 0]) == 100


def test_flat_folder_is_unlabelled_and_grayscale_auto(tmp_path):
    Image.new("L", (20, 20), 7).save(tmp_path / "a.png")
    _gray16(tmp_path / "b.png")
    Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "c.webp", lossless=True)  # gray content
    Image.new("LA", (20, 20), (50, 0)).save(tmp_path / "d.png")  # transparent -> white
    ds, skipped = load_image_folder(tmp_path)
    assert skipped == [] and ds.labels is None and ds.class_names is None and ds.num_classes is None
    assert ds.images.shape == (4, 1, 20, 20)  # median_low of shorter sides 20, 16, 20, 20
    assert int(ds.images[0].float().mean()) == 7 and (ds.images[3] == 255).all()


def test_mixed_colour_gives_rgb(tmp_path):
    Image.new("L", (8, 8), 7).save(tmp_path / "a.png")
    _rgb(tmp_path / "b.png", RED, size=(8, 8))
    ds, _ = load_image_folder(tmp_path)
    assert ds.channels == 3 and ds.size == 8
    assert (ds.images[0] == 7).all()


def test_default_size_median_capped_and_center_crop(tmp_path):
    for i, (w, h) in enumerate([(100, 50), (80, 80), (20, 20)]):
        _rgb(tmp_path / f"{i}.png", RED, size=(w, h))
    ds, _ = load_image_folder(tmp_path)
    assert ds.size == 50  # median of shorter sides 50, 80, 20
    big = tmp_path / "big"
    big.mkdir()
    for i in range(2):  # JPEG: decoded at a reduced scale (draft), then resized
        _rgb(big / f"{i}.JPG", RED, size=(600, 400))
    ds, skipped = load_image_folder(big)
    assert ds.size == 64 and skipped == []  # capped
    assert (ds.images[:, 0].float().mean() - 255).abs() < 3 and ds.images[:, 1:].float().mean() < 3
    wide = tmp_path / "wide"
    wide.mkdir()
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, 10:20] = 255  # only the centre square is white
    Image.fromarray(a).save(wide / "w.png")
    ds, _ = load_image_folder(wide, size=10)
    assert (ds.images == 255).all()


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = RED
    a[:, 10:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: the red left half becomes the top
    Image.fromarray(a).save(tmp_path / "r.png", exif=exif)
    ds, _ = load_image_folder(tmp_path, size=10)
    img = ds.images[0].permute(1, 2, 0)
    assert (img[:5] == torch.tensor(RED, dtype=torch.uint8)).all()
    assert (img[5:] == torch.tensor(BLUE, dtype=torch.uint8)).all()


def test_decompression_bomb_limit_skips(tmp_path):
    _rgb(tmp_path / "a.png", RED, size=(8, 8))
    _rgb(tmp_path / "big.png", RED, size=(100, 100))
    ds, skipped = load_image_folder(tmp_path, max_pixels=1000)
    assert len(ds) == 1 and skipped[0][0].endswith("big.png") and "decompression-bomb" in skipped[0][1]
    ds, skipped = load_image_folder(tmp_path, max_pixels=1000, size=8)  # same with a given size
    assert len(ds) == 1 and len(skipped) == 1


def test_class_with_only_bad_files_is_dropped(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _rgb(tmp_path / "b" / "x.png", RED, size=(8, 8))
    (tmp_path / "a" / "bad.png").write_bytes(b"garbage")
    ds, skipped = load_image_folder(tmp_path)
    assert ds.class_names == ["b"] and ds.labels.tolist() == [0] and len(skipped) == 1


def test_empty_and_unreadable_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images found in .*empty"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not a png")
    with pytest.raises(ValueError, match="no readable images in .*bad"):
        load_image_folder(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(tmp_path / "bad", channels=2)
