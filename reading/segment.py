"""
A whole number -> its digits: the ink of a picture (reading.ink.read_ink) split into the digits
written in it, left to right, each as the 28x28 input the model reads.

    from reading.segment import find_digits
    digits = find_digits("meter.jpg", classify)   # classify: a batch of inputs -> probabilities

Handwriting as people write it: digits of different sizes on a drifting baseline, a common slant,
digits made of strokes that do not touch, gaps of any width, and digits that touch their
neighbour. Pieces of ink are grouped into digits along the slant; ink too wide for one digit is
cut along the cheapest paths through it; the model's confidence, MNIST's digit widths and the ink
each cut crosses choose the reading (see split_number; the cutting is in reading/cuts.py).
"""
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from reading.cuts import candidates, choose_digits, coarseness, slices
from reading.digit_input import to_mnist
from reading.errors import NoDigitError
from reading.ink import label_pieces, read_ink
from reading.marks import BAR_REASON, UNDERLINE_REASON, Mark, is_bar
from reading.verdict import why_not_a_digit


class Digit(NamedTuple):
    """One digit found in a picture: box (x0, y0, x1, y1) in the original picture's pixels,
    x1 and y1 exclusive; tensor, the normalised 1x28x28 array the model reads; all_ink, whether it is
    all the ink in the picture (its tensor is then what preprocess_image makes of the picture);
    reader_probabilities, the ten probabilities the number reader gave it where the reader's
    reading of its group was chosen (None: the model's reading of tensor stands)."""
    box: tuple
    tensor: np.ndarray
    all_ink: bool = False
    reader_probabilities: list = None


class LineReading(NamedTuple):
    """What a number reader makes of a row of ink: digits (ints, left to right), probabilities
    (ten per digit), and log_likelihood, a function of a list of digits giving log P(those digits
    | the ink) under the reader."""
    digits: list
    probabilities: list
    log_likelihood: object


def find_digits(image, classify, read_line=None):
    """The digits of the number written in the picture, left to right, as Digit tuples.

    classify maps a batch of normalised inputs (an N x 1 x 28 x 28 array) to probabilities (N x 10); it
    chooses where digits that touch are cut. read_line, if given, maps the ink of a group of
    digits (levels, mask, name) to a LineReading (see predict.load_reader). Raises the errors of
    read_ink."""
    return split_number(read_ink(image), classify, read_line)


def split_number(ink, classify, read_line=None):
    """The digits in ink (an Ink), left to right (split_marks gives the marks left out too)."""
    return split_marks(ink, classify, read_line).digits


class NumberInk(NamedTuple):
    """What split_marks finds in a picture's ink: digits (Digit tuples, left to right) and marks
    (reading.marks.Mark tuples, left to right), the ink that is no digit, left out of the number."""
    digits: list
    marks: list


def split_marks(ink, classify, read_line=None):
    """The digits in ink (an Ink), left to right, and the marks that are not digits, as a
    NumberInk.

    Handwriting as people write it: pieces of ink one above the other make one digit (see
    digit_groups); a group too wide for one digit is sliced along cheap paths through its ink
    (see cuts.slices), and the way of joining the slices into digits and marks that reads best
    is chosen (see cuts.choose_digits), so a wide 0 stays one 0, two digits that touch become
    two, and a letter beside them is one mark rather than several digits. A digit whose reading
    reading.verdict.why_not_a_digit declines is a mark (unless it stands between two digits, see
    _doubted_between_digits), as is a straight horizontal stroke. With a number reader, a group
    too wide for one digit is also read whole, and its reading taken where it is clearly the
    likelier one (see _prefer_reader)."""
    groups, bars = sort_ink(ink)
    marks = [(float(b.left), Mark(_original_box(b.box, ink.scale), reason)) for b, reason in bars]
    if not groups:
        return NumberInk([], [m for _, m in sorted(marks, key=lambda m: m[0])])
    line = float(np.median([g.height for g in groups if g.height >= 0.5 * max(x.height for x in groups)]))
    parts = []
    for group, found in zip(groups, _slice_groups(ink, groups, line)):
        runs = candidates(ink, group, found, line, classify)
        chosen = choose_digits(group, len(found), runs)
        read = [None] * len(chosen)
        if read_line is not None and len(found) > 1:
            chosen, read = _prefer_reader(ink, group, len(found), runs, chosen, classify, read_line)
        parts += [(group, part, probabilities) for part, probabilities in zip(chosen, read)]
    parts = _read_whole(ink, parts, classify)
    digits = []
    # A digit's mask is part of the ink's, so it is all the ink when it has as many pixels.
    ink_pixels = np.count_nonzero(ink.mask)
    heights = [part.box[0].stop - part.box[0].start for _, part, probabilities in parts
               if part.reason is None or probabilities is not None]
    tallest = max((h for h in heights if not _too_tall(h, heights)), default=0)
    doubted = []  # (along, height, Digit, Mark): declined by the model alone
    for group, part, probabilities in parts:
        along = float(group.sheared[part.box][part.mask].mean())
        box = _original_box(part.box, ink.scale)
        reason = part.reason if probabilities is None else None
        height = part.box[0].stop - part.box[0].start
        if reason is None and _too_tall(height, heights):
            reason = TALL_REASON
        elif reason is None and height < SMALL_DIGIT * tallest:
            reason = SMALL_REASON
        all_ink = bool(np.count_nonzero(part.mask) == ink_pixels)
        if reason is not None:
            mark = Mark(box, reason, part.probabilities.tolist())
            if part.tensor is not None and reason == why_not_a_digit(part.probabilities):
                doubted.append((along, height, Digit(box, part.tensor, all_ink), mark))
            else:
                marks.append((along, mark))
            continue
        digits.append((along, Digit(box, part.tensor, all_ink, probabilities)))
    digits, marks = _doubted_between_digits(digits, marks, doubted, heights)
    return NumberInk([d for _, d in sorted(digits, key=lambda d: d[0])],
                     [m for _, m in sorted(marks, key=lambda m: m[0])])


