"""Tests of reading/images.py through preprocess_image: every way a picture file can come (formats,
orientation, transparency, sizes) gives the same digit, and every damaged or hostile file one
NotAnImageError or NoDigitError, with no warning and no file left open. No model is needed."""
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from drawing import draw_seven, save, seen
from PIL import Image

import reading.digit_input
import reading.errors
import reading.images


def test_huge_image_is_scaled_down_first(tmp_path):
    img = draw_seven(size=(6000, 4500), box=(1000, 800, 3000, 4000), width=200)
    path = save(img, tmp_path / "huge.png")
    small = seen(draw_seven(size=(600, 450), box=(100, 80, 300, 400), width=20))
    assert np.abs(seen(path) - small).mean() < 0.02
    assert max(reading.images.open_image(path).size) <= reading.images.MAX_SIDE
    seen(img)  # a caller's own PIL image is read, never shrunk in place
    assert img.size == (6000, 4500)


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    path = save(draw_seven(size=(400, 400)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 400x400 is > 2x that: refused
    with pytest.raises(reading.errors.NotAnImageError, match="big.png"):
        reading.digit_input.preprocess_image(path)


def test_strokes_on_a_transparent_background_read_as_ink(tmp_path):
    reference = seen(draw_seven())
    stroke = np.asarray(draw_seven(ink=255, paper=0))  # 255 where the pen went
    for colour, hidden in [((0, 0, 0), 0), ((255, 255, 255), 255), ((20, 40, 200), 0),
                           ((0, 0, 0), 255)]:
        rgba = np.zeros(stroke.shape + (4,), np.uint8)
        rgba[..., :3] = np.where(stroke[..., None] > 0, colour, hidden)
        rgba[..., 3] = stroke
        path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "canvas.png")
        assert np.abs(seen(path) - reference).mean() < 0.01, (colour, hidden)
    la = Image.merge("LA", [Image.new("L", (300, 300), 0), Image.fromarray(stroke)])
    assert np.abs(seen(save(la, tmp_path / "la.png")) - reference).mean() < 0.01


def test_exif_orientation_is_applied(tmp_path):
    upright = draw_seven(size=(300, 200), box=(100, 20, 180, 180)).convert("RGB")
    reference = seen(save(upright, tmp_path / "upright.jpg", quality=95))
    # A camera held sideways stores the pixels rotated and says so in the EXIF orientation tag
    # (6: rotate 90 degrees clockwise to display).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(stored, tmp_path / "sideways.jpg", quality=95, exif=exif.tobytes())
    assert np.abs(seen(path) - reference).mean() < 0.02
    # Without the tag the digit would be read lying on its side: the test can tell the difference.
    plain = save(stored, tmp_path / "no_tag.jpg", quality=95)
    assert np.abs(seen(plain) - reference).mean() > 0.05


@pytest.mark.parametrize("kind", ["16-bit", "palette", "gif", "cmyk", "1-bit", "rgb-tinted",
                                  "32-bit-int", "float"])
def test_every_pixel_format_gives_the_same_digit(tmp_path, kind):
    grey = draw_seven()
    reference = seen(grey)
    a = np.asarray(grey)
    if kind == "16-bit":
        img = Image.fromarray(a.astype(np.uint16) * 257)
        path = save(img, tmp_path / "d.png")
        assert Image.open(path).mode.startswith("I")
    elif kind == "palette":
        path = save(grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), tmp_path / "d.png")
        assert Image.open(path).mode == "P"
    elif kind == "gif":
        path = save(grey.convert("P"), tmp_path / "d.gif")
    elif kind == "cmyk":
        path = save(grey.convert("RGB").convert("CMYK"), tmp_path / "d.tiff")
        assert Image.open(path).mode == "CMYK"
    elif kind == "1-bit":
        path = save(grey.convert("1", dither=Image.Dither.NONE), tmp_path / "d.png")
    elif kind == "rgb-tinted":
        tint = np.array([255, 230, 190]) / 255.0
        rgb = (a[..., None] / 255.0 * tint * 255 * 0.9 + 10).astype(np.uint8)
        path = save(Image.fromarray(rgb, "RGB"), tmp_path / "d.webp", lossless=True)
    elif kind == "32-bit-int":
        path = save(Image.fromarray(a.astype(np.int32) * 100, "I"), tmp_path / "d.tiff")
    else:
        path = save(Image.fromarray(a.astype(np.float32) / 255, "F"), tmp_path / "d.tiff")
    assert np.abs(seen(path) - reference).mean() < 0.02


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 60), (60, 1), (2, 40)])
def test_pictures_too_small_to_hold_a_digit_raise_no_digit_error(size):
    with pytest.raises(reading.errors.NoDigitError, match=f"only {size[0]}x{size[1]} pixels"):
        reading.digit_input.preprocess_image(Image.new("L", size, 0))


