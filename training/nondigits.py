"""Pictures that are not digits, for the model to learn to give no digit to (outlier exposure):
each is trained towards the uniform answer over the ten digits.

The kinds trained on (TRAIN_KINDS) are drawn here; benchmarks/bench_nondigits.py measures on
other kinds it draws itself (other fonts and alphabets, clothes, doodles, textures), which no
training run and no threshold ever sees. Marks that people write as digits are never drawn as
non-digits: no O, I, l, S, Z, B, G, q..., no upright bar, no plain ring.
"""
import os
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from reading.digit_input import to_mnist

# Latin letters that do not look like a digit in anyone's hand: O o Q D (0), I i l j J T (1, 7),
# Z z (2), S s (5), B (8), b G (6), g q (9) are left out.
LETTERS = "ACEFHKLMNPRUVWXYacdefhkmnprtuvwxy"
TRAIN_FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
               "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf"]
SIDE = 96  # the canvas each mark is drawn on, in pixels


@lru_cache(maxsize=64)
def font(name, size):
    """A TrueType font from matplotlib's bundled fonts (there on every install of this project)."""
    import matplotlib
    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name), size)


def glyph(text, font_name, rng, side=SIDE):
    """text drawn in the font, about half the canvas tall, as ink levels (1 on 0)."""
    canvas = Image.new("L", (side, side))
    size = int(side * rng.uniform(0.4, 0.6))
    ImageDraw.Draw(canvas).text((side / 2, side / 2), text, fill=255, font=font(font_name, size), anchor="mm")
    return np.asarray(canvas, np.float32) / 255


def warp(ink, rng, amount=0.06, tilt=15):
    """The ink turned, sheared and stretched at random, then bent by a smooth random displacement,
    as a hand bends what a font draws straight."""
    h, w = ink.shape
    angle = np.radians(rng.uniform(-tilt, tilt))
    shear, stretch = rng.uniform(-0.3, 0.3), rng.uniform(0.75, 1.3)
    cos, sin = np.cos(angle), np.sin(angle)
    matrix = np.array([[cos * stretch, -sin + shear], [sin, cos]])
    centre = np.array([h, w]) / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    smooth = [ndimage.gaussian_filter(rng.normal(size=(h, w)), h / 8) for _ in range(2)]
    smooth = [s / max(np.abs(s).max(), 1e-6) * amount * h for s in smooth]
    coords = np.stack([yy - centre[0], xx - centre[1]])
    src = np.tensordot(matrix, coords, 1) + centre[:, None, None]
    return ndimage.map_coordinates(ink, [src[0] + smooth[0], src[1] + smooth[1]], order=1).astype(np.float32)


def pen(points, width, side=SIDE, closed=False, fill=False):
    """Strokes through each list of (x, y) points with a round pen of width pixels (or the shapes
    they enclose filled), drawn at 2x and shrunk for smooth edges."""
    canvas = Image.new("L", (2 * side, 2 * side))
    draw = ImageDraw.Draw(canvas)
    for line in points:
        line = [(2 * x, 2 * y) for x, y in line]
        if fill:
            draw.polygon(line, fill=255)
            continue
        if closed:
            line = line + line[:1]
        draw.line(line, fill=255, width=max(2, round(2 * width)), joint="curve")
        r = width
        for x, y in (line[0], line[-1]):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return np.asarray(canvas.resize((side, side), Image.Resampling.BOX), np.float32) / 255