# A mark the model doubts (its likeliest digit under an even bet) but written between two digits
# of the number and about as tall as they are is a digit written unclearly, not a letter or a
# sign: units and words come after a number and signs before it, and what does come between its
# digits (a dash, a point, a comma, a colon) is a bar or far shorter than the digits. So it is
# read as its likeliest digit, at the low probability the model gives it. Not where the model
# names no digit at all (probabilities near a tenth each, as it learnt to answer two digits
# taken as one, or a digit crossed out): its likeliest must be at least twice as likely as that.
DOUBTED_HEIGHT = 0.75  # at least, times the middle height of the number's digits
DOUBTED_LEAST = 0.2


def _doubted_between_digits(digits, marks, doubted, heights):
    """(digits, marks), both lists of (along, tuple), with each doubted mark (along, height, Digit,
    Mark) that stands between two digits, is at least DOUBTED_HEIGHT times their median height
    and has a likeliest digit at DOUBTED_LEAST or more taken as a digit, and the others as
    marks."""
    alongs = [along for along, _ in digits]
    digits, marks = list(digits), list(marks)
    for along, height, digit, mark in doubted:
        inside = len(alongs) >= 2 and min(alongs) < along < max(alongs)
        named = max(mark.probabilities) >= DOUBTED_LEAST
        if inside and named and height >= DOUBTED_HEIGHT * float(np.median(heights)):
            digits.append((along, digit))
        else:
            marks.append((along, mark))
    return digits, marks


# The digits of one number are written about as tall as each other: under one in 10,000 of
# MNIST's training digits (each scaled to fit 20 pixels) is less than half as tall as the
# tallest. A mark read as a digit but less than half as tall as the number's tallest digit is a
# lower-case letter or a sign beside the number (the g of "kg", the m of "km", a superscript).
SMALL_DIGIT = 0.5
SMALL_REASON = "less than half as tall as the number's tallest digit"
# The other way round: a mark more than twice as tall as the middle one of the number's other
# digits (two at least, so that they outvote it) is no digit of theirs: the shade along a sheet's
# edge, a margin's rule, a stroke down the page. Taken for the tallest digit, it would make every
# digit of the number "small".
TALL_DIGIT = 2.0
TALL_REASON = "more than twice as tall as the number's other digits"


def _too_tall(height, heights):
    """Whether a digit `height` tall is more than TALL_DIGIT times the median of the other heights
    (heights: all the number's digits', this one's included), where there are two others or more."""
    others = list(heights)
    others.remove(height)
    return len(others) >= 2 and height > TALL_DIGIT * float(np.median(others))


def _slice_groups(ink, groups, line):
    """Each group's slices (cuts.slices), all cut no finer than MAX_CANDIDATES allows: the work of
    reading a picture grows with the runs of slices that may be one digit, which ink far wider
    than it is tall (a long stroke, a scribble across the page) would make by the thousand."""
    found = [slices(ink, group, line) for group in groups]
    coarse = coarseness(found, line, MAX_CANDIDATES)
    if coarse > 1:
        found = [slices(ink, group, line, coarse) for group in groups]
    return found


# The most runs of slices read for one picture. Each costs about half a millisecond (its input
# made, then read by the model): this many read in about 100 ms on one core, and few rows of
# touching digits make more (a row of five or six makes 60-160).
MAX_CANDIDATES = 128


