"""
A whole number -> its digits: the ink of a picture (preprocess.read_ink) split into the digits
written in it, left to right, each as the 28x28 input the model reads.

    from segment import find_digits
    digits = find_digits("meter.jpg", classify)   # classify: a batch of inputs -> probabilities

Handwriting as people write it: digits of different sizes on a drifting baseline, a common slant,
digits made of strokes that do not touch, gaps of any width, and digits that touch their
neighbour. Pieces of ink are grouped into digits along the slant; ink too wide for one digit is
cut along the cheapest paths through it; the model's confidence, MNIST's digit widths and the ink
each cut crosses choose the reading (see split_number).
"""
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from reading.digit_input import to_mnist
from reading.errors import NoDigitError
from reading.ink import label_pieces, read_ink, stroke_width


class Digit(NamedTuple):
    """One digit found in a picture: box (x0, y0, x1, y1) in the original picture's pixels,
    x1 and y1 exclusive; tensor, the normalised 1x28x28 the model reads; all_ink, whether it is
    all the ink in the picture (its tensor is then what preprocess_image makes of the picture);
    read, the ten probabilities the number reader gave it where the reader's reading of its
    group was chosen (None: the model's reading of tensor stands)."""
    box: tuple
    tensor: torch.Tensor
    all_ink: bool = False
    read: list = None


class LineReading(NamedTuple):
    """What a number reader makes of a row of ink: digits (ints, left to right), probabilities
    (ten per digit), and log_likelihood, a function of a list of digits giving log P(those digits
    | the ink) under the reader."""
    digits: list
    probabilities: list
    log_likelihood: object


def find_digits(image, classify, read_line=None):
    """The digits of the number written in the picture, left to right, as Digit tuples.

    classify maps a batch of normalised tensors (N x 1 x 28 x 28) to probabilities (N x 10); it
    chooses where digits that touch are cut. read_line, if given, maps the ink of a group of
    digits (levels, mask, name) to a LineReading (see predict.load_reader). Raises the errors of
    read_ink."""
    return split_number(read_ink(image), classify, read_line)


def split_number(ink, classify, read_line=None):
    """The digits in ink (an Ink), left to right.

    Handwriting as people write it: pieces of ink one above the other make one digit (see
    digit_groups); a group too wide for one digit is sliced along cheap paths through its ink
    (see _atoms), and the way of joining the slices into digits that reads best is chosen (see
    _choose_digits), so a wide 0 stays one 0 and two digits that touch become two. With a number
    reader, a group too wide for one digit is also read whole, and its reading taken where it is
    clearly the likelier one (see _prefer_reader)."""
    groups = digit_groups(ink)
    if not groups:
        return []
    line = float(np.median([g.height for g in groups if g.height >= 0.5 * max(x.height for x in groups)]))
    digits = []
    # A digit's mask is part of the ink's, so it is all the ink when it has as many pixels.
    ink_pixels = np.count_nonzero(ink.mask)
    for group in groups:
        atoms = _atoms(ink, group, line)
        candidates = _candidates(ink, group, atoms, line, classify)
        chosen = _choose_digits(group, len(atoms), candidates)
        read = [None] * len(chosen)
        if read_line is not None and len(atoms) > 1:
            chosen, read = _prefer_reader(ink, group, len(atoms), candidates, chosen, classify, read_line)
        for (box, part, tensor, _), probabilities in zip(chosen, read):
            if tensor is None:
                tensor = to_mnist(ink.levels[box], part, ink.name)
            all_ink = bool(np.count_nonzero(part) == ink_pixels)
            digits.append((float(group.sheared[box][part].mean()),
                           Digit(_original_box(box, ink.scale), tensor, all_ink, probabilities)))
    digits.sort(key=lambda d: d[0])
    return [digit for _, digit in digits]


