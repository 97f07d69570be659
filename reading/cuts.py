"""Ink too wide for one digit -> the digits it holds: slices between cut paths through the ink,
every run of slices that may be one digit read by the model, and the likeliest way of joining
the slices into digits (see segment.split_number, which calls these).
"""
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from reading.digit_input import to_mnist
from reading.errors import NoDigitError
from reading.ink import stroke_width
from reading.verdict import why_not_a_digit


class Slice(NamedTuple):
    """A slice of a group of ink between two cut paths: mask (bool, within the group's box),
    left and right along the writing, and cut, the strokes of ink the path on its left crosses."""
    mask: np.ndarray
    left: float
    right: float
    cut: float


class Part(NamedTuple):
    """One digit as the slices make it: box (slices of the picture), mask (bool, its ink within
    box), tensor (the model's input) and probabilities (the model's, an array of ten); tensor
    and probabilities are None for a group kept whole, which has not been read yet. reason: None
    for a digit, or why the ink is a mark that is no digit (reading.verdict.why_not_a_digit's)."""
    box: tuple
    mask: np.ndarray
    tensor: np.ndarray
    probabilities: np.ndarray
    reason: str = None


class Candidate(NamedTuple):
    """A run of consecutive slices that may be one digit: first (its first slice), stop (the
    slice after its last), part (read by the model), width and height in line heights, and cut,
    the strokes of ink the cut on its left crosses."""
    first: int
    stop: int
    part: Part
    width: float
    height: float
    cut: float


def slices(ink, group, line, coarse=1.0):
    """The Slices a group may be made of, left to right: the whole group when it is narrow
    enough for one digit; else the slices between cut paths. Each path runs from the top of the
    group to its bottom, along the writing's slant, through as little ink as it can (so between
    two digits that touch it finds their contact), from a start at each minimum of the ink's
    projection along the writing and every CUT_STEP of the line height, both spaced coarse times
    wider (see coarseness)."""
    if group.right - group.left <= 0.75 * line:
        return [Slice(group.mask, group.left, group.right, 0.0)]
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
    starts = cut_starts(upright.sum(axis=0), line, coarse)
    paths = [np.zeros(len(rows), int)]
    for path in cheapest_paths(upright, starts, max(2, int(REACH * line))):
        paths.append(np.maximum(path, paths[-1]))
    paths.append(np.full(len(rows), width))
    # What a cut costs: the ink it crosses, in strokes (a stroke's width of solid ink).
    pen = max(stroke_width(region), 1.0) * float(np.median(levels[region]))
    crossed = [float(upright[np.arange(len(rows)), np.minimum(path, width - 1)].sum()) / pen
               for path in paths[:-1]]
    crossed[0] = 0.0
    u = np.arange(region.shape[1])[None, :] + offset[:, None]
    found = []
    for a, b, cut in zip(paths, paths[1:], crossed):
        part = region & (u >= a[:, None]) & (u < b[:, None])
        if part.sum() < 3:
            continue
        along = group.sheared[box][part]
        found.append(Slice(part, float(along.min()), float(along.max()) + 1, cut))
    return found


CUT_STEP = 0.15
# How far, in line heights, a cut path may wander from its start to go round a neighbour's stroke.
REACH = 0.35
# Every row a path spends off its start column costs ANCHOR per column (in pixels of solid ink),
# so it goes round a stroke only where that saves more ink than the detour costs. With a mere
# tie-break, paths from nearby starts run together into the one cheapest path, and digits that
# touch in more than one place (a 7's bar over the next digit, a 2's base under a 1) are left
# with no cut between them; stiffer paths cut through more of one digit's strokes instead.
ANCHOR = 0.01


def cut_starts(profile, line, coarse=1.0):
    """Columns to start cut paths at: the minima of the projection, then every CUT_STEP of the
    line height where no minimum is near, never closer than a tenth of the height to an end or
    (times coarse) to each other."""
    smooth = ndimage.uniform_filter1d(profile, max(1, int(0.05 * line)), mode="constant")
    margin = max(1, int(0.1 * line))
    spacing = max(1, int(0.1 * coarse * line))
    window = ndimage.minimum_filter1d(smooth, 2 * spacing + 1, mode="nearest")
    inked = np.flatnonzero(profile > 0)
    lo, hi = inked[0] + margin, inked[-1] + 1 - margin
    cuts = []
    for i in sorted((i for i in range(lo, hi) if smooth[i] == window[i]), key=lambda i: smooth[i]):
        if all(abs(i - c) >= spacing for c in cuts):
            cuts.append(i)
    step = max(1, int(CUT_STEP * coarse * line))
    cuts += [i for i in range(lo, hi, step) if all(abs(i - c) >= spacing for c in cuts)]
    return sorted(cuts)


def coarseness(found, line, most):
    """How much wider than CUT_STEP to space the cuts so that the runs of slices that may be one
    digit (see candidates), over all the groups' slices found, are about most at the most: 1 when
    they are already. The runs grow with the square of the slices per line height."""
    runs = sum(_count_runs(f, line) for f in found)
    return 1.0 if runs <= most else float(np.sqrt(runs / most))


