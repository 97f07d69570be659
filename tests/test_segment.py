"""Tests of reading/segment.py and reading/cuts.py: which pieces of ink make one digit, and how a
group of touching digits is cut apart, with classifiers whose answers the tests choose."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

import reading.cuts
import reading.digit_input
import reading.ink
import reading.marks
import reading.segment
import reading.verdict


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


def test_a_long_number_in_broken_strokes_is_still_handwriting():
    """Forty digits, most of them written in two strokes: nearly fifty pieces of ink
    are still read, not refused as noise."""
    digits = [4, 5, 7, 1, 0, 4, 5, 7, 0, 4] * 4
    image, _ = number_picture(digits, size=60, gap=25)
    assert reading.ink.label_pieces(reading.ink.read_ink(image).mask)[1] >= 40
    assert len(groups_of(image)) == len(digits)


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
    img, lefts = number_picture([7, 1, 4], canvas=(560, 300))
    draw = ImageDraw.Draw(img)
    for x, y in [(20, 30), (500, 260), (300, 20), (150, 280)]:
        draw.ellipse([x, y, x + 3, y + 3], fill=0)  # dust
    for y in (48, 152, 256):
        draw.line([(0, y), (559, y)], fill=90, width=2)  # lined paper
    a = np.asarray(img, np.float32)
    a[:, :40] *= np.linspace(0.15, 1.0, 40)[None, :]  # a shadow along the left edge
    groups = groups_of(Image.fromarray(a.astype(np.uint8)))
    assert len(groups) == 3
    # The three are the 7, the 1 and the 4, left to right (each written 60 pixels wide from its
    # left edge, rows 50-150), with no speck, shadow or line joined to them.
    for group, left in zip(groups, lefts):
        assert left - 5 <= group.box[1].start and group.box[1].stop <= left + 70
        assert group.box[0].start >= 45 and group.box[0].stop <= 155


@pytest.mark.parametrize("sure_of", [None, 0, 1])
def test_one_digit_is_one_digit(sure_of):
    """Not cut into pieces, whether the model knows nothing or is sure every piece is a 0 or a 1.
    A model that knows nothing names no digit, so the ink is then one mark left out."""
    def classify(batch):
        if sure_of is None:
            return np.full((len(batch), 10), 0.1)
        return np.eye(10)[[sure_of] * len(batch)]
    for digit in (0, 1, 4, 5, 7):
        img, _ = number_picture([digit])
        found = reading.segment.split_marks(reading.ink.read_ink(img), classify)
        assert (len(found.digits), len(found.marks)) == ((0, 1) if sure_of is None else (1, 0))


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
    digits = reading.segment.split_number(ink, lambda batch: np.eye(10)[[0] * len(batch)])
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
    paths = reading.cuts.cheapest_paths(cost, [4, 8, 12], 20)
    assert [set(path) for path in paths] == [{4}, {8}, {12}]
    cost[:, 9] = 1.0  # a stroke down the start column (and through row 20's stroke at column 8,
    cost[:, 8] = 0.0  # cleared here), a paper column beside it: the path goes there
    (path,) = reading.cuts.cheapest_paths(cost, [9], 4)
    assert (cost[np.arange(40), path] == 0).all()


def test_a_digit_says_whether_it_is_all_the_ink():
    """all_ink lets the app take a one-digit number's reading for the whole picture's, so it
    must hold exactly when the digit's input is the one preprocess_image makes."""
    def classify(batch):
        return np.eye(10)[[7] * len(batch)]
    img, _ = number_picture([7])
    [seven] = reading.segment.find_digits(img, classify)
    assert seven.all_ink and np.array_equal(seven.tensor, reading.digit_input.preprocess_image(img))
    # A blot too small to be a digit beside it is still ink of the picture, read as one digit.
    ImageDraw.Draw(img).ellipse([134, 94, 146, 106], fill=0)
    [seven] = reading.segment.find_digits(img, classify)
    assert not seven.all_ink
    assert not np.array_equal(seven.tensor, reading.digit_input.preprocess_image(img))
    img, _ = number_picture([5, 7])
    assert [d.all_ink for d in reading.segment.find_digits(img, classify)] == [False, False]


def always(digit):
    """A classifier sure that every piece it is shown is digit: the worst case, as a model that
    has seen nothing but digits reads a long stroke as a row of 0s."""
    return lambda batch: np.eye(10)[[digit] * len(batch)]