def count_digits(ink, classify):
    """How many digits split_number would find in ink, asking classify only where it must: one
    piece of ink no wider than 1.2 times its height is one digit (a wide 0 or 2 included), so a
    folder of single digits skips the search for the cuts (at 1.0 a tenth of bench_predict's
    digits took it, and reading them 25% longer; at 1.2, 2% and 7-9%)."""
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
    """The ink's pieces grouped into digits, in no particular order: pieces one above the other,
    seen along the writing's common slant, make one digit (a 4 in two strokes, a broken 7, a 5
    whose bar floats); specks far smaller than the digits beside them are left out."""
    labels, count = label_pieces(ink.mask) if ink.pieces is None else ink.pieces
    if count == 0:
        return []
    h, w = ink.mask.shape
    slant = _common_slant(ink.mask, labels, count)
    sheared = (np.arange(w, dtype=np.float32)[None, :]
               - np.float32(slant) * (np.arange(h, dtype=np.float32)[:, None] - h / 2))
    boxes = ndimage.find_objects(labels)
    along = [sheared[b][labels[b] == k] for k, b in enumerate(boxes, start=1)]
    left = np.array([a.min() for a in along])
    right = np.array([a.max() for a in along]) + 1
    heights = np.array([b[0].stop - b[0].start for b in boxes])
    # The height of a digit in this picture: the median of the pieces that are not fragments.
    height = float(np.median(heights[heights >= 0.5 * heights.max()]))
    groups = []
    for members in _group_pieces(left, right, heights < 0.6 * height):
        box = tuple(slice(min(boxes[m][d].start for m in members), max(boxes[m][d].stop for m in members))
                    for d in (0, 1))
        mask = np.isin(labels[box], members + 1)
        group_height = box[0].stop - box[0].start
        lo, hi = float(left[members].min()), float(right[members].max())
        if max(group_height, hi - lo) < 0.3 * height:
            continue  # a speck, a dot or a comma beside digits of full height
        groups.append(Group(mask, box, lo, hi, group_height, sheared, slant))
    return groups


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


def _group_pieces(left, right, short):
    """Lists of piece indices that make one digit: pieces whose extents along the writing overlap
    by at least half the narrower one's width, or at all where one of them is short (a floating
    bar, a fragment of a broken stroke), joined until no more join."""
    order = np.argsort(left)
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
    return [np.array(g) for g in groups]


def _atoms(ink, group, line):
    """(mask, left, right, cut) of the slices a group may be made of, left to right (masks
    within the group's box; cut, the strokes of ink crossed on the slice's left): the whole group
    when it is narrow enough for one digit; else the slices between cut paths. Each path runs
    from the top of the group to its bottom, along the writing's slant, through as little ink as
    it can (so between two digits that touch it finds their contact), from a start at each
    minimum of the ink's projection along the writing and every CUT_STEP of the line height."""
    if group.right - group.left <= 0.75 * line:
        return [(group.mask, group.left, group.right, 0.0)]
    box = group.box
    region = group.mask
    levels = np.where(region, ink.levels[box], 0.0)
    rows = np.arange(box[0].start, box[0].stop)
    # Each row moved back by the slant, so that the writing stands upright: column u of row r
    # is column u + shift[r] of the box.
    shift = np.round(group.slant * (rows - ink.mask.shape[0] / 2)).astype(int)
    shift -= shift.min()
    width = region.shape[1] + shift.max()
    upright = np.zeros((region.shape[0], width))
    for r, s in enumerate(shift):
        upright[r, width - region.shape[1] - s:width - s] = levels[r]
    offset = width - region.shape[1] - shift  # u = x + offset[r]
    cuts = _cut_starts(upright.sum(axis=0), line)
    paths = [np.zeros(len(rows), int)]
    for path in _cheapest_paths(upright, cuts, max(2, int(REACH * line))):
        paths.append(np.maximum(path, paths[-1]))
    paths.append(np.full(len(rows), width))
    # What a cut costs: the ink it crosses, in strokes (a stroke's width of solid ink).
    pen = max(stroke_width(region), 1.0) * float(np.median(levels[region]))
    crossed = [float(upright[np.arange(len(rows)), np.minimum(path, width - 1)].sum()) / pen
               for path in paths[:-1]]
    crossed[0] = 0.0
    u = np.arange(region.shape[1])[None, :] + offset[:, None]
    atoms = []
    for a, b, cut in zip(paths, paths[1:], crossed):
        part = region & (u >= a[:, None]) & (u < b[:, None])
        if part.sum() < 3:
            continue
        along = group.sheared[box][part]
        atoms.append((part, float(along.min()), float(along.max()) + 1, cut))
    return atoms