def _read_whole(ink, parts, classify):
    """parts (group, Part, reader's probabilities) with each group kept whole read by the model
    in one batch, and any digit whose reading why_not_a_digit declines marked with the reason."""
    whole = [i for i, (_, part, _) in enumerate(parts) if part.tensor is None]
    tensors = [to_mnist(ink.levels[parts[i][1].box], parts[i][1].mask, ink.name) for i in whole]
    probs = np.asarray(classify(np.stack(tensors)), np.float64) if tensors else []
    parts = list(parts)
    for i, tensor, p in zip(whole, tensors, probs):
        parts[i] = (parts[i][0], parts[i][1]._replace(tensor=tensor, probabilities=p), parts[i][2])
    return [(g, part if part.reason is not None else part._replace(reason=why_not_a_digit(part.probabilities)), r)
            for g, part, r in parts]


def count_digits(ink, classify):
    """How many digits split_number would find in ink, asking classify only where it must: one
    piece of ink no wider than 1.2 times its height is one digit (a wide 0 or 2 included), so a
    folder of single digits skips the search for the cuts."""
    groups = digit_groups(ink)
    if len(groups) == 1 and groups[0].right - groups[0].left <= 1.2 * groups[0].height:
        return 1
    return len(split_number(ink, classify)) if groups else 0


class Group(NamedTuple):
    """Pieces of ink taken for one digit (or several that touch): box (slices of the picture),
    mask (bool, the group's ink within box), left and right along the writing, height (rows),
    sheared (each pixel's position along the writing, whole picture), slant (dx/dy)."""
    mask: np.ndarray
    box: tuple
    left: float
    right: float
    height: int
    sheared: np.ndarray
    slant: float


def digit_groups(ink):
    """The ink's pieces grouped into digits, in no particular order (see sort_ink)."""
    return sort_ink(ink)[0]


def sort_ink(ink):
    """(groups, bars): the ink's pieces grouped into digits, in no particular order, and the
    straight horizontal strokes set aside as no digit, each with its reason. Pieces one above
    the other, seen along the writing's common slant, make one digit (a 4 in two strokes, a
    broken 7, a 5 whose bar floats); a horizontal stroke over no other piece (a dash, the bar of a
    7 not yet given its stem) or wider than a digit (an underline) is no part of any digit;
    specks far smaller than the digits beside them are left out."""
    labels, count = label_pieces(ink.mask) if ink.pieces is None else ink.pieces
    if count == 0:
        return [], []
    h, w = ink.mask.shape
    slant = _common_slant(ink.mask, labels, count)
    sheared = (np.arange(w, dtype=np.float32)[None, :]
               - np.float32(slant) * (np.arange(h, dtype=np.float32)[:, None] - h / 2))
    boxes = ndimage.find_objects(labels)
    along = [sheared[b][labels[b] == k] for k, b in enumerate(boxes, start=1)]
    left = np.array([a.min() for a in along])
    right = np.array([a.max() for a in along]) + 1
    heights = np.array([b[0].stop - b[0].start for b in boxes])
    bar = np.array([is_bar(labels[b] == k) for k, b in enumerate(boxes, start=1)])
    # The height of a digit in this picture: the median of the pieces that are not fragments
    # (nor strokes set aside, when there is anything else).
    tall = heights[~bar] if (~bar).any() else heights
    height = float(np.median(tall[tall >= 0.5 * tall.max()]))
    aside = _bars_aside(bar, left, right, height)
    groups, bars = [], []
    for members in _group_pieces(left, right, heights < 0.6 * height, aside):
        box = tuple(slice(min(boxes[m][d].start for m in members), max(boxes[m][d].stop for m in members))
                    for d in (0, 1))
        mask = np.isin(labels[box], members + 1)
        group_height = box[0].stop - box[0].start
        lo, hi = float(left[members].min()), float(right[members].max())
        group = Group(mask, box, lo, hi, group_height, sheared, slant)
        if len(members) == 1 and members[0] in aside:
            bars.append((group, aside[members[0]]))
        elif max(group_height, hi - lo) >= 0.3 * height:  # not a speck, a dot or a comma
            groups.append(group)
    return groups, bars


# No single digit is this much wider than the digits' height (MNIST's widest are 1.4 as wide).
UNDERLINE_WIDTH = 1.5


