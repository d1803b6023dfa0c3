"""One image decoder for training, the task commands and the HTTP API (difforge.io.decode):
the same file gives the same pixels everywhere, and only the documented formats are read."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

SIZE = 8
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def png(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def rgba_with_exif() -> bytes:
    """8x8 RGBA: a red opaque top-left quarter, a half-transparent blue band, the rest fully
    transparent; EXIF orientation 6 (the viewer turns it 90 degrees clockwise)."""
    a = np.zeros((SIZE, SIZE, 4), np.uint8)
    a[:4, :4] = (255, 0, 0, 255)
    a[6:, :] = (0, 0, 255, 128)
    exif = Image.Exif()
    exif[0x0112] = 6
    return png(Image.fromarray(a, "RGBA"), exif=exif)


def gray16() -> bytes:
    """8x8 16-bit grayscale: columns 0, 4096, ..., 65535 (Pillow mode I;16)."""
    row = np.linspace(0, 65535, SIZE).round().astype(np.uint16)
    img = Image.fromarray(np.tile(row, (SIZE, 1)))
    assert img.mode == "I;16"
    return png(img)


def jpeg_with_exif() -> bytes:
    a = np.zeros((SIZE, SIZE, 3), np.uint8)
    a[:, :2] = 250
    exif = Image.Exif()
    exif[0x0112] = 8
    return png(Image.fromarray(a, "RGB"), format="JPEG", quality=95, exif=exif)


def three_ways(data: bytes, suffix: str, channels: int, tmp_path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels (C, H, W) from training's folder loader, the task commands' reader and the API codec."""
    from difforge.data.folder import load_image_folder
    from difforge.io.read import read_images
    from difforge.serve.codec import decode_image

    folder = tmp_path / f"set{suffix}{channels}"
    folder.mkdir()
    (folder / f"a{suffix}").write_bytes(data)
    ds, skipped = load_image_folder(folder, channels=channels, size=SIZE)
    assert skipped == []
    train = ds.images[0].numpy()
    task = read_images(folder / f"a{suffix}", channels)[0].numpy()
    api = decode_image(data, "image", channels, SIZE)[0].numpy()
    return train, task, api


@pytest.mark.parametrize("channels", [3, 1])
def test_rgba_exif_png_gives_the_same_pixels_to_training_tasks_and_the_api(channels, tmp_path):
    train, task, api = three_ways(rgba_with_exif(), ".png", channels, tmp_path)
    assert np.array_equal(train, task) and np.array_equal(train, api)
    rgb = train if channels == 3 else None
    if rgb is not None:  # what training's policy gives: turned by EXIF, transparency over white
        assert rgb[:, 0, 4:].T.tolist() == [[255, 0, 0]] * 4  # the red quarter is now top-right
        assert (rgb[:, 4:, 2:] == 255).all()  # transparent pixels are white, not black
        assert rgb[:, 0, 0].tolist() == [127, 127, 255]  # half-transparent blue over white, now on the left
    else:
        assert (train[0, 4:, 2:] == 255).all()


def test_16_bit_png_is_scaled_not_clipped_everywhere(tmp_path):
    train, task, api = three_ways(gray16(), ".png", 1, tmp_path)
    assert np.array_equal(train, task) and np.array_equal(train, api)
    assert train[0, 0].tolist() == [0, 36, 73, 109, 146, 182, 219, 255]


def test_exif_jpeg_gives_the_same_pixels_everywhere(tmp_path):
    train, task, api = three_ways(jpeg_with_exif(), ".jpg", 3, tmp_path)
    assert np.array_equal(train, task) and np.array_equal(train, api)
    assert train[0, -2:, :].mean() > 200 and train[0, :4, :].mean() < 30  # bright columns turned to the bottom rows


def test_transparent_pixels_reach_the_model_as_white_over_http(client):
    """The API composites like training does (it used to put transparency on black)."""
    body = {"image": base64.b64encode(png(Image.new("LA", (SIZE, SIZE), (0, 0)))).decode(), "strength": 0.01,
            "steps": 1, "seed": 0, "sampler": "ddim"}
    assert client.post("/v1/restore", json=body).status_code == 200  # accepted
    from difforge.serve.codec import decode_image

    assert (decode_image(base64.b64decode(body["image"]), "image", 1, SIZE) == 255).all()


def test_eps_never_reaches_ghostscript_anywhere(client, tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    from difforge.data.folder import load_image_folder
    from difforge.io.read import read_images

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load", lambda im, *a, **k: opened.append(im))
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda im: opened.append(im))
    refusal = "EPS files are not accepted; send PNG, JPEG, BMP, GIF, WebP or TIFF"

    r = client.post("/v1/restore", json={"image": base64.b64encode(EPS).decode(), "strength": 0.5})
    assert r.status_code == 422 and r.json()["detail"] == f"image: {refusal}"
    r = client.post("/v1/inpaint", files={"image": ("a.png", png(Image.new("L", (SIZE, SIZE))), "image/png"),
                                          "mask": ("m.eps", EPS, "application/postscript")}, data={"steps": "2"})
    assert r.status_code == 422 and r.json()["detail"] == f"mask: {refusal}"

    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "fake.png").write_bytes(EPS)  # the extension does not matter
    Image.new("L", (SIZE, SIZE), 9).save(tmp_path / "set" / "real.png")
    ds, skipped = load_image_folder(tmp_path / "set", channels=1, size=SIZE)
    assert len(ds) == 1 and len(skipped) == 1 and refusal in skipped[0][1] and "\n" not in skipped[0][1]
    with pytest.raises(ValueError, match=f"fake.png: {refusal}"):
        read_images(tmp_path / "set" / "fake.png", 1)
    assert opened == []  # the EPS plugin never saw the bytes


@pytest.mark.parametrize("fmt", ["ICO", "PSD_LIKE", "TGA_AS_PNG"])
def test_other_formats_are_refused_with_their_name(fmt, client):
    from difforge.io.decode import ImageError, read_image

    if fmt == "ICO":
        data, name = png(Image.new("RGB", (16, 16)), format="ICO"), "ICO"
    elif fmt == "PSD_LIKE":
        data, name = b"8BPS\x00\x01" + bytes(40), "PSD"
    else:  # TGA has no magic number: it is simply not readable
        data, name = png(Image.new("RGB", (SIZE, SIZE)), format="TGA"), None
    with pytest.raises(ImageError) as e:
        read_image(data, 3)
    message = str(e.value)
    assert "\n" not in message and "send PNG, JPEG, BMP, GIF, WebP or TIFF" in message
    assert message.startswith(f"{name} files are not accepted" if name else "not a readable image")


def test_the_accepted_formats_all_decode():
    from difforge.io.decode import FORMATS, read_image

    img = Image.new("RGB", (SIZE, SIZE), (200, 100, 50))
    for fmt in FORMATS:
        arr = read_image(png(img, format=fmt), 3)
        assert arr.shape == (SIZE, SIZE, 3) and abs(int(arr[4, 4, 0]) - 200) <= 8, fmt


def test_one_pixel_limit_lives_in_the_decoder():
    import difforge.data.folder as folder
    import difforge.data.prepare as prepare
    import difforge.io.decode as decode

    assert decode.MAX_PIXELS == 64_000_000
    assert folder.MAX_PIXELS is decode.MAX_PIXELS and prepare.PrepareConfig().max_pixels == decode.MAX_PIXELS
    with pytest.raises(decode.ImageError, match="9000x8000 pixels is outside 1..64000000"):
        decode.read_image(png(Image.new("1", (9000, 8000))), 1)