CUT_STEP = 0.15
# How far, in line heights, a cut path may wander from its start to go round a neighbour's stroke.
REACH = 0.35
# Every row a path spends off its start column costs ANCHOR per column (in pixels of solid ink),
# so it goes round a stroke only where that saves more ink than the detour costs. With a mere
# tie-break, paths from nearby starts ran together into the one cheapest path, and digits that
# touch in more than one place (a 7's bar over the next digit, a 2's base under a 1) were left
# with no cut between them. Stiffer paths cut through more of one digit's strokes instead: 0.03
# read touching optdigits numbers drawn with bold strokes worse than the tie-break did. The
# README gives the figures; pictures 2.5 times larger read as well with the same value.
ANCHOR = 0.01


def _cut_starts(profile, line):
    """Columns to start cut paths at: the minima of the projection, then every CUT_STEP of the
    line height where no minimum is near, never closer than a tenth of the height to an end."""
    smooth = ndimage.uniform_filter1d(profile, max(1, int(0.05 * line)), mode="constant")
    margin = max(1, int(0.1 * line))
    window = ndimage.minimum_filter1d(smooth, 2 * margin + 1, mode="nearest")
    inked = np.flatnonzero(profile > 0)
    lo, hi = inked[0] + margin, inked[-1] + 1 - margin
    cuts = []
    for i in sorted((i for i in range(lo, hi) if smooth[i] == window[i]), key=lambda i: smooth[i]):
        if all(abs(i - c) >= margin for c in cuts):
            cuts.append(i)
    step = max(1, int(CUT_STEP * line))
    cuts += [i for i in range(lo, hi, step) if all(abs(i - c) >= margin for c in cuts)]
    return sorted(cuts)


def _cheapest_paths(cost, starts, reach):
    """For each start column, the column in each row of a path from the top of cost to its
    bottom that stays within reach of start, moves at most one column a row, and crosses the
    least cost, counting ANCHOR a row for each column it is off its start: an array of
    len(starts) paths by rows."""
    h, w = cost.shape
    # Every start's band of columns at once, one row at a time (a row's work per start is too
    # small to pay for its own NumPy calls). Columns off the picture cost infinity, so no path
    # goes there: each path is the one its band alone would give.
    columns = np.asarray(starts, int)[:, None] + np.arange(-reach, reach + 1)
    off = (columns < 0) | (columns >= w)
    from_start = np.abs(columns - columns[:, reach:reach + 1])
    band = cost[:, np.clip(columns, 0, w - 1)] + ANCHOR * from_start
    band[:, off] = np.inf
    # total[r, :, 1:-1] is the cheapest way down to each cell of row r; the first and last
    # columns stay infinite, so that the cells beside each one are plain views.
    total = np.full((h, len(columns), columns.shape[1] + 2), np.inf)
    total[0, :, 1:-1] = band[0]
    best = np.empty(band.shape[1:])
    for r in range(1, h):
        np.minimum(total[r - 1, :, 1:-1], total[r - 1, :, :-2], out=best)
        np.minimum(best, total[r - 1, :, 2:], out=best)
        np.add(band[r], best, out=total[r, :, 1:-1])
    # Which cell above each cell came from: straight up, or one column either side only when
    # strictly cheaper, the left one first.
    above, left, right = total[:-1, :, 1:-1], total[:-1, :, :-2], total[:-1, :, 2:]
    from_right = right < np.minimum(above, left)
    step = from_right.view(np.int8) - ((left < above) & ~from_right).view(np.int8)
    paths = np.empty((len(columns), h), int)
    paths[:, -1] = np.argmin(total[-1, :, 1:-1], axis=1)
    chosen = np.arange(len(columns))
    for r in range(h - 1, 0, -1):
        paths[:, r - 1] = paths[:, r] + step[r - 1, chosen, paths[:, r]]
    return paths + columns[:, :1]


