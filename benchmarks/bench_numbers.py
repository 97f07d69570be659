"""
How well does predict.py read whole handwritten numbers?

    python benchmarks/bench_numbers.py --weights mnist_cnn.pt        # 200 numbers per kind
    python benchmarks/bench_numbers.py --per-kind 50                 # quicker
    python benchmarks/bench_numbers.py --keep number_images          # keep the pictures to look at
    python benchmarks/bench_numbers.py --reader number_reader.pt     # also with the number reader

Builds numbers from MNIST *test* digits only, deterministically from --seed, writes them to files
and reads them with predict_number. Each digit is drawn with the pen of bench_predict.py (its own
stroke widths, enlarged with sharp edges). Kinds:
  spaced   3-7 digits, gaps between 2% and 80% of the digit height, sizes +-15%, a drifting and
           jittering baseline, a common slant of up to 15 degrees either way; a phone photo of ink
           on paper (tint, lighting gradient, vignetting, blur, noise, JPEG), as bench_predict's
           photo kind
  tight    4-6 digits whose nearest strokes, row by row, cross by up to 6% of the digit height
           (about half MNIST's pen width) or stand up to 3% apart: most touch; the same photo
           style
  canvas   2-5 digits drawn on a transparent canvas (a drawing app's or a web page's export),
           black, white or coloured strokes
  words    1-4 digits beside a unit or a word written by hand after them ("82 km", "1280 kWh",
           "19 mph", "12 ML") or a sign before them ("$", "€", "#"), letters drawn as pen strokes
           (benchmarks/letters.py); the same photo style as spaced. Read right only where the
           number read is its digits alone: the letters are left out
Reports whole-number accuracy (every digit right and no digit missing or extra) and per-digit
accuracy (1 - edit distance / number of digits, so a missed or extra digit counts as an error),
by cutting alone and, where the number reader (number_reader.py) is there, with it, side by side
on the same pictures.
"""
import argparse
import io
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from bench_predict import finish_photo, lighting, load_mnist_test, written  # noqa: E402
from letters import AFTER, BEFORE, word_inks  # noqa: E402

import predict  # noqa: E402  (the repo root is only on the path once the lines above ran)

KINDS = ["spaced", "tight", "canvas", "words"]


def lay_out(digit_inks, gaps, sizes, rng, slant, touching=False):
    """The digits' ink side by side on one canvas, on a baseline that drifts and jitters, then
    the whole line sheared by slant (dx per dy). Each digit starts gaps[i] pixels after the
    previous one: after its ink box ends, or with touching, after the nearest stroke of the ink
    so far in the same rows (negative: the strokes cross). Returns the ink canvas in [0, 1]."""
    height = max(sizes)
    drift = rng.uniform(-0.15, 0.15) * height  # over the whole number
    margin = int(0.6 * height)
    total = sum(ink.shape[1] for ink in digit_inks) + 2 * margin + int(sum(max(g, 0) for g in gaps))
    canvas = np.zeros((3 * height + 2 * margin, total), np.float32)
    right = margin  # where the ink box of the digits so far ends
    for i, ink in enumerate(digit_inks):
        solid = ink > 0.5
        rows = np.flatnonzero(solid.any(1))
        cols = np.flatnonzero(solid.any(0))
        base = margin + 2 * height + drift * i / max(len(digit_inks) - 1, 1) + rng.normal(0, 0.04) * height
        top = int(round(base - rows[-1]))
        if i == 0:
            left = right - cols[0]
        elif touching:
            # The offset that puts this digit's leftmost stroke gaps[i-1] from the ink so far, row
            # by row, where both have ink.
            so_far = canvas[top:top + ink.shape[0]] > 0.5
            both = solid.any(1) & so_far.any(1)
            if both.any():
                last = so_far.shape[1] - 1 - np.argmax(so_far[:, ::-1], axis=1)
                first = np.argmax(solid, axis=1)
                left = int(round(gaps[i - 1] + (last[both] - first[both]).max())) + 1
            else:
                left = int(round(right + gaps[i - 1] - cols[0]))
        else:
            left = int(round(right + gaps[i - 1] - cols[0]))
        region = canvas[top:top + ink.shape[0], left:left + ink.shape[1]]
        np.maximum(region, ink[:region.shape[0], :region.shape[1]], out=region)
        right = max(right, left + cols[-1] + 1)
    rows = np.flatnonzero((canvas > 0).any(1))
    cols = np.flatnonzero((canvas > 0).any(0))
    canvas = canvas[max(rows[0] - margin, 0):rows[-1] + margin,
                    max(cols[0] - margin - int(abs(slant) * height), 0):cols[-1] + margin + int(abs(slant) * height)]
    img = Image.fromarray(np.ascontiguousarray(canvas), mode="F")
    tall = canvas.shape[0]
    # x_in = x_out + slant * (y_out - centre): the tops lean right when slant is negative.
    sheared = img.transform(img.size, Image.Transform.AFFINE,
                            (1, slant, -slant * tall / 2, 0, 1, 0), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(sheared), 0, 1)