def _count_runs(found, line):
    """How many runs of consecutive slices candidates would read (one slice alone: none)."""
    if len(found) == 1:
        return 0
    runs = 0
    for i in range(len(found)):
        left, right = found[i].left, found[i].right
        for j in range(i, len(found)):
            left, right = min(left, found[j].left), max(right, found[j].right)
            if j > i and right - left > 1.6 * line:
                break
            runs += 1
    return runs


def cheapest_paths(cost, starts, reach):
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
# between the two likeliest classes' logits: whole digits leave a wide one, two merged digits or
# half of one a narrow one. Each digit pays MARGIN_COST per unit its gap falls short of
# FULL_MARGIN.
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


def candidates(ink, group, found, line, classify):
    """Every run of consecutive slices (found, as slices() gives them) that may be one digit, as
    Candidates read by the model in one batch, in order of their first slice; none for a group
    of one slice, which is one digit."""
    if len(found) == 1:
        return []
    top, left = group.box[0].start, group.box[1].start
    runs, tensors = [], []
    for i in range(len(found)):
        sub = np.zeros(group.mask.shape, bool)
        for j in range(i, len(found)):
            sub |= found[j].mask
            width = max(s.right for s in found[i:j + 1]) - min(s.left for s in found[i:j + 1])
            if j > i and width > 1.6 * line:
                break
            rows, cols = ndimage.find_objects(sub.astype(np.int8))[0]
            box = (slice(rows.start + top, rows.stop + top), slice(cols.start + left, cols.stop + left))
            try:
                tensors.append(to_mnist(ink.levels[box], sub[rows, cols], ink.name))
            except NoDigitError:
                continue
            height = (rows.stop - rows.start) / line
            part = Part(box, sub[rows, cols].copy(), tensors[-1], None)
            runs.append(Candidate(i, j + 1, part, width / line, height, found[i].cut))
    probs = np.asarray(classify(np.stack(tensors)), np.float64) if tensors else []
    return [c._replace(part=c.part._replace(probabilities=p)) for c, p in zip(runs, probs)]


# What a mark (ink that is no digit) scores in choose_digits: as much as a digit read at even
# odds with the runner-up close behind, so a confident digit always beats it, and one mark over
# a whole letter beats the letter cut into several marks or into pieces that pass for digits.
MARK_SCORE = CONFIDENCE_WEIGHT * float(np.log(0.5)) - MARGIN_COST * FULL_MARGIN


def choose_digits(group, count_slices, runs, count=None):
    """The Parts of the digits and marks in a group of count_slices slices: the candidates (runs)
    joined into the likeliest reading (dynamic programming over the slices), each digit scored by
    the model's probabilities for it, how likely its shape is, how far ahead of the runner-up its
    reading is, and the ink its cut crosses. A candidate whose reading why_not_a_digit declines is
    never a digit, only a mark (its Part's reason says why), scoring MARK_SCORE. With count (the
    digits a number reader sees, which has the last word on them), the likeliest reading of
    exactly count digits, declined candidates included, or None if the slices cannot make that
    many."""
    whole = [Part(group.box, group.mask, None, None)] if count in (None, 1) else None
    if count_slices == 1:
        return whole
    # best[(j, n)]: the best way to read slices 0..j-1 as n digits (n is always 0 without count).
    best = {(0, 0): (0.0, [])}
    for c in runs:
        p = c.part.probabilities
        reason = why_not_a_digit(p)
        ways = []  # (score, part, digits it adds to n)
        if reason is None or count:
            ways.append((CONFIDENCE_WEIGHT * np.log(p.max()) + _log_shape_prior(p, c.width, c.height)
                         - MARGIN_COST * max(0.0, FULL_MARGIN - _logit_margin(p)) - CUT_COST * c.cut,
                         c.part, 1 if count else 0))
        if reason is not None:
            ways.append((MARK_SCORE - CUT_COST * c.cut, c.part._replace(reason=reason), 0))
        for score, part, digits in ways:
            for n in range((count or 0) + 1 - digits):
                if (c.first, n) not in best:
                    continue
                key = (c.stop, n + digits)
                total = best[(c.first, n)][0] + score
                if key not in best or total > best[key][0]:
                    best[key] = (total, best[(c.first, n)][1] + [part])
    end = (count_slices, count or 0)
    if end not in best:  # every way across had a sliver too faint to read: keep it whole
        return whole
    chosen = best[end][1]
    if count is None and _only_ones(chosen):
        # The group read whole, where it is narrow enough to be a candidate.
        read = next((c.part for c in runs if c.first == 0 and c.stop == count_slices), None)
        if read is None:
            return [whole[0]._replace(reason=STROKES_REASON)]
        reason = why_not_a_digit(read.probabilities)
        if reason is not None:
            return [read._replace(reason=reason)]
    return chosen


STROKES_REASON = "strokes of one mark that is no digit, each read as a 1"


def _only_ones(chosen):
    """Whether the digits chosen in a group are two or more 1s and nothing else: cut out of ink
    that, read whole, names no digit (or is too wide to be read whole), they are the upright
    strokes of a mark, one mark. Any straight stroke reads as a 1, so the stems of an M, a W, an
    H or an N, cut apart, are each a perfect 1; ones that touch are far rarer in a number than
    such letters beside it."""
    digits = [part for part in chosen if part.reason is None]
    return len(digits) >= 2 and all(int(part.probabilities.argmax()) == 1 for part in digits)