def smooth_path(points, steps=12):
    """A Catmull-Rom curve through the points, as a list of (x, y)."""
    p = np.asarray(points, np.float64)
    p = np.vstack([p[:1], p, p[-1:]])
    t = np.linspace(0, 1, steps, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        a, b, c, d = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.extend(0.5 * (2 * b + (c - a) * t + (2 * a - 5 * b + 4 * c - d) * t ** 2
                          + (3 * b - a - 3 * c + d) * t ** 3))
    out.append(p[-2])
    return [tuple(q) for q in out]


def _width(rng, side=SIDE):
    return side * rng.uniform(0.03, 0.1)


def letters(rng):
    """One or two Latin letters in a DejaVu font, bent as handwriting bends them."""
    text = "".join(rng.choice(list(LETTERS), size=1 if rng.random() < 0.75 else 2))
    return warp(glyph(text, TRAIN_FONTS[rng.integers(len(TRAIN_FONTS))], rng), rng)


def scribbles(rng):
    """One to three smooth strokes through random points, zigzags, or a spiral."""
    s, choice = SIDE, rng.random()
    if choice < 0.6:
        strokes = []
        for _ in range(rng.integers(1, 4)):
            n = rng.integers(5, 10)
            strokes.append(smooth_path(rng.uniform(0.15 * s, 0.85 * s, size=(n, 2))))
        return pen(strokes, _width(rng))
    if choice < 0.85:
        n = rng.integers(5, 10)  # fewer turns make a Z, which is how some write 2
        xs = np.linspace(0.15 * s, 0.85 * s, n)
        ys = np.where(np.arange(n) % 2, 0.3 * s, 0.7 * s) + rng.normal(0, 0.05 * s, n)
        return warp(pen([list(zip(xs, ys))], _width(rng)), rng, tilt=180)
    turns = rng.uniform(1.5, 3.5)
    t = np.linspace(0, 2 * np.pi * turns, 120)
    r = 0.38 * s * t / t[-1]
    return pen([list(zip(s / 2 + r * np.cos(t), s / 2 + r * np.sin(t)))], _width(rng) * 0.7)


def _star(rng, s):
    n = rng.integers(5, 9)
    angles = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + rng.uniform(0, np.pi)
    radii = np.where(np.arange(2 * n) % 2, rng.uniform(0.15, 0.25), 0.4) * s
    return [list(zip(s / 2 + radii * np.cos(angles), s / 2 + radii * np.sin(angles)))]


def _heart(rng, s):
    t = np.linspace(0, 2 * np.pi, 80)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [list(zip(s / 2 + x * s / 42, s / 2 + y * s / 42))]


def _arrow(rng, s):
    head = rng.uniform(0.12, 0.25) * s
    shaft = [(0.15 * s, 0.5 * s), (0.85 * s, 0.5 * s)]
    tip = [(0.85 * s - head, 0.5 * s - head), (0.85 * s, 0.5 * s), (0.85 * s - head, 0.5 * s + head)]
    return [shaft, tip]


def _hash(rng, s):
    a, b, lean = 0.35 * s, 0.65 * s, rng.uniform(-0.1, 0.1) * s
    return [[(a + lean, 0.15 * s), (a - lean, 0.85 * s)], [(b + lean, 0.15 * s), (b - lean, 0.85 * s)],
            [(0.15 * s, a), (0.85 * s, a)], [(0.15 * s, b), (0.85 * s, b)]]


def _asterisk(rng, s):
    n = rng.integers(3, 5)
    angles = np.linspace(0, np.pi, n, endpoint=False) + rng.uniform(0, np.pi)
    return [[(s / 2 - 0.35 * s * np.cos(a), s / 2 - 0.35 * s * np.sin(a)),
             (s / 2 + 0.35 * s * np.cos(a), s / 2 + 0.35 * s * np.sin(a))] for a in angles]


def _polygon(rng, s):
    n = rng.choice([3, 4, 4, 5, 6])
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, np.pi)
    return [list(zip(s / 2 + 0.38 * s * np.cos(angles), s / 2 + 0.38 * s * np.sin(angles)))]


def _check(rng, s):
    return [[(0.2 * s, 0.55 * s), (0.4 * s, 0.8 * s), (0.85 * s, 0.2 * s)]]


SHAPES = [_star, _heart, _arrow, _hash, _asterisk, _polygon, _check]


