"""Tests of reading/paper.py and reading/ink.py: which pixels of a picture are ink (paper, lighting,
specks, ruled lines, frames and the table around a sheet left out), and the pictures with nothing
to read. No model is needed."""
import numpy as np
import pytest
from drawing import draw_seven, ink_box, save, seen
from PIL import Image, ImageDraw

import reading.digit_input
import reading.errors
import reading.images
import reading.ink
import reading.paper


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


@pytest.mark.parametrize("angle", [-5.0, 6.0])
def test_a_box_turned_a_few_degrees_is_not_ink(angle):
    """A form photographed askew: the box around the 7 is turned, so its lines cross its own
    bounding box's edges at a slant. The 7 is read as it is without the box."""
    img = draw_seven()
    a = np.radians(angle)
    corners = [(-80, -120), (80, -120), (80, 120), (-80, 120)]
    turned = [(150 + x * np.cos(a) - y * np.sin(a), 150 + x * np.sin(a) + y * np.cos(a)) for x, y in corners]
    ImageDraw.Draw(img).polygon(turned, outline=0, width=3)
    assert np.abs(seen(img) - seen(draw_seven())).mean() < 0.01


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


def test_stroke_width_is_the_ink_area_over_half_its_boundary():
    """The boundary is the ink with a 4-neighbour of paper, outside the picture counting as paper."""
    bar = np.zeros((30, 60), bool)
    bar[10:20, 5:45] = True  # 10 x 40: its interior is 8 x 38
    assert reading.ink.stroke_width(bar) == 2 * 400 / (400 - 8 * 38)
    line = np.zeros((9, 9), bool)
    line[4] = True
    assert reading.ink.stroke_width(line) == 2.0
    plus = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    assert reading.ink.stroke_width(plus) == 2 * 5 / 4  # the centre's diagonals do not count
    assert reading.ink.stroke_width(np.ones((5, 5), bool)) == 2 * 25 / 16
    assert reading.ink.stroke_width(np.zeros((4, 4), bool)) == 0.0


def ruled(img, kind, level, angle=0.0, step=40, width=2, offset=7):
    """The picture on squared or lined paper: lines `level` grey, `width` pixels, `step` apart
    from `offset`, rotated by angle degrees, under the ink (the ink is never lighter for a line
    beneath it)."""
    grey = np.asarray(img, np.float32)
    h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.radians(angle)
    distances = [yy * np.cos(a) - xx * np.sin(a)] + ([xx * np.cos(a) + yy * np.sin(a)] if kind == "grid" else [])
    on_line = np.zeros((h, w), bool)
    for d in distances:
        on_line |= np.abs(np.mod(d - offset, step) - step / 2) > step / 2 - width / 2
    return Image.fromarray(np.where(on_line, np.minimum(grey, level), grey).astype(np.uint8))


@pytest.mark.parametrize("kind", ["grid", "lined"])
@pytest.mark.parametrize("level", [200, 70])
@pytest.mark.parametrize("angle", [0.0, 4.0])
def test_printed_lines_are_removed_and_the_digit_kept(kind, level, angle):
    """Light and dark lines of squared and lined paper, straight or rotated: the ink found is
    the digit's, and its strokes that cross a line stay one piece."""
    clean = draw_seven(size=(400, 300), box=(150, 60, 250, 240), width=14)
    mask = reading.ink.read_ink(ruled(clean, kind, level, angle)).mask
    reference = reading.ink.read_ink(clean).mask
    assert (mask & reference).sum() / (mask | reference).sum() >= 0.9
    assert reading.ink.label_pieces(mask)[1] == 1


@pytest.mark.parametrize("offset", [0, 4])
def test_a_one_drawn_along_a_grid_line_keeps_its_stroke(offset):
    """Centred on the line, or beside it and over it (as a 3's middle bar may lie along one):
    the stroke's pixels on the line are the stroke's."""
    img = Image.new("L", (400, 300), 255)
    ImageDraw.Draw(img).line([(207 + offset, 50), (207 + offset, 250)], fill=0, width=12)
    stroke = np.asarray(img) < 128
    mask = reading.ink.read_ink(ruled(img, "grid", 70)).mask  # a vertical line at x = 207
    assert mask[stroke].mean() > 0.9 and stroke[mask].mean() > 0.9


def test_a_row_of_cells_with_two_lines_across_is_squared_paper():
    """Cropped to one row of cells: two lines across, too few to be a family by themselves, but
    at right angles to the three lines down and as far apart; they go, and the digit stays."""
    clean = draw_seven(size=(500, 260), box=(200, 40, 300, 220), width=14)
    mask = reading.ink.read_ink(ruled(clean, "grid", 70, angle=4.0, step=130)).mask
    reference = reading.ink.read_ink(clean).mask
    assert (mask & reference).sum() / (mask | reference).sum() >= 0.9
    assert reading.ink.label_pieces(mask)[1] == 1


