"""Tests of preprocess.py: each step of turning a picture into the model's 28x28 input, on images
drawn here, and the errors for pictures with nothing to read. No model is needed."""
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from drawing import centre_of_mass, draw_seven, ink_box, save, seen
from PIL import Image, ImageDraw

import reading.digit_input
import reading.errors
import reading.images
import reading.ink
import reading.paper
import reading.segment
from reading.digit_input import MNIST_MEAN, MNIST_STD

# ---------------------------------------------------------------------------------------------
# Preprocessing: the MNIST recipe, step by step

def test_output_is_normalised_28x28_white_ink_on_black():
    t = reading.digit_input.preprocess_image(draw_seven())
    assert t.shape == (1, 28, 28) and t.dtype == torch.float32
    a = t[0].numpy() * MNIST_STD + MNIST_MEAN
    assert a[0, 0] == pytest.approx(0, abs=1e-5)  # background is black
    assert a.max() == pytest.approx(1, abs=0.05)  # solid ink is white
    assert float(t.min()) == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-4)


def test_polarity_dark_on_light_and_light_on_dark_give_the_same_digit():
    dark_on_light = seen(draw_seven(ink=0, paper=255))
    light_on_dark = seen(draw_seven(ink=255, paper=0))
    grey_on_grey = seen(draw_seven(ink=60, paper=190))
    assert np.abs(dark_on_light - light_on_dark).mean() < 0.01
    assert np.abs(dark_on_light - grey_on_grey).mean() < 0.02


@pytest.mark.parametrize("box", [(10, 10, 60, 100), (200, 150, 290, 290), (120, 20, 140, 60),
                                 (20, 30, 280, 290)])