def make_number(kind, digits28, rng):
    """(file bytes, extension) of one picture of the number made of the given MNIST digits."""
    n = len(digits28)
    height = rng.uniform(40, 110)
    sizes = [int(height * rng.uniform(0.85, 1.15)) for _ in range(n)]
    inks = [written(d, s) for d, s in zip(digits28, sizes)]
    if kind == "tight":
        # From strokes that cross by about half a pen's width to a hair's breadth apart.
        gaps = [rng.uniform(-0.06, 0.03) * height for _ in range(n - 1)]
    else:
        gaps = [rng.uniform(0.02, 0.8) * height for _ in range(n - 1)]
    slant = rng.uniform(-0.27, 0.27) if kind != "canvas" else rng.uniform(-0.1, 0.1)
    ink = lay_out(inks, gaps, sizes, rng, slant, touching=kind == "tight")
    if kind == "canvas":
        colours = [(0, 0, 0), (255, 255, 255), (30, 60, 200), (200, 30, 30)]
        colour = colours[rng.integers(len(colours))]
        rgba = np.zeros(ink.shape + (4,), np.uint8)
        rgba[..., :3] = np.where(ink[..., None] > 0, colour, 255 * int(rng.integers(2)))
        rgba[..., 3] = np.round(ink * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buf, "PNG")
        return buf.getvalue(), ".png"
    return phone_photo(ink, rng)


def make_words(digits28, rng):
    """(file bytes, extension) of a phone photo of the number made of the given MNIST digits
    with a word or unit written after it, or a sign before it."""
    height = rng.uniform(40, 110)
    sizes = [int(height * rng.uniform(0.85, 1.15)) for _ in digits28]
    inks = [written(d, s) for d, s in zip(digits28, sizes)]
    gaps = [rng.uniform(0.02, 0.5) * height for _ in range(len(digits28) - 1)]
    before = rng.random() < 0.25
    word = (BEFORE if before else AFTER)[rng.integers(len(BEFORE if before else AFTER))]
    letters = word_inks(word, height * rng.uniform(0.85, 1.05), rng)
    spacing = [rng.uniform(0.03, 0.15) * height for _ in range(len(letters) - 1)]
    space = rng.uniform(0.3, 0.8) * height
    if before:
        inks, gaps = letters + inks, spacing + [space] + gaps
    else:
        inks, gaps = inks + letters, gaps + [space] + spacing
    ink = lay_out(inks, gaps, sizes + [int(height)] * len(letters), rng, rng.uniform(-0.2, 0.2))
    return phone_photo(ink, rng)


def phone_photo(ink, rng):
    """(JPEG bytes, ".jpg") of ink (levels in [0, 1]) written on a sheet and photographed."""
    # The ink somewhere on a larger sheet.
    h, w = ink.shape
    sheet = np.zeros((int(h * rng.uniform(1.2, 2.0)), int(w * rng.uniform(1.05, 1.4))), np.float32)
    top, left = rng.integers(0, sheet.shape[0] - h + 1), rng.integers(0, sheet.shape[1] - w + 1)
    sheet[top:top + h, left:left + w] = ink * rng.uniform(0.8, 1.0)
    paper = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.8, 1.0), rng.uniform(0.65, 0.95)])
    pen = np.array([0.1, 0.1, rng.uniform(0.1, 0.45)]) * rng.uniform(0.3, 1.0)
    light = lighting(*sheet.shape, rng, rng.uniform(0.55, 0.8), 1.0)
    rgb = (paper * (1 - sheet[..., None]) + pen * sheet[..., None]) * light[..., None]
    return finish_photo(rgb, rng), ".jpg"