def test_a_png_damaged_in_its_pixel_data_is_refused(tmp_path):
    """A flipped byte near the end of the compressed pixels: Pillow's first attempt to decode
    them fails, and the picture must not be read half-decoded as some digit."""
    buf = io.BytesIO()
    draw_seven().save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.find(b"IDAT")
    length = int.from_bytes(data[start - 4:start], "big")
    data[start + 4 + int(0.9 * length)] ^= 0xFF
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    with pytest.raises(reading.errors.NotAnImageError, match="damaged.png.*truncated or corrupt"):
        reading.digit_input.preprocess_image(path)


def test_a_float_picture_holding_nan_gives_a_digit_and_no_warning(tmp_path):
    grey = np.asarray(draw_seven(), np.float32) / 255
    grey[5, 5] = np.nan
    grey[6, 6] = np.inf
    path = save(Image.fromarray(grey, mode="F"), tmp_path / "float.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.abs(seen(path) - seen(draw_seven())).mean() < 0.01


def test_pictures_pillow_only_warns_about_are_refused_unless_jpeg(tmp_path, monkeypatch):
    """Between one and two times Pillow's pixel limit it decodes the whole picture and warns;
    that costs gigabytes for a large PNG. A JPEG is decoded at a fraction of its size."""
    png = save(draw_seven(), tmp_path / "large.png")
    jpeg = save(draw_seven(), tmp_path / "large.jpg", quality=95)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60000)  # 300x300 is 1.5 times that
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(reading.errors.NotAnImageError, match="large.png has too many pixels"):
            reading.digit_input.preprocess_image(png)
        assert reading.digit_input.preprocess_image(jpeg).shape == (1, 28, 28)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_refused_at_once(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    with pytest.raises(reading.errors.NotAnImageError, match="not a regular file"):
        reading.digit_input.preprocess_image(path)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_reading_leaves_no_file_open(tmp_path):
    """Damaged files and multi-frame pictures (a GIF's first frame is read) must not keep their
    files open: a folder of hundreds of them would run out of file handles."""
    buf = io.BytesIO()
    draw_seven().save(buf, "PNG")
    for n in range(20):
        (tmp_path / f"cut{n}.png").write_bytes(buf.getvalue()[:400])
        frames = [draw_seven(), draw_seven(ink=128)]
        frames[0].save(tmp_path / f"anim{n}.gif", save_all=True, append_images=frames[1:])
    before = len(os.listdir("/proc/self/fd"))
    # Kept, as a folder's errors and pictures are kept until its batch is printed.
    errors, pictures = [], []
    for n in range(20):
        with pytest.raises(reading.errors.NotAnImageError) as error:
            reading.digit_input.preprocess_image(tmp_path / f"cut{n}.png")
        errors.append(error.value)
        pictures.append(reading.images.open_image(tmp_path / f"anim{n}.gif"))
        assert np.abs(seen(pictures[-1]) - seen(draw_seven())).mean() < 0.01
    assert len(os.listdir("/proc/self/fd")) <= before


def test_reading_in_threads_leaves_the_warning_filters_as_they_were(tmp_path):
    """predict.py reads a folder in a pool of threads; silencing Pillow's warnings must not race
    and leave every warning of the process silenced."""
    path = save(draw_seven(size=(60, 60), box=(20, 10, 40, 50), width=4), tmp_path / "seven.png")
    filters = list(warnings.filters)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: reading.images.open_image(path), range(2000)))
    assert warnings.filters == filters


@pytest.mark.parametrize("pixels", [
    [[0, 255, 0], [255, 0, 255], [0, 255, 0]],  # a 3x3 checkerboard
    [[255] * 5, [255, 255, 0, 255, 255], [255] * 5],  # one dark pixel
    [[255, 255, 255, 255], [255, 200, 200, 255], [255, 255, 255, 255]],  # a faint smudge
    [[0] * 9, [255] * 9, [0] * 9],  # a line across the whole picture
])
def test_degenerate_pictures_give_a_digit_or_one_error_and_no_warnings(pixels):
    """Whatever little a picture holds, the answer is a 28x28 input or NoDigitError: never a
    numpy warning (a division by zero in the centre of mass) or another exception."""
    image = Image.fromarray(np.array(pixels, np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            assert reading.digit_input.preprocess_image(image).shape == (1, 28, 28)
        except reading.errors.NoDigitError:
            pass