# How wide single handwritten digits are: for each digit 0-9, the density of its ink box's width
# over its height in the MNIST training set, in steps of 0.1 from 0 (ink at grey level 0.3;
# smoothed over neighbouring steps, as a 20-pixel-tall digit's width comes in whole pixels). A 1
# is narrow, a 0 or a 2 often wider than tall: a slice read as a 6 but half as wide as a 6 is
# likelier half of a 0, and two digits read as one are wider than that one digit ever is.
WIDTH_TABLE = np.array([
    [0.00, 0.00, 0.00, 0.00, 0.13, 0.51, 0.78, 1.00, 1.62, 2.09, 1.91, 1.19, 0.46, 0.16, 0.11],
    [0.05, 1.02, 2.05, 1.65, 1.52, 1.68, 1.00, 0.41, 0.29, 0.20, 0.08, 0.03, 0.01, 0.00, 0.00],
    [0.00, 0.00, 0.00, 0.00, 0.12, 0.46, 0.69, 0.88, 1.44, 1.94, 1.90, 1.30, 0.58, 0.24, 0.22],
    [0.00, 0.00, 0.01, 0.03, 0.42, 1.26, 1.54, 1.39, 1.73, 1.72, 1.12, 0.53, 0.17, 0.04, 0.02],
    [0.00, 0.00, 0.00, 0.02, 0.44, 1.35, 1.61, 1.39, 1.68, 1.66, 1.08, 0.53, 0.17, 0.04, 0.02],
    [0.00, 0.00, 0.00, 0.01, 0.21, 0.67, 0.87, 0.89, 1.25, 1.55, 1.51, 1.23, 0.75, 0.39, 0.38],
    [0.00, 0.00, 0.00, 0.06, 0.77, 1.98, 2.05, 1.48, 1.50, 1.21, 0.59, 0.24, 0.07, 0.02, 0.02],
    [0.00, 0.00, 0.00, 0.04, 0.52, 1.52, 1.77, 1.49, 1.66, 1.48, 0.87, 0.41, 0.13, 0.05, 0.03],
    [0.00, 0.00, 0.01, 0.05, 0.60, 1.66, 1.86, 1.43, 1.54, 1.42, 0.85, 0.39, 0.13, 0.04, 0.02],
    [0.00, 0.00, 0.01, 0.09, 1.09, 2.62, 2.46, 1.39, 1.10, 0.79, 0.32, 0.10, 0.02, 0.01, 0.01],
])

# Each cut costs CUT_COST for every stroke's width of ink it crosses (log-likelihood), so that
# pieces of one digit, which may each look like a digit to a model that has only seen whole
# ones, are not read as several without cause: a cut through the thin contact of two touching
# digits is cheap, one through the body of a digit is not.
CUT_COST = 3.0
# The model's confidence counts this many times over: a digit read whole is read with near
# certainty, a piece of one or two digits taken as one far less often so.
CONFIDENCE_WEIGHT = 10.0
# Near certainty saturates the probability (0.97 and 0.9999 are both "sure"), but not the gap
# between the two likeliest classes' logits: whole digits leave a wide one (a median of 14-19
# for the two recipes' models, on MNIST training digits written with the benchmarks' pen), two
# merged digits or half of one a narrow one (4-6; told apart from whole digits 95% of the time).
# Each digit pays MARGIN_COST per unit its gap falls short of FULL_MARGIN.
FULL_MARGIN = 15.0
MARGIN_COST = 0.3


def _log_shape_prior(probs, width, height):
    """log P(shape | a single digit) for a part width x height (both in line heights), given the
    model's probabilities for it: the class-wise width density, weighed by the probabilities, and
    a part far shorter than the line (a floating bar, a dot) made unlikely."""
    if width < 1.5:
        density = WIDTH_TABLE[:, int(width * 10)]
    else:
        density = WIDTH_TABLE[:, -1] * np.exp(-(width - 1.5) / 0.2)
    joint = float((probs * np.maximum(density, 1e-3)).sum())
    short = max(0.0, 0.75 - height) / 0.2
    return np.log(joint) - short * short


def _logit_margin(probs):
    """The gap between the two largest logits, from the probabilities (their log ratio)."""
    second, first = np.sort(probs)[-2:]
    return float(np.log(first) - np.log(second)) if second > 0 else np.inf


