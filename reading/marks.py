"""Marks that are not digits: what the number splitter (reading/segment.py) leaves out of a number
and says why. A mark is declined either by its shape, where the shape alone rules out every digit
(a long thin horizontal stroke: a dash, an underline, the bar of a 7 before its stem is drawn), or
by reading.verdict.why_not_a_digit on the model's probabilities for it (a letter, a unit, a
currency sign, a scribble): the model decides those, not a shape rule.
"""
from typing import NamedTuple

import numpy as np

from reading.ink import stroke_width


class Mark(NamedTuple):
    """Ink left out of a number: box (x0, y0, x1, y1) in the original picture's pixels, x1 and y1
    exclusive; reason, a short phrase saying why it is not a digit; probabilities, the model's ten
    for it where it was read (None where its shape alone declined it)."""
    box: tuple
    reason: str
    probabilities: list = None


BAR_REASON = "a horizontal stroke, such as a dash or an underline"
UNDERLINE_REASON = "a line wider than any digit, such as an underline"

# A straight stroke's ink, seen along its own axis, is about one pen wide; the wobble of a hand
# drawing a dash adds less than a pen. No digit is one straight stroke near the horizontal (a 1
# is near the vertical), so a stroke this thin, this long and this flat is no digit whatever the
# model would make of it.
BAR_THICKNESS = 2.0  # at most, in pen widths across its axis
BAR_LENGTH = 3.0  # at least, in widths across its axis (a dot or a short blot is not a dash)
BAR_TILT = 0.5  # at most, in rise over run of its axis (about 27 degrees)


def is_bar(piece):
    """Whether a piece of ink (a bool mask, cropped or not) is one straight stroke lying near the
    horizontal: by its second moments, the extent across its main axis is within BAR_THICKNESS
    pen widths, along it at least BAR_LENGTH times that, and the axis tilts at most BAR_TILT."""
    ys, xs = np.nonzero(piece)
    # Such a stroke is always wider than tall, which most pieces of handwriting are not.
    if len(ys) < 3 or np.ptp(xs) <= np.ptp(ys):
        return False
    cov = np.cov(np.stack([xs, ys]).astype(np.float64))
    values, vectors = np.linalg.eigh(cov)  # ascending: across the axis, then along it
    # A uniform bar of length L has variance L^2/12 along it; the same for its thickness.
    across, along = np.sqrt(12 * np.maximum(values, 0)) + 1
    run, rise = np.abs(vectors[:, 1])
    pen = max(stroke_width(piece), 1.0)
    return across <= BAR_THICKNESS * pen and along >= BAR_LENGTH * across and rise <= BAR_TILT * run