def shapes(rng):
    """A star, a heart, an arrow, a # or an asterisk, a triangle, square or hexagon, a check mark:
    outlined or filled, then warped."""
    s = SIDE
    make = SHAPES[rng.integers(len(SHAPES))]
    lines = make(rng, s)
    closed = make in (_star, _heart, _polygon)
    fill = closed and rng.random() < 0.4
    ink = pen(lines, _width(rng), closed=closed, fill=fill)
    if make in (_arrow, _check):
        # Kept near their own direction, mirrored or not: an upright arrow is a 1 with a flag, a
        # check mark turned over is a 7.
        return warp(ink[:, ::-1] if rng.random() < 0.5 else ink, rng, amount=0.04, tilt=30)
    return warp(ink, rng, amount=0.04, tilt=180)


def blobs(rng):
    """Filled blobs, a cloud of dots, hatching or a grid: marks with area rather than strokes."""
    s, choice = SIDE, rng.random()
    if choice < 0.4:
        field = ndimage.gaussian_filter(rng.normal(size=(s, s)), s / rng.uniform(6, 14))
        yy, xx = np.mgrid[0:s, 0:s] / s - 0.5
        field = field / field.std() - 6 * (yy ** 2 + xx ** 2)
        return (field > np.quantile(field, rng.uniform(0.6, 0.85))).astype(np.float32)
    if choice < 0.65:
        dots = rng.uniform(0.15 * s, 0.85 * s, size=(rng.integers(3, 12), 2))
        return pen([[tuple(d), tuple(d)] for d in dots], s * rng.uniform(0.04, 0.1))
    step = s * rng.uniform(0.1, 0.2)
    lines = [[(0.15 * s + k, 0.15 * s), (0.15 * s + k, 0.85 * s)] for k in np.arange(0, 0.7 * s, step)]
    if choice < 0.85:  # a grid; else hatching
        lines += [[(0.15 * s, 0.15 * s + k), (0.85 * s, 0.15 * s + k)] for k in np.arange(0, 0.7 * s, step)]
    return warp(pen(lines, _width(rng) * 0.6), rng, amount=0.03, tilt=180)


def bars(rng):
    """A dash or an underline, lying within 15 degrees of flat, sometimes doubled (=) or wavy
    (~), or a row of dots (an ellipsis)."""
    s, choice = SIDE, rng.random()
    length = s * rng.uniform(0.5, 0.85)
    x0, y = (s - length) / 2, s / 2
    if choice < 0.5:
        lines = [[(x0, y), (x0 + length, y)]]
    elif choice < 0.7:
        gap = s * rng.uniform(0.08, 0.2)
        lines = [[(x0, y - gap), (x0 + length, y - gap)], [(x0, y + gap), (x0 + length, y + gap)]]
    elif choice < 0.85:
        xs = np.linspace(x0, x0 + length, 40)
        lines = [list(zip(xs, y + s * 0.06 * np.sin(np.linspace(0, rng.uniform(2, 6) * np.pi, 40))))]
    else:
        lines = [[(x, y), (x, y)] for x in np.linspace(x0, x0 + length, rng.integers(3, 6))]
    return warp(pen(lines, s * rng.uniform(0.02, 0.08)), rng, amount=0.02, tilt=15)


TRAIN_KINDS = {"letters": letters, "scribbles": scribbles, "shapes": shapes, "blobs": blobs, "bars": bars}


def model_input(ink):
    """What predict.py makes of a picture holding just this ink: the normalised 1x28x28 tensor."""
    return torch.from_numpy(to_mnist(ink, ink > 0.5))


def nondigit_bank(count, seed, kinds=TRAIN_KINDS):
    """count non-digit pictures as the model reads them (N x 1 x 28 x 28, normalised), the kinds
    taking turns, drawn from seed alone (the same seed, the same pictures)."""
    rng = np.random.default_rng([seed, 24])
    makers = list(kinds.values())
    pictures = []
    while len(pictures) < count:
        ink = makers[len(pictures) % len(makers)](rng)
        if (ink > 0.5).sum() >= 20:  # a mark the reader would not take for a speck
            pictures.append(model_input(ink))
    return torch.stack(pictures)
