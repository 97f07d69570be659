"""Tests of reading the ink under a shadow across the sheet (reading/paper.py's shade_free and
reading/ink.py's use of it), and of a number written on squared paper."""
import numpy as np
import pytest
from drawing import draw_seven, save
from PIL import Image, ImageDraw

import predict
import reading.ink


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def shadowed(img, edge_width, depth):
    """The picture with a shadow over its lower left, edge_width pixels from light to shade
    (1: a hard edge), depth (a fraction of the light) dark, its edge a diagonal through the digit."""
    grey = np.asarray(img, np.float32) / 255
    h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w]
    across = (yy - 0.4 * h) * 0.8 - (xx - 0.55 * w) * 0.6  # beyond the edge: positive
    light = 1 - depth * np.clip(across / edge_width + 0.5, 0, 1)
    return Image.fromarray((grey * (0.95 * light) * 255).astype(np.uint8))


@pytest.mark.parametrize("edge_width", [1, 40])
@pytest.mark.parametrize("depth", [0.35, 0.6])
def test_a_shadow_across_the_digit_leaves_exactly_its_ink(tmp_path, edge_width, depth):
    """A hard-edged and a soft-edged shadow over half the sheet and part of the digit: the ink
    found is the digit's, not the shadowed paper."""
    clean = draw_seven(size=(400, 300), box=(150, 60, 250, 240), width=14)
    path = save(shadowed(clean, edge_width, depth), tmp_path / "shadow.jpg", quality=90)
    reference = reading.ink.read_ink(clean).mask
    assert iou(reading.ink.read_ink(path).mask, reference) >= 0.9


def test_a_digit_in_the_light_left_by_a_hand_keeps_its_strokes_in_noisy_deep_shade(tmp_path):
    """A hand's shadow over the bottom and the sides of the sheet, 75% dark, its edge a soft arc
    under the digit, leaves the light on the digit; the camera's noise is as strong in the shade
    as in the light, so measured against the shaded paper it is four times stronger. The ink
    found is the digit's."""
    clean = draw_seven(size=(400, 300), box=(150, 60, 250, 240), width=14)
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    from_centre = np.hypot(yy + 40, xx - 200)
    light = 1 - 0.75 * np.clip((from_centre - 300) / 40, 0, 1)
    noise = np.random.default_rng(0).normal(0, 0.04, (h, w))
    grey = np.asarray(clean, np.float32) / 255 * 0.95 * light + noise
    path = save(Image.fromarray((np.clip(grey, 0, 1) * 255).astype(np.uint8)), tmp_path / "hand.jpg", quality=85)
    assert iou(reading.ink.read_ink(path).mask, reading.ink.read_ink(clean).mask) >= 0.9


def test_a_bold_digit_cropped_tightly_is_not_taken_for_a_shadow():
    """Strokes as thick as a quarter of the picture, touching its edges: they are the ink, all
    of them."""
    img = draw_seven(size=(120, 120), box=(12, 14, 108, 110), width=30)
    dark = np.asarray(img) < 128
    mask = reading.ink.read_ink(img).mask
    assert mask[dark].mean() > 0.95 and dark[mask].mean() > 0.9


def write_number(digits, images, labels, cell=48):
    """MNIST test digits of the number dark on light paper, one to a cell, and the same picture on
    squared paper whose dark lines cross every digit."""
    canvas = Image.new("L", (cell * (len(digits) + 2), cell * 3), 235)
    for k, d in enumerate(digits):
        i = int(np.flatnonzero(labels == d)[0])
        tile = Image.fromarray(255 - images[i]).resize((cell, cell), Image.Resampling.BICUBIC)
        canvas.paste(Image.fromarray(np.minimum(np.asarray(tile), 235).astype(np.uint8)),
                     (cell * (k + 1), cell))
    squared = canvas.copy()
    draw = ImageDraw.Draw(squared)
    for x in range(cell // 2, squared.width, cell):
        draw.line([(x, 0), (x, squared.height)], fill=90, width=2)
    for y in range(cell // 2, squared.height, cell):
        draw.line([(0, y), (squared.width, y)], fill=90, width=2)
    return canvas, squared


@pytest.mark.slow
def test_a_number_on_squared_paper_reads_as_on_plain_paper(mnist_test, default_model):
    # The default model, not the one-epoch one: whether a weak model doubts a digit depends on
    # the CPU's arithmetic, and doubt is not what this test is about.
    images, labels = mnist_test
    plain, squared = write_number([3, 0, 7, 5], images, labels)
    model = default_model
    on_plain = predict.predict_number(model, plain)
    assert len(on_plain) == 4
    assert predict.predict_number(model, squared) == on_plain


def test_a_digit_on_a_shadows_edge_stays_in_the_number(tmp_path):
    """Five 7s, the first on the hard edge of a shadow over the sheet's left: the shade is set
    aside as the sheet's edge, but the 7 lying across it is writing and stays, though it is only
    a fifth of the ink."""
    img = Image.new("L", (640, 170), 235)
    draw = ImageDraw.Draw(img)
    for left in range(30, 600, 120):
        draw.line([(left, 45), (left + 55, 45), (left + 20, 125)], fill=30, width=8)
    clean = np.asarray(img) < 128
    yy, xx = np.mgrid[0:170, 0:640]
    light = np.where(xx + 0.5 * (yy - 85) < 50, 0.5, 1.0) * (1 - 0.2 * xx / 640)
    noise = np.random.default_rng(0).normal(0, 0.02, light.shape)
    grey = np.clip(np.asarray(img, np.float32) / 255 * light + noise, 0, 1)
    path = save(Image.fromarray((grey * 255).astype(np.uint8)), tmp_path / "shadow.jpg", quality=90)
    mask = reading.ink.read_ink(path).mask
    assert mask[clean].mean() > 0.9 and clean[mask].mean() > 0.9


def test_a_digit_by_the_edge_of_a_lit_patch_in_shade_keeps_its_strokes(tmp_path):
    """Shade all round a lit oval (the light a hand or the phone leaves), its edge meeting the
    picture's border at a slant: the square that finds the paper cannot fit into the narrow
    shade between the edge and the border, which looks like ink there, more of it than the 7
    beside the edge. The ink found is still the 7's."""
    img = Image.new("L", (480, 640), 237)
    ImageDraw.Draw(img).line([(330, 272), (415, 272), (360, 393)], fill=30, width=8)
    clean = np.asarray(img) < 128
    yy, xx = np.mgrid[0:640, 0:480]
    u = (xx - 190) * np.cos(2.66) + (yy - 300) * np.sin(2.66)
    v = (yy - 300) * np.cos(2.66) - (xx - 190) * np.sin(2.66)
    outside = (np.hypot(u / 221, v / 296) - 1) * 221
    light = (1 - 0.43 * np.clip(outside / 1.9 + 0.5, 0, 1)) * (1 - 0.15 * xx / 480)
    noise = np.random.default_rng(0).normal(0, 0.015, light.shape)
    grey = np.clip(np.asarray(img, np.float32) / 255 * light + noise, 0, 1)
    path = save(Image.fromarray((grey * 255).astype(np.uint8)), tmp_path / "lit.jpg", quality=88)
    assert iou(reading.ink.read_ink(path).mask, clean) >= 0.9