@pytest.mark.parametrize("size, angle", [((400, 300), 2.0), ((420, 300), 4.0), ((300, 420), -3.0)])
def test_squared_paper_with_too_few_lines_for_a_family_is_squared_paper(size, angle):
    """Cells so large that two or three lines cross the picture, not three each way: together
    they are a lattice of printed lines crossing at right angles, turned as a photographed
    sheet is, and they go."""
    w, h = size
    clean = draw_seven(size=size, box=(w // 2 - 50, h // 2 - 90, w // 2 + 50, h // 2 + 90), width=14)
    mask = reading.ink.read_ink(ruled(clean, "grid", 70, angle=angle, step=200, offset=60)).mask
    reference = reading.ink.read_ink(clean).mask
    assert (mask & reference).sum() / (mask | reference).sum() >= 0.9
    assert reading.ink.label_pieces(mask)[1] == 1


def test_a_square_zero_cropped_tightly_is_not_a_lattice():
    """Four thin strokes along the picture's edges, turned a little, meeting at the corners:
    long, straight and at right angles, but they do not cross, so they are writing, not
    paper."""
    img = Image.new("L", (200, 300), 255)
    ImageDraw.Draw(img).polygon([(12, 4), (195, 12), (188, 295), (4, 287)], outline=0, width=4)
    stroke = np.asarray(img) < 128
    mask = reading.ink.read_ink(img).mask
    assert mask[stroke].mean() > 0.9


def test_a_pen_stroke_across_two_rules_is_not_a_lattice():
    """A stroke drawn with a pen from edge to edge across two rules of lined paper: long,
    straight and crossing them at right angles, but darker and wider than the printed lines,
    so it is writing."""
    img = Image.new("L", (300, 400), 255)
    ImageDraw.Draw(img).line([(161, 0), (140, 399)], fill=0, width=6)  # at right angles to the rules
    stroke = np.asarray(img) < 128
    mask = reading.ink.read_ink(ruled(img, "lined", 170, angle=3.0, step=220, offset=90)).mask
    assert mask[stroke].mean() > 0.9


def test_a_one_as_tall_as_lined_paper_is_not_taken_for_a_line():
    """A lone upright stroke across the lines of lined paper, from edge to edge: at right angles
    to the family, but one line is not a family of lines down."""
    img = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(img).line([(150, 0), (150, 299)], fill=0, width=5)
    stroke = np.asarray(img) < 128
    mask = reading.ink.read_ink(ruled(img, "lined", 170)).mask
    assert mask[stroke].mean() > 0.9


@pytest.mark.parametrize("corner", [[(0, 0), (160, 0), (0, 16)], [(400, 0), (400, 14), (230, 0)]])
def test_a_corner_of_shade_far_from_the_digit_is_not_read_with_it(tmp_path, corner):
    """A photo with a sliver of shade along its top edge, where a shadow's curved edge or the
    vignetting meets the border: too thin to be set aside as a slab, as a piece of ink it would
    be read with the digit, which it would shrink and push into a corner of the model's input."""
    img = draw_seven(size=(400, 400), box=(150, 120, 250, 300), width=14, paper=235, ink=20)
    ImageDraw.Draw(img).polygon(corner, fill=110)
    path = save(img, tmp_path / "corner.jpg", quality=90)
    ink = reading.ink.read_ink(path)
    assert reading.ink.one_digit_mask(ink).sum() < ink.mask.sum()  # the corner was ink
    reference = seen(draw_seven(size=(400, 400), box=(150, 120, 250, 300), width=14))
    assert np.abs(seen(path) - reference).mean() < 0.03


def test_a_tight_crop_keeps_its_digit_and_a_mark_clear_of_the_border():
    """The digit itself touches the border, and a dash stands clear of it: the dash is not tall
    enough to be the digit, so nothing is dropped."""
    img = draw_seven(size=(100, 180), box=(0, 5, 100, 180), width=12)
    ImageDraw.Draw(img).line([(10, 60), (50, 60)], fill=0, width=12)
    ink = reading.ink.read_ink(img)
    assert len(np.unique(ink.pieces[0])) == 3
    assert (reading.ink.one_digit_mask(ink) == ink.mask).all()


def test_a_stroke_at_the_border_close_to_the_rest_of_the_digit_is_kept():
    """A 5 whose bar, written apart from its body, touches the top of a tight crop: it lies a
    few pixels from the body, not half the body's height away."""
    img = Image.new("L", (200, 260), 255)
    draw = ImageDraw.Draw(img)
    draw.line([(70, 4), (150, 4)], fill=0, width=12)
    draw.line([(70, 22), (65, 110)], fill=0, width=12)
    draw.arc([55, 90, 165, 230], start=-150, end=150, fill=0, width=12)
    ink = reading.ink.read_ink(img)
    assert len(np.unique(ink.pieces[0])) == 3
    assert (reading.ink.one_digit_mask(ink) == ink.mask).all()