def _candidates(ink, group, atoms, line, classify):
    """Every run of consecutive slices that may be one digit, read by the model in one batch, in
    order of its first slice: (first slice, slice after the last, (box, mask within box, input
    tensor), width and height in line heights, ink its cut crosses, probabilities); none for a
    group of one slice, which is one digit."""
    if len(atoms) == 1:
        return []
    top, left = group.box[0].start, group.box[1].start
    candidates, tensors = [], []
    for i in range(len(atoms)):
        sub = np.zeros(group.mask.shape, bool)
        for j in range(i, len(atoms)):
            sub |= atoms[j][0]
            width = max(a[2] for a in atoms[i:j + 1]) - min(a[1] for a in atoms[i:j + 1])
            if j > i and width > 1.6 * line:
                break
            rows, cols = ndimage.find_objects(sub.astype(np.int8))[0]
            box = (slice(rows.start + top, rows.stop + top), slice(cols.start + left, cols.stop + left))
            try:
                tensors.append(to_mnist(ink.levels[box], sub[rows, cols], ink.name))
            except NoDigitError:
                continue
            height = (rows.stop - rows.start) / line
            digit = (box, sub[rows, cols].copy(), tensors[-1])
            candidates.append((i, j + 1, digit, width / line, height, atoms[i][3]))
    probs = classify(torch.stack(tensors)).double().numpy() if tensors else []
    return [c + (p,) for c, p in zip(candidates, probs)]


def _choose_digits(group, slices, candidates, count=None):
    """(box, mask within box, input tensor or None, probabilities or None) of each digit in a
    group of `slices` slices: the candidates (see _candidates) joined into the likeliest reading
    (dynamic programming over the slices), each digit scored by the model's probabilities for
    it, how likely its shape is, how far ahead of the runner-up its reading is, and the ink its
    cut crosses. With count, the likeliest reading of exactly count digits, or None if the slices
    cannot make that many."""
    whole = [(group.box, group.mask, None, None)] if count in (None, 1) else None
    if slices == 1:
        return whole
    # best[(j, n)]: the best way to read slices 0..j-1 as n digits (n is always 0 without count).
    best = {(0, 0): (0.0, [])}
    for i, j, digit, width, height, cut, p in candidates:
        score = (CONFIDENCE_WEIGHT * np.log(p.max()) + _log_shape_prior(p, width, height)
                 - MARGIN_COST * max(0.0, FULL_MARGIN - _logit_margin(p)) - CUT_COST * cut)
        for n in range(count or 1):
            if (i, n) not in best:
                continue
            key = (j, n + 1 if count else 0)
            total = best[(i, n)][0] + score
            if key not in best or total > best[key][0]:
                best[key] = (total, best[(i, n)][1] + [digit + (p,)])
    end = (slices, count or 0)
    if end not in best:  # every way across had a sliver too faint to read: keep it whole
        return whole
    return best[end][1]


# The number reader's reading of a group replaces the cut-apart one only where it is this much
# likelier under the reader (log-likelihood: e^2, about 7 times). Even a reader that reads rows
# of touching digits far better than cutting does reads a single digit less well than the CNN,
# so a near tie goes to the cuts.
READER_MARGIN = 2.0


def _prefer_reader(ink, group, slices, candidates, chosen, classify, read_line):
    """(digits as _choose_digits gives them, the reader's probabilities for each or None): the
    reader's reading of a group too wide for one digit where it disagrees with the cuts' and is
    READER_MARGIN likelier under the reader, the cuts' otherwise. Where a single digit is all
    either sees, the CNN's reading stands: on one digit it is the better reader. The reader's
    digits get the boxes of the likeliest cuts into that many digits."""
    keep = (chosen, [None] * len(chosen))
    try:
        reading = read_line(ink.levels[group.box], group.mask, ink.name)
    except NoDigitError:
        return keep
    # The cuts' digits were read with the candidates; only a group kept whole is read here.
    cut_digits = [int(p.argmax()) if p is not None
                  else int(classify(to_mnist(ink.levels[box], part, ink.name)[None])[0].argmax())
                  for box, part, _, p in chosen]
    if (not reading.digits or reading.digits == cut_digits or len(reading.digits) == len(cut_digits) == 1
            or reading.log_likelihood(reading.digits) - reading.log_likelihood(cut_digits) <= READER_MARGIN):
        return keep
    if len(reading.digits) != len(chosen):
        chosen = _choose_digits(group, slices, candidates, count=len(reading.digits))
        if chosen is None:  # the slices cannot make that many digits: nowhere to put them
            return keep
    return chosen, reading.probabilities


def _original_box(box, scale):
    """(x0, y0, x1, y1) of a pair of slices, in the original picture's pixels."""
    y, x = box
    return (int(x.start * scale), int(y.start * scale),
            int(np.ceil(x.stop * scale)), int(np.ceil(y.stop * scale)))