def test_a_dash_and_an_underline_leave_no_digit():
    img, lefts = number_picture([4, 7], canvas=(420, 260))
    draw = ImageDraw.Draw(img)
    draw.line([(300, 100), (360, 103)], fill=0, width=10)  # a dash after the 7
    draw.line([(30, 216), (222, 212)], fill=0, width=10)  # an underline under both
    found = reading.segment.split_marks(reading.ink.read_ink(img), always(0))
    # The 4 and the 7, each in its own box, and nothing else read as a digit.
    assert [d.box[0] for d in found.digits] == pytest.approx(lefts, abs=6)
    assert all(d.box[3] <= 155 for d in found.digits)
    underline, dash = found.marks
    assert underline.reason == reading.marks.UNDERLINE_REASON and dash.reason == reading.marks.BAR_REASON
    assert underline.box[0] <= 30 and underline.box[2] >= 222 and underline.box[1] >= 200
    assert 290 <= dash.box[0] and dash.box[2] <= 370 and 90 <= dash.box[1] and dash.box[3] <= 115


@pytest.mark.parametrize("tilt", [0, 12])
def test_a_stroke_alone_is_no_digit_not_a_row_of_zeros(tilt):
    """A long bar across the pad, level or tilted (the bar of a 7 before its stem is drawn, a
    dash, an underline drawn first)."""
    img = Image.new("L", (240, 160), 255)
    ImageDraw.Draw(img).line([(10, 80), (230, 80 + tilt)], fill=0, width=11)
    found = reading.segment.split_marks(reading.ink.read_ink(img), always(0))
    assert found.digits == [] and [m.reason for m in found.marks] == [reading.marks.BAR_REASON]
    assert found.marks[0].box[0] <= 10 and found.marks[0].box[2] >= 230


def test_a_number_beside_a_unit_keeps_its_digits_and_leaves_the_unit_out():
    """147 mm, with a model that names a digit only for ink taller than wide: the two m (wider
    than tall, half as tall as the digits) are the marks left out."""
    img, lefts = number_picture([1, 4, 7], canvas=(560, 200))
    draw = ImageDraw.Draw(img)
    for left in (380, 460):  # m: three stems joined by two arches, 0.6 wide and 0.5 high
        draw.line([(left, 150), (left, 110)], fill=0, width=10)
        for x in (left, left + 30):
            draw.arc([x, 100, x + 30, 135], 180, 360, fill=0, width=10)
            draw.line([(x + 30, 118), (x + 30, 150)], fill=0, width=10)

    def classify(batch):
        ink = batch[:, 0] > 0
        tall = ink.any(axis=2).sum(axis=1) > ink.any(axis=1).sum(axis=1)
        return np.stack([np.eye(10)[7] if t else np.full((10,), 0.1) for t in tall])
    found = reading.segment.split_marks(reading.ink.read_ink(img), classify)
    assert len(found.digits) == 3
    assert all(left - 6 <= d.box[0] and d.box[2] <= left + 66 for d, left in zip(found.digits, lefts))
    assert [m.box[0] for m in found.marks] == pytest.approx([375, 455], abs=6)
    assert all(m.reason == reading.verdict.why_not_a_digit([0.1] * 10) for m in found.marks)


def candidate(first, stop, probabilities, cut=0.0):
    probabilities = np.asarray(probabilities, float)
    part = reading.cuts.Part((slice(0, 10), slice(first, stop)), np.ones((10, 1), bool), None, probabilities)
    return reading.cuts.Candidate(first, stop, part, 0.6 * (stop - first), 1.0, cut)


def test_ink_the_model_declines_is_never_a_digit_and_one_mark_rather_than_several():
    """Slices 0-3: a sure 4, then three slices no run of which names a digit. Read as the 4 and
    one mark over the three, not as digits nor as a mark for each slice."""
    unsure = [0.1] * 10
    runs = [candidate(0, 1, np.eye(10)[4])] + [candidate(i, j, unsure, cut=1.0)
                                                for i in range(1, 4) for j in range(i + 1, 5)]
    group = reading.segment.Group(np.ones((10, 4), bool), (slice(0, 10), slice(0, 4)), 0, 4, 10, None, 0.0)
    four, mark = reading.cuts.choose_digits(group, 4, runs)
    assert four.reason is None and four.probabilities.argmax() == 4
    assert mark.reason == reading.verdict.why_not_a_digit(unsure) and mark.box[1] == slice(1, 4)
    # Asked for two digits by a number reader, which has the last word on how many there are.
    four, other = reading.cuts.choose_digits(group, 4, runs, count=2)
    assert four.reason is None and other.reason is None and other.box[1] == slice(1, 4)