def _bars_aside(bar, left, right, height):
    """{piece index: reason} for the straight horizontal strokes that are no part of a digit:
    those over or under no other piece (a dash, a bar alone) and those wider than any digit (an
    underline, a line through a number). A bar over one other piece may be a 5's or a 7's, and
    joins it."""
    aside = {}
    for i in np.flatnonzero(bar):
        overlaps = (np.minimum(right, right[i]) > np.maximum(left, left[i])) & ~bar
        if not overlaps.any():
            aside[int(i)] = BAR_REASON
        elif right[i] - left[i] > UNDERLINE_WIDTH * height:
            aside[int(i)] = UNDERLINE_REASON
    return aside


def _common_slant(mask, labels, count):
    """How far the writing leans: dx/dy of its strokes (negative when the tops lean right, y
    growing downwards), from the second moments of each piece about its own centre, so that a
    drifting baseline between digits does not count as slant. Clipped to 27 degrees."""
    ys, xs = np.nonzero(mask)
    lab = labels[ys, xs]
    n = np.bincount(lab, minlength=count + 1).astype(np.float64)
    n[0] = 1
    my = np.bincount(lab, ys, count + 1) / n
    mx = np.bincount(lab, xs, count + 1) / n
    dy, dx = ys - my[lab], xs - mx[lab]
    var_y = float((dy * dy).sum())
    if var_y <= 0:
        return 0.0
    return float(np.clip((dx * dy).sum() / var_y, -0.5, 0.5))


def _group_pieces(left, right, short, aside=()):
    """Lists of piece indices that make one digit: pieces whose extents along the writing overlap
    by at least half the narrower one's width, or at all where one of them is short (a floating
    bar, a fragment of a broken stroke), joined until no more join. A piece in aside joins none."""
    order = [i for i in np.argsort(left) if i not in aside]
    groups = [[i] for i in order]
    spans = [(left[i], right[i]) for i in order]
    merged = True
    while merged:
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                (l1, r1), (l2, r2) = spans[a], spans[b]
                overlap = min(r1, r2) - max(l1, l2)
                either_short = all(short[groups[a]]) or all(short[groups[b]])
                if overlap >= 0.5 * min(r1 - l1, r2 - l2) or overlap > 0 and either_short:
                    groups[a] += groups.pop(b)
                    spans[a] = (min(l1, l2), max(r1, r2))
                    spans.pop(b)
                    merged = True
                    break
            if merged:
                break
    return [np.array(g) for g in groups + [[i] for i in aside]]


# The number reader's reading of a group replaces the cut-apart one only where it is this much
# likelier under the reader (log-likelihood: e^2, about 7 times). Even a reader that reads rows
# of touching digits far better than cutting does reads a single digit less well than the CNN,
# so a near tie goes to the cuts.
READER_MARGIN = 2.0


def _prefer_reader(ink, group, count_slices, runs, chosen, classify, read_line):
    """(digits and marks as cuts.choose_digits gives them, the reader's probabilities for each
    digit or None): the reader's reading of a group too wide for one digit, with the marks the
    cuts found left out of its ink, where it disagrees with the cuts' and is READER_MARGIN
    likelier under the reader, the cuts' otherwise. Where the reader sees a single digit and the
    cuts one or none, the CNN's reading stands: on one digit it is the better reader. The
    reader's digits get the boxes of the likeliest cuts into that many digits."""
    keep = (chosen, [None] * len(chosen))
    mask = group.mask.copy()
    for part in chosen:
        if part.reason is not None:
            rows, cols = (slice(p.start - g.start, p.stop - g.start) for p, g in zip(part.box, group.box))
            mask[rows, cols] &= ~part.mask
    try:
        reading = read_line(ink.levels[group.box], mask, ink.name)
    except NoDigitError:
        return keep
    # The cuts' digits were read with the candidates; only a group kept whole is read here.
    digit_parts = [part for part in chosen if part.reason is None]
    cut_digits = [int(part.probabilities.argmax()) if part.probabilities is not None
                  else int(classify(to_mnist(ink.levels[part.box], part.mask, ink.name)[None])[0].argmax())
                  for part in digit_parts]
    if (not reading.digits or reading.digits == cut_digits or len(reading.digits) == 1 >= len(cut_digits)
            or reading.log_likelihood(reading.digits) - reading.log_likelihood(cut_digits) <= READER_MARGIN):
        return keep
    if len(reading.digits) != len(digit_parts):
        chosen = choose_digits(group, count_slices, runs, count=len(reading.digits))
        if chosen is None:  # the slices cannot make that many digits: nowhere to put them
            return keep
    probabilities = iter(reading.probabilities)
    return chosen, [None if part.reason is not None else next(probabilities) for part in chosen]


def _original_box(box, scale):
    """(x0, y0, x1, y1) of a pair of slices, in the original picture's pixels."""
    y, x = box
    return (int(x.start * scale), int(y.start * scale),
            int(np.ceil(x.stop * scale)), int(np.ceil(y.stop * scale)))
