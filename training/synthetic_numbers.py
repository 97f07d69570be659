"""Numbers for the number reader to learn from, written from MNIST digits.
"""
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image
from scipy import ndimage

from reading.digit_input import fit_line, resize


def digit_ink(image, height, rng):
    """One MNIST digit (uint8 28x28) as ink levels in [0, 1], cropped to its ink, scaled to
    height rows, its width by up to 15% either way, its strokes sometimes widened or thinned."""
    ink = image.astype(np.float32) / 255
    rows, cols = np.flatnonzero(ink.max(1) > 0.1), np.flatnonzero(ink.max(0) > 0.1)
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    width = max(2, round(ink.shape[1] * height / ink.shape[0] * rng.uniform(0.85, 1.15)))
    ink = np.clip(resize(ink, width, height), 0, 1)
    pen = rng.random()
    if pen < 0.25:
        ink = ndimage.grey_dilation(ink, size=(int(rng.integers(2, 5)),) * 2)
    elif pen < 0.4:
        ink = ndimage.grey_erosion(ink, size=(2, 2))
    return ink


def write_number(inks, rng):
    """The digits' ink side by side, on a baseline that drifts and jitters, each gap either
    touching (the nearest strokes, row by row, from 10% of the height into each other to 6%
    apart) or between ink boxes (from 15% overlap to 70% of the height apart); then the whole
    row sheared by a common slant of up to 17 degrees. Ink levels in [0, 1]."""
    n = len(inks)
    height = max(ink.shape[0] for ink in inks)
    drift = rng.uniform(-0.15, 0.15) * height
    canvas = np.zeros((5 * height, sum(ink.shape[1] for ink in inks) + 2 * height + int(0.8 * height * n)),
                      np.float32)
    right = height  # where the ink box of the digits so far ends
    for k, ink in enumerate(inks):
        solid = ink > 0.5
        base = 3 * height + drift * k / max(n - 1, 1) + rng.normal(0, 0.04) * height
        top = int(round(base - ink.shape[0]))
        left = right
        if k > 0 and rng.random() < 0.5:
            so_far = canvas[top:top + ink.shape[0]] > 0.5
            both = solid.any(1) & so_far.any(1)
            gap = rng.uniform(-0.1, 0.06) * height
            if both.any():
                last = so_far.shape[1] - 1 - np.argmax(so_far[:, ::-1], axis=1)
                first = np.argmax(solid, axis=1)
                left = int(round(gap + (last[both] - first[both]).max())) + 1
            else:
                left = int(round(right + gap))
        elif k > 0:
            left = int(round(right + rng.uniform(-0.15, 0.7) * height))
        left = max(left, 0)
        region = canvas[top:top + ink.shape[0], left:left + ink.shape[1]]
        np.maximum(region, ink[:region.shape[0], :region.shape[1]], out=region)
        right = max(right, left + ink.shape[1])
    slant = rng.uniform(-0.3, 0.3)
    img = Image.fromarray(canvas, "F")
    sheared = img.transform(img.size, Image.Transform.AFFINE, (1, slant, -slant * canvas.shape[0] / 2, 0, 1, 0),
                            Image.Resampling.BILINEAR)
    return np.clip(np.asarray(sheared), 0, 1)


def synthetic_numbers(images, labels, count, seed):
    """count numbers of 1-7 digits drawn from images (uint8 N x 28 x 28) with their labels, as
    (lines: 28 x W float16 arrays, digits: lists of ints). The same seed gives the same numbers."""
    rng = np.random.default_rng(seed)
    lines, digits = [], []
    for _ in range(count):
        picked = rng.choice(len(images), int(rng.integers(1, 8)))
        height = 40 * rng.uniform(0.8, 1.2)
        inks = [digit_ink(images[i], int(height * rng.uniform(0.85, 1.15)), rng) for i in picked]
        ink = write_number(inks, rng)
        if rng.random() < 0.5:  # pen-sharp edges, as a photo of ink has, besides MNIST's soft ones
            ink = np.clip((ink - 0.5) * rng.uniform(2, 6) + 0.5, 0, 1)
        lines.append(fit_line(ink).astype(np.float16))
        digits.append([int(labels[i]) for i in picked])
    return lines, digits


CHUNK = 2000
# Each worker process's copy of the MNIST digits, set once by _share when it starts: passed with
# every chunk instead, the 47 MB of training images would be pickled 40 times.
_digits = None


def _share(images, labels):
    global _digits
    _digits = images, labels


def _write_chunk(count, seed):
    return synthetic_numbers(*_digits, count, seed)


def synthetic_numbers_parallel(images, labels, count, seed, workers):
    """synthetic_numbers in chunks of CHUNK, each with its own seed, spread over worker processes:
    the same numbers whatever the number of workers."""
    counts = [min(CHUNK, count - start) for start in range(0, count, CHUNK)]
    seeds = [(seed, k) for k in range(len(counts))]
    lines, digits = [], []
    with ProcessPoolExecutor(workers, initializer=_share, initargs=(images, labels)) as pool:
        for chunk_lines, chunk_digits in pool.map(_write_chunk, counts, seeds):
            lines += chunk_lines
            digits += chunk_digits
    return lines, digits