@pytest.mark.parametrize("second", [1, 7])
def test_the_strokes_of_a_letter_cut_apart_are_one_mark_not_ones(second):
    """Slices 0-3 of a group that, read whole, names no digit (an M, a W): each slice a sure 1, the
    second a sure 1 or a sure 7, and no run of two or three a digit. Four 1s cut out of such ink are
    the strokes of one mark; a 7 among them is a digit, so the cuts stand."""
    unsure = [0.1] * 10
    sure = {(i, i + 1): np.eye(10)[second if i == 1 else 1] for i in range(4)}
    runs = [candidate(i, j, sure.get((i, j), unsure), cut=0.5) for i in range(4) for j in range(i + 1, 5)]
    group = reading.segment.Group(np.ones((10, 4), bool), (slice(0, 10), slice(0, 4)), 0, 4, 10, None, 0.0)
    chosen = reading.cuts.choose_digits(group, 4, runs)
    if second == 1:
        assert len(chosen) == 1 and chosen[0].box[1] == slice(0, 4)
        assert chosen[0].reason == reading.verdict.why_not_a_digit(unsure)
    else:
        assert [int(p.probabilities.argmax()) for p in chosen] == [1, 7, 1, 1]
        assert all(p.reason is None for p in chosen)


def small_zero(size):
    return lambda draw: draw.ellipse([380, 150 - size, 380 + 0.6 * size, 150], outline=0, width=10)


def stroke_down(length):
    return lambda draw: draw.line([(420, 40), (420, 40 + length)], fill=0, width=10)


@pytest.mark.parametrize("mark, reason, left", [
    (small_zero(40), reading.segment.SMALL_REASON, 380), (small_zero(100), None, None),
    (stroke_down(300), reading.segment.TALL_REASON, 415), (stroke_down(110), None, None)])
def test_a_digit_far_shorter_or_taller_than_the_others_is_a_mark(mark, reason, left):
    """147 written 100 px tall, and beside it, with a model sure that all ink is a 7: a 0 written
    40 px tall (the g of "kg", a superscript) is left out with its reason; a stroke down the page
    300 px long (the shade along a sheet's edge, a margin's rule) too, and the digits, which it
    would have made "small", are read. Either as tall as the others is a fourth digit."""
    img, _ = number_picture([1, 4, 7], canvas=(480, 400))
    mark(ImageDraw.Draw(img))
    found = reading.segment.split_marks(reading.ink.read_ink(img), lambda batch: np.eye(10)[[7] * len(batch)])
    if reason is None:
        assert len(found.digits) == 4 and found.marks == []
    else:
        assert len(found.digits) == 3
        assert [m.reason for m in found.marks] == [reason]
        assert found.marks[0].box[0] == pytest.approx(left, abs=6)


# A 0 written unclearly, as a model doubts it: 0 at 40%, 6 at 30%; and ink it takes for no digit.
DOUBT = np.array([0.4, 0.3 / 8, 0.3 / 8, 0.3 / 8, 0.3 / 8, 0.3 / 8, 0.3, 0.3 / 8, 0.3 / 8, 0.3 / 8])
NONE = np.full(10, 0.1)


def doubts_rings(doubt):
    """A model sure that ink through the middle of its input is a 1, and giving doubt for a ring."""
    background = -reading.digit_input.MNIST_MEAN / reading.digit_input.MNIST_STD
    return lambda batch: np.stack([doubt if r else np.eye(10)[1]
                                   for r in batch[:, 0, 12:16, 12:16].max(axis=(1, 2)) <= background + 0.1])


@pytest.mark.parametrize("digits, ring, doubt, read", [
    ([1, 0, 1], None, DOUBT, [1, 0, 1]),  # a doubted digit between two digits: read
    ([1, 1, 0], None, DOUBT, [1, 1]),  # after the number: a unit's letter, say, left out
    ([1, 1], 60, DOUBT, [1, 1]),  # between them but shorter: a colon, a sign, left out
    ([1, 0, 1], None, NONE, [1, 1])])  # between them but no digit at all: a scribble, left out
def test_a_doubted_mark_between_two_digits_and_as_tall_is_a_digit(digits, ring, doubt, read):
    img, _ = number_picture(digits, canvas=(420, 200))
    if ring:  # a 0 60 px tall between the two 1s (at x 75-85 and 180-190), on their baseline
        ImageDraw.Draw(img).ellipse([112, 150 - ring, 148, 150], outline=0, width=10)
    classify = doubts_rings(doubt)
    found = reading.segment.split_marks(reading.ink.read_ink(img), classify)
    assert [int(np.argmax(classify(d.tensor[None]))) for d in found.digits] == read
    assert [m.reason for m in found.marks] == [reading.verdict.why_not_a_digit(doubt)] * (3 - len(read))