def read_number(model, path, reader=None):
    """What predict_number reads in the picture; "" when it finds nothing (a miss, not a stop)."""
    try:
        return predict.predict_number(model, path, reader)
    except predict.PredictError:
        return ""


def digits_right(read, truth):
    """The digits of truth that read got: its length less the edit distance, so that a missed or
    an extra digit counts as an error."""
    row = list(range(len(truth) + 1))
    for i, ca in enumerate(read, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(truth, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return max(0, len(truth) - row[-1])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=os.path.join(REPO, "mnist_cnn.pt"),
                        help="weights to measure (default: mnist_cnn.pt)")
    parser.add_argument("--reader", help="the number reader to measure beside cutting alone "
                        "(default: number_reader.pt if it exists)")
    parser.add_argument("--per-kind", type=int, default=200, help="numbers per kind (default: 200)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated kinds to run (default: all of them)")
    parser.add_argument("--seed", type=int, default=0, help="picks the digits and their layout (default: 0)")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "data"), help="where MNIST is (default: data/)")
    parser.add_argument("--keep", metavar="DIR",
                        help="write the pictures here and keep them (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.per_kind < 1:
        parser.error("--per-kind must be at least 1")
    if args.seed < 0:
        parser.error("--seed must not be negative")
    args.kinds = args.kinds.split(",")
    for kind in args.kinds:
        if kind not in KINDS:
            parser.error(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    return args


def run_kind(args, kind, folder, images, labels, model, ways):
    """Writes the kind's numbers to folder and reads each every way; a table row per way."""
    os.makedirs(folder, exist_ok=True)
    low, high = {"spaced": (3, 7), "tight": (4, 6), "canvas": (2, 5), "words": (1, 4)}[kind]
    whole, right, seconds = [0] * len(ways), [0] * len(ways), [0.0] * len(ways)
    digits_total = 0
    for n in range(args.per_kind):
        rng = np.random.default_rng([args.seed, KINDS.index(kind), n])
        picked = rng.choice(len(images), size=int(rng.integers(low, high + 1)), replace=False)
        truth = "".join(str(labels[i]) for i in picked)
        digits28 = [images[i] for i in picked]
        data, ext = make_words(digits28, rng) if kind == "words" else make_number(kind, digits28, rng)
        path = os.path.join(folder, f"{n:04d}_{truth}{ext}")
        with open(path, "wb") as f:
            f.write(data)
        digits_total += len(truth)
        for w, (way, way_reader) in enumerate(ways):
            t0 = time.perf_counter()
            read = read_number(model, path, way_reader)
            seconds[w] += time.perf_counter() - t0
            whole[w] += read == truth
            right[w] += digits_right(read, truth)
            if read != truth and args.keep:
                print(f"  {os.path.basename(path)} ({way}): read {read}", file=sys.stderr)
    rows = []
    for w, (way, _) in enumerate(ways):
        rows.append((kind, way, 100 * whole[w] / args.per_kind, 100 * right[w] / digits_total,
                     1000 * seconds[w] / args.per_kind))
        print(f"{kind}, {way}: whole numbers {rows[-1][2]:.1f}%, digits {rows[-1][3]:.1f}%, "
              f"{rows[-1][4]:.0f} ms a picture", file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    try:
        model = predict.load_model(args.weights)
        default_reader = os.path.join(REPO, predict.DEFAULT_READER)
        reader_path = args.reader or (default_reader if os.path.exists(default_reader) else None)
        reader = predict.load_reader(reader_path) if reader_path else None
    except predict.PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    images, labels = load_mnist_test(args.data_dir)
    ways = [("cutting alone", None)] + ([("with the reader", reader)] if reader is not None else [])
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    root = args.keep or tmp.name
    rows = []
    try:
        for kind in args.kinds:
            rows += run_kind(args, kind, os.path.join(root, kind), images, labels, model, ways)
    finally:
        if tmp:
            tmp.cleanup()
    print(f"\n{args.per_kind} numbers per kind from the MNIST test set, seed {args.seed}, weights "
          f"{os.path.relpath(args.weights)}"
          f"{f', number reader {os.path.relpath(reader_path)}' if reader is not None else ''}; "
          f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}\n")
    print("| kind | read | whole number | per digit | ms a picture |")
    print("|---|---|---:|---:|---:|")
    for kind, way, whole, per_digit, ms in rows:
        print(f"| {kind} | {way} | {whole:.1f}% | {per_digit:.1f}% | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