def test_off_centre_any_size_is_fitted_to_20x20_and_centred_by_mass(box):
    drawn = draw_seven(box=box, width=max(2, (box[3] - box[1]) // 12))
    a = seen(drawn)
    cy, cx = centre_of_mass(a)
    assert abs(cy - 14) < 0.6 and abs(cx - 14) < 0.6
    h, w = ink_box(a)
    assert max(h, w) in (20, 21)  # 20 plus at most one pixel of anti-aliased edge
    drawn_h, drawn_w = ink_box(255 - np.asarray(drawn, np.float32), level=128)
    assert w / h == pytest.approx(drawn_w / drawn_h, abs=0.12)  # aspect ratio kept


def test_tiny_digit_in_a_large_picture_is_found_and_enlarged():
    a = seen(draw_seven(size=(800, 600), box=(500, 400, 508, 412), width=2))
    assert max(ink_box(a)) in (20, 21)
    assert abs(centre_of_mass(a)[0] - 14) < 0.6


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


def test_uneven_lighting_and_tinted_paper_are_removed(tmp_path):
    reference = seen(draw_seven())
    a = np.asarray(draw_seven(), np.float32) / 255
    ys, xs = np.mgrid[0:300, 0:300] / 300.0
    light = 0.45 + 0.55 * (0.6 * xs + 0.4 * (1 - ys))  # the far corner gets under half the light
    paper = np.array([1.0, 0.92, 0.75])
    rgb = (a[..., None] * paper + (1 - a[..., None]) * 0.12) * light[..., None]
    path = save(Image.fromarray((rgb * 255).astype(np.uint8)), tmp_path / "lit.jpg", quality=85)
    assert np.abs(seen(path) - reference).mean() < 0.03


def test_paper_of_one_exact_grey_is_taken_flat_under_a_bold_digit():
    # A drawing program's export: the paper is exactly 200 everywhere and a bold 7 covers much of
    # the picture. Nothing may bend towards the ink: the paper comes out at 0, the ink at its
    # own contrast, the same everywhere.
    img = draw_seven(size=(120, 120), box=(20, 15, 100, 105), width=30, ink=30, paper=200)
    grey = reading.images.read_grey(img)
    residual = reading.paper.remove_background(grey)
    assert (residual[grey == grey.max()] == 0).all()
    ink = np.asarray(img) == 30
    assert ink.mean() > 0.3
    np.testing.assert_allclose(residual[ink], -170 / 255, atol=1e-6)


def test_a_blown_out_sheet_fading_into_shadow_is_not_taken_for_flat_paper():
    # Half the sheet is clipped to pure white by the light and the rest fades into shadow: half
    # the pixels share one exact level, as on a drawing program's canvas, but the paper is not
    # flat, and removing the background must still leave all of it near 0.
    x = np.linspace(0, 1, 320, dtype=np.float32)[None, :].repeat(240, axis=0)
    paper = np.clip(1.62 - 1.2 * x, 0, 1)
    pencil = np.asarray(draw_seven(size=(320, 240), box=(30, 40, 130, 200), width=8)) < 128
    grey = np.where(pencil, paper - 0.2, paper)
    img = Image.fromarray(np.round(grey * 255).astype(np.uint8))
    residual = reading.paper.remove_background(reading.images.read_grey(img))
    assert np.abs(residual[~pencil]).max() < 0.1
    ink = reading.ink.read_ink(img)
    assert (ink.mask & pencil).sum() > 0.8 * pencil.sum()
    assert (ink.mask & ~pencil).sum() < 0.2 * pencil.sum()


def test_isolated_specks_do_not_move_the_digit():
    img = draw_seven(size=(400, 400), box=(150, 120, 250, 300), width=12)
    ImageDraw.Draw(img).ellipse([10, 10, 13, 13], fill=0)     # dust in a corner
    ImageDraw.Draw(img).ellipse([380, 390, 383, 393], fill=0)
    reference = seen(draw_seven(size=(400, 400), box=(150, 120, 250, 300), width=12))
    assert np.abs(seen(img) - reference).mean() < 0.01


def test_table_around_the_sheet_is_not_taken_for_ink(tmp_path):
    """A photo of a sheet lying on a dark table: the table shows along the picture's edges,
    darker than the pen. The digit alone must be read."""
    sheet = np.asarray(draw_seven(size=(400, 400), box=(150, 110, 250, 290), width=14), np.float32)
    sheet = 0.25 + 0.65 * sheet / 255  # grey pen on light paper
    photo = np.full((400, 400), 0.08, np.float32)  # the table
    photo[40:, 70:360] = sheet[40:, 70:360]  # the sheet covers all but a top strip and the sides
    path = save(Image.fromarray((photo * 255).astype(np.uint8)), tmp_path / "desk.jpg", quality=90)
    reference = seen(draw_seven(size=(400, 400), box=(150, 110, 250, 290), width=14))
    assert np.abs(seen(path) - reference).mean() < 0.03


def test_digit_touching_the_border_is_kept(tmp_path):
    """A tight crop: the digit itself touches the picture's edge and must not be set aside."""
    img = draw_seven(size=(100, 180), box=(0, 5, 100, 180), width=12)
    path = save(img, tmp_path / "tight.jpg", quality=75)
    a = seen(path)
    assert max(ink_box(a)) in (20, 21)
    assert np.abs(a - seen(draw_seven(size=(300, 300), box=(100, 60, 200, 235), width=12))).mean() < 0.05


@pytest.mark.parametrize("box, tolerance", [
    ([53, 23, 227, 277], 0.01),  # clear of the 7
    ([83, 40, 197, 247], 0.04),  # touching both ends of its bar and the foot of its stem
])
def test_a_printed_box_around_the_digit_is_not_ink(box, tolerance):
    """A form's field or a box drawn with a ruler: the 7 is read as it is without the box."""
    img = draw_seven()
    ImageDraw.Draw(img).rectangle(box, outline=0, width=3)
    assert np.abs(seen(img) - seen(draw_seven())).mean() < tolerance


@pytest.mark.parametrize("top", [45, 50])
def test_the_lines_of_a_table_cell_are_not_ink(top):
    """A cell cropped from a table: its lines cross the whole picture, under twice as long as
    the digit is tall, far thinner than its strokes, clear of it or touching its bar (top 50)."""
    img = draw_seven()
    draw = ImageDraw.Draw(img)
    draw.line([(0, top), (299, top)], fill=0, width=3)
    draw.line([(0, 255), (299, 255)], fill=0, width=3)
    for at in (45, 255):  # beyond a tenth of the picture from its edges: not a box
        draw.line([(at, 0), (at, 299)], fill=0, width=3)
    assert np.abs(seen(img) - seen(draw_seven())).mean() < 0.02


@pytest.mark.parametrize("zero", [
    ([0, 0, 119, 159], 40, 16),  # bold, rounded, filling the picture
    ([10, 10, 109, 149], 10, 6),  # a fine pen, corners almost square, with a margin
])
def test_a_square_zero_is_not_a_box(zero):
    """Its sides are a digit's strokes: thick for it, or round at the corners, and with no ink
    inside."""
    box, radius, width = zero
    img = Image.new("L", (120, 160), 255)
    ImageDraw.Draw(img).rounded_rectangle(box, radius=radius, outline=0, width=width)
    dark = np.asarray(img) < 128
    mask = reading.ink.read_ink(img).mask
    assert mask[dark].mean() > 0.95 and dark[mask].mean() > 0.9


def test_a_straight_stem_spanning_the_picture_stays_with_its_digit():
    """A 4 whose stem runs straight down nearly the whole picture: long and thin like a table's
    line, but the rest of the 4 joins it."""
    img = Image.new("L", (200, 300), 255)
    draw = ImageDraw.Draw(img)
    draw.line([(130, 5), (130, 295)], fill=0, width=8)
    draw.line([(120, 15), (30, 190), (180, 190)], fill=0, width=8)
    dark = np.asarray(img) < 128
    assert reading.ink.read_ink(img).mask[dark].mean() > 0.95


def test_thin_strokes_are_thickened_towards_mnist_width():
    thin = seen(draw_seven(size=(800, 800), box=(250, 150, 550, 650), width=2))
    normal = seen(draw_seven(size=(800, 800), box=(250, 150, 550, 650), width=60))
    # A 2-pixel line in a 500-pixel digit would shrink to a trace of grey in 20x20; it must carry
    # about as much ink as a digit written with a normal pen.
    assert thin.sum() > 0.7 * normal.sum()
    assert thin.max() > 0.9


@pytest.mark.parametrize("fill", ["white", "black", "grey", "noise"])
def test_blank_or_uniform_image_raises_no_digit_error(tmp_path, fill):
    rng = np.random.default_rng(0)
    if fill == "noise":
        a = np.clip(rng.normal(200, 8, (200, 300)), 0, 255).astype(np.uint8)
    else:
        a = np.full((200, 300), {"white": 255, "black": 0, "grey": 128}[fill], np.uint8)
    path = save(Image.fromarray(a), tmp_path / f"{fill}.png")
    with pytest.raises(reading.errors.NoDigitError, match=f"No digit found in .*{fill}.png"):
        reading.digit_input.preprocess_image(path)


@pytest.mark.parametrize("sigma", [0, 2])
def test_noise_and_textures_are_not_read_as_digits(tmp_path, sigma):
    """Full-contrast random noise, raw or slightly smoothed into a fine texture, leaves ink in
    many more pieces than any handwriting: one sentence, not a confident guess."""
    from scipy import ndimage
    a = ndimage.gaussian_filter(np.random.default_rng(1).random((240, 320)), sigma)
    a = (255 * (a - a.min()) / np.ptp(a)).astype(np.uint8)
    path = save(Image.fromarray(a), tmp_path / "texture.png")
    with pytest.raises(reading.errors.NoDigitError, match="separate pieces, as in noise or a texture"):
        reading.digit_input.preprocess_image(path)


def test_a_long_number_in_broken_strokes_is_still_handwriting():
    """Forty digits, most of them written in two strokes: nearly fifty pieces of ink
    are still read, not refused as noise."""
    digits = [4, 5, 7, 1, 0, 4, 5, 7, 0, 4] * 4
    image, _ = number_picture(digits, size=60, gap=25)
    assert reading.ink.label_pieces(reading.ink.read_ink(image).mask)[1] >= 40
    assert len(groups_of(image)) == len(digits)


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


def test_a_tightly_cropped_digit_made_of_two_strokes_keeps_both():
    """A 4 written in two strokes and cropped so that both touch the picture's edges: neither
    may be taken for a table or shadow along the border and cut away."""
    def four(size, box):
        img = Image.new("L", size, 255)
        draw = ImageDraw.Draw(img)
        left, top, right, bottom = box
        mid = top + (bottom - top) * 0.6
        draw.line([(left + 20, top), (left, mid), (right, mid)], fill=0, width=14)
        draw.line([(left + (right - left) * 0.7, top + 10), (left + (right - left) * 0.7, bottom)],
                  fill=0, width=14)
        return img
    reference = seen(four((300, 300), (80, 50, 200, 250)))
    tight = seen(four((130, 200), (6, 0, 124, 200)))
    assert np.abs(tight - reference).mean() < 0.04


def test_bold_scans_filling_the_picture_are_not_turned_inside_out():
    """Real handwriting (optdigits, see data/optdigits/) scanned bold and blurred, cropped so the
    strokes touch the edges: the paper is left in slivers at the sides and inside the loops, and
    a lighting surface fitted under it could bend to follow the strokes, making the paper the
    'ink'. The ink found must lie on the scan's dark pixels, every time."""
    from benchmarks.bench_real import DATA, scan
    grids = np.load(DATA)["images"][:200]
    for n, grid in enumerate(grids):
        picture = scan(grid, margin=0)
        dark = np.asarray(picture) < 128
        mask = reading.ink.read_ink(picture).mask
        assert dark[mask].mean() > 0.5, f"optdigits {n}: the paper was taken for the ink"


# ---------------------------------------------------------------------------------------------
# Numbers: which pieces of ink make one digit

def write(draw, digit, left, top, size, width=10):
    """A digit drawn in strokes that need not touch: 1, 4 (its stem lifted off below the bar), 5
    (the bar floats a little above and aside), 7 (broken below its bar) and 0."""
    s = size
    def line(*points):
        draw.line([(left + x * s, top + y * s) for x, y in points], fill=0, width=width, joint="curve")
    if digit == 1:
        line((0.35, 0), (0.3, 1))
    elif digit == 4:
        line((0.3, 0), (0.05, 0.6), (0.6, 0.6))
        line((0.45, 0.7), (0.45, 1))
    elif digit == 5:
        line((0.15, 0.05), (0.6, 0.0))
        line((0.12, 0.15), (0.1, 0.45), (0.45, 0.42), (0.6, 0.7), (0.4, 0.98), (0.05, 0.9))
    elif digit == 7:
        line((0.0, 0.0), (0.6, 0.0), (0.45, 0.45))
        line((0.4, 0.58), (0.25, 1))
    elif digit == 0:
        draw.ellipse([left, top, left + 0.6 * s, top + s], outline=0, width=width)


def number_picture(digits, size=100, gap=45, slant=0.0, canvas=None):
    """The digits written left to right on white paper, optionally sheared by slant (dx per dy,
    the tops leaning right when negative); returns the picture and each digit's left edge."""
    width = len(digits) * (int(0.6 * size) + gap) + 2 * gap
    img = Image.new("L", canvas or (width, 2 * size), 255)
    draw = ImageDraw.Draw(img)
    lefts = []
    for i, d in enumerate(digits):
        left = gap + i * (int(0.6 * size) + gap)
        write(draw, d, left, size // 2, size)
        lefts.append(left)
    if slant:
        img = img.transform(img.size, Image.Transform.AFFINE, (1, slant, -slant * img.height / 2, 0, 1, 0),
                            Image.Resampling.BILINEAR, fillcolor=255)
    return img, lefts


def groups_of(image):
    ink = reading.ink.read_ink(image)
    return sorted(reading.segment.digit_groups(ink), key=lambda g: g.left)


@pytest.mark.parametrize("digit", [4, 5, 7])
def test_separate_strokes_of_one_digit_stay_one_digit(digit):
    img, _ = number_picture([digit])
    assert reading.ink.label_pieces(reading.ink.read_ink(img).mask)[1] == 2  # two pieces of ink
    assert len(groups_of(img)) == 1


@pytest.mark.parametrize("slant", [0.0, -0.3, 0.3])
def test_digits_are_found_left_to_right_even_when_slanted(slant):
    img, lefts = number_picture([4, 5, 7, 1, 0], slant=slant)
    groups = groups_of(img)
    assert len(groups) == 5
    # Each group's box holds the digit written at that place, in order.
    centres = [(g.box[1].start + g.box[1].stop) / 2 for g in groups]
    assert centres == sorted(centres)
    for centre, left in zip(centres, lefts):
        assert abs(centre - (left + 30)) < 45


def test_specks_an_edge_shadow_and_ruled_lines_are_not_digits():
    img, _ = number_picture([7, 1, 4], canvas=(560, 300))
    draw = ImageDraw.Draw(img)
    for x, y in [(20, 30), (500, 260), (300, 20), (150, 280)]:
        draw.ellipse([x, y, x + 3, y + 3], fill=0)  # dust
    for y in (48, 152, 256):
        draw.line([(0, y), (559, y)], fill=90, width=2)  # lined paper
    a = np.asarray(img, np.float32)
    a[:, :40] *= np.linspace(0.15, 1.0, 40)[None, :]  # a shadow along the left edge
    groups = groups_of(Image.fromarray(a.astype(np.uint8)))
    assert len(groups) == 3


@pytest.mark.parametrize("sure_of", [None, 0, 1])
def test_one_digit_is_one_digit(sure_of):
    """Not cut into pieces, whether the model knows nothing or is sure every piece is a 0 or a 1."""
    def classify(batch):
        if sure_of is None:
            return torch.full((len(batch), 10), 0.1)
        return torch.eye(10)[[sure_of] * len(batch)]
    for digit in (0, 1, 4, 5, 7):
        img, _ = number_picture([digit])
        assert len(reading.segment.find_digits(img, classify)) == 1


def test_digits_joined_by_a_thin_stroke_are_pulled_apart():
    """Two 0s joined by a pen's trailing stroke are one piece of ink, but two digits: with a
    model sure that every piece it is shown is a 0, the shape alone must split them."""
    img = Image.new("L", (300, 200), 255)
    draw = ImageDraw.Draw(img)
    draw.ellipse([50, 50, 115, 150], outline=0, width=10)
    draw.ellipse([123, 50, 188, 150], outline=0, width=10)
    draw.line([(110, 110), (128, 104)], fill=0, width=3)
    ink = reading.ink.read_ink(img)
    assert reading.ink.label_pieces(ink.mask)[1] == 1
    digits = reading.segment.split_number(ink, lambda batch: torch.eye(10)[[0] * len(batch)])
    assert len(digits) == 2
    (a0, _, a1, _), (b0, _, b1, _) = digits[0].box, digits[1].box
    assert b1 > a1
    assert a0 < b0 and abs(a1 - 116) < 10 and abs(b0 - 122) < 10


def test_cut_paths_cross_a_thin_stroke_rather_than_all_run_round_it():
    """Paths from different starts stay different. Going round a stroke one pixel thick that
    ends 12-20 columns away costs ANCHOR times 144-400 column-rows, more than the one pixel of ink
    it saves, so each path crosses it on its own start (a mere tie-break would send all three
    round its end, into one path). A paper column right beside the start is still taken."""
    cost = np.zeros((40, 40))
    cost[20, :24] = 1.0  # from the left edge to column 23
    paths = reading.segment._cheapest_paths(cost, [4, 8, 12], 20)
    assert [set(path) for path in paths] == [{4}, {8}, {12}]
    cost[:, 9] = 1.0  # a stroke down the start column (and through row 20's stroke at column 8,
    cost[:, 8] = 0.0  # cleared here), a paper column beside it: the path goes there
    (path,) = reading.segment._cheapest_paths(cost, [9], 4)
    assert (cost[np.arange(40), path] == 0).all()


def test_a_digit_says_whether_it_is_all_the_ink():
    """all_ink lets the app take a one-digit number's reading for the whole picture's, so it
    must hold exactly when the digit's input is the one preprocess_image makes."""
    def classify(batch):
        return torch.full((len(batch), 10), 0.1)
    img, _ = number_picture([7])
    [seven] = reading.segment.find_digits(img, classify)
    assert seven.all_ink and torch.equal(seven.tensor, reading.digit_input.preprocess_image(img))
    # A blot too small to be a digit beside it is still ink of the picture, read as one digit.
    ImageDraw.Draw(img).ellipse([134, 94, 146, 106], fill=0)
    [seven] = reading.segment.find_digits(img, classify)
    assert not seven.all_ink
    assert not torch.equal(seven.tensor, reading.digit_input.preprocess_image(img))
    img, _ = number_picture([5, 7])
    assert [d.all_ink for d in reading.segment.find_digits(img, classify)] == [False, False]
