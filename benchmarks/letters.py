"""Letters, units and signs written by hand, for the benchmarks' numbers beside words: each
character a few pen strokes (polylines in a box whose top is the top of a capital and whose
baseline is at 1; lowercase letters stand from 0.45), drawn with a jittered hand, a slant and a
pen of MNIST's width, at the size of the digits beside them.
"""
import numpy as np
from bench_predict import enlarge  # benchmarks/, the script's own folder, is on sys.path
from PIL import Image, ImageDraw, ImageFilter


def _ring(cx, cy, rx, ry, start=0.0, stop=2 * np.pi, n=12):
    return [(cx + rx * np.cos(t), cy + ry * np.sin(t)) for t in np.linspace(start, stop, n)]


ARCH = [(0, 0.6), (0.15, 0.46), (0.35, 0.47), (0.45, 0.6), (0.45, 1)]
STROKES = {
    "k": [[(0, 0), (0, 1)], [(0.45, 0.45), (0.03, 0.75), (0.48, 1)]],
    "m": [[(0, 0.45), (0, 1)], [(0, 0.6), (0.1, 0.47), (0.22, 0.45), (0.3, 0.55), (0.3, 1)],
          [(0.3, 0.55), (0.4, 0.46), (0.52, 0.45), (0.6, 0.55), (0.6, 1)]],
    "W": [[(0, 0), (0.2, 1), (0.4, 0.3), (0.6, 1), (0.8, 0)]],
    "h": [[(0, 0), (0, 1)], ARCH],
    "n": [[(0, 0.45), (0, 1)], ARCH],
    "p": [[(0, 0.45), (0, 1.35)], [(0, 0.55), (0.2, 0.45), (0.4, 0.55), (0.45, 0.72), (0.38, 0.9), (0.2, 0.97),
                                   (0, 0.9)]],
    "M": [[(0, 1), (0.05, 0), (0.35, 0.7), (0.65, 0), (0.7, 1)]],
    "L": [[(0, 0), (0, 1), (0.5, 1)]],
    "c": [_ring(0.22, 0.725, 0.22, 0.275, -0.75, -5.5)],
    "i": [[(0, 0.45), (0, 1)], [(0, 0.27), (0.02, 0.27)]],
    "H": [[(0, 0), (0, 1)], [(0.55, 0), (0.55, 1)], [(0, 0.5), (0.55, 0.5)]],
    "V": [[(0, 0), (0.3, 1), (0.6, 0)]],
    "A": [[(0, 1), (0.3, 0), (0.6, 1)], [(0.12, 0.62), (0.48, 0.62)]],
    "f": [[(0.4, 0.05), (0.25, 0), (0.12, 0.1), (0.12, 1)], [(0, 0.45), (0.35, 0.45)]],
    "t": [[(0.15, 0.1), (0.15, 0.9), (0.25, 1), (0.38, 0.95)], [(0, 0.42), (0.35, 0.42)]],
    "d": [[(0.45, 0), (0.45, 1)], _ring(0.225, 0.725, 0.225, 0.275, -1.2, -5.1)],
    "$": [[(0.45, 0.22), (0.3, 0.12), (0.1, 0.15), (0.05, 0.32), (0.25, 0.48), (0.45, 0.62), (0.42, 0.82),
           (0.22, 0.9), (0.02, 0.8)], [(0.23, 0), (0.23, 1)]],
    "€": [_ring(0.4, 0.5, 0.4, 0.5, -0.9, -5.4), [(0, 0.42), (0.45, 0.42)], [(0, 0.6), (0.45, 0.6)]],
    "#": [[(0.25, 0.05), (0.15, 0.95)], [(0.55, 0.05), (0.45, 0.95)], [(0, 0.35), (0.7, 0.35)],
          [(0, 0.65), (0.7, 0.65)]],
    "%": [[(0.05, 1), (0.6, 0)], _ring(0.12, 0.15, 0.1, 0.14), _ring(0.52, 0.85, 0.1, 0.14)],
}

# Words and signs written after a number, and signs written before one.
AFTER = ["km", "kWh", "mph", "ML", "cm", "mm", "min", "kW", "MW", "mV", "V", "A", "mA", "ft", "h", "m", "%",
         "Wh", "dL", "mL", "kn", "W"]
BEFORE = ["$", "€", "#"]


def letter_ink(char, height, rng):
    """The character written by hand, as ink levels in [0, 1], `height` pixels from the top of a
    capital to the baseline (so a lowercase letter's ink is about half as tall)."""
    unit, pen = 70.0, rng.uniform(8, 12)
    slant = rng.uniform(-0.25, 0.25)
    widen = rng.uniform(0.85, 1.15)
    field = Image.new("L", (112, 112), 0)
    draw = ImageDraw.Draw(field)
    points = [p for stroke in STROKES[char] for p in stroke]
    top = min(y for _, y in points)
    extent = max(y for _, y in points) - top
    for stroke in STROKES[char]:
        xy = [((x * widen + slant * (1 - y)) * unit + 14 + rng.normal(0, 1.8),
               (y - top) * unit + 10 + rng.normal(0, 1.8)) for x, y in stroke]
        draw.line(xy, fill=255, width=int(round(pen)), joint="curve")
    blurred = field.filter(ImageFilter.GaussianBlur(1.5))
    return enlarge(np.asarray(blurred, np.float32) / 255, max(4, int(round(height * extent))))


def word_inks(word, height, rng):
    """The ink of each character of word, in order (see letter_ink)."""
    return [letter_ink(char, height, rng) for char in word]
