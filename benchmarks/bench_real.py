"""
How well does predict.py read real handwriting by writers who are not MNIST's?

    python benchmarks/bench_real.py --weights mnist_cnn.pt          # 3823 digits, twice
    python benchmarks/bench_real.py --keep real_images               # keep the pictures to look at

The digits are UCI optdigits (data/optdigits/, 30 writers, written on forms and scanned), which
come as 8x8 grids of ink counts. Each is enlarged smoothly (bicubic) to a 96x96 scan, dark ink on
white paper, and read twice through predict_user_input: once with a white margin around the digit
(as most scans and photos have) and once with the digit filling the picture, its strokes touching
the edges (as a tightly cropped photo gives). Prints a markdown table.

    python benchmarks/bench_real.py --numbers 300                    # whole numbers instead

--numbers N writes N numbers of each kind from these digits, 3-5 digits each, and reads them with
predict_number: *spaced*, gaps of 5-60% of the digit height; *touching*, strokes crossing by up
to 6% of the height or standing up to 3% apart, row by row, as bench_numbers.py's tight kind;
by cutting alone and, where the number reader is there (--reader, default number_reader.pt if it
exists), with it too, on the same pictures.
"""
import argparse
import os
import platform
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import predict  # noqa: E402  (the repo root is only on the path once the lines above ran)

DATA = os.path.join(REPO, "data", "optdigits", "optdigits_train.npz")
SIDE = 96  # the digit's picture, in pixels
MARGIN = 24  # white border of the "margin" variant, on each side


def scan(grid, margin):
    """The 8x8 grid of ink levels (bright ink on 0) as a grey scan: dark ink on white paper."""
    ink = Image.fromarray(grid.astype(np.uint8)).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    paper = Image.new("L", (SIDE + 2 * margin, SIDE + 2 * margin), 255)
    paper.paste(Image.fromarray(255 - np.asarray(ink)), (margin, margin))
    return paper


def number_scan(grids, rng, touching):
    """The 8x8 grids written side by side as one number, on a drifting baseline with a slant, as
    a scan: dark ink on white paper."""
    from bench_numbers import (
        lay_out,  # only here: tests import this module for scan alone
    )
    height = rng.uniform(50, 100)
    inks = []
    for grid in grids:
        side = int(height * rng.uniform(0.9, 1.1))
        ink = Image.fromarray(grid.astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
        ink = np.asarray(ink, np.float32) / 255
        # Cropped to its ink, as lay_out places each digit by its ink box (every optdigits grid
        # has a cell of at least 223, so every one has some).
        solid = ink > 0.5
        rows, cols = np.flatnonzero(solid.any(1)), np.flatnonzero(solid.any(0))
        inks.append(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    if touching:
        gaps = [rng.uniform(-0.06, 0.03) * height for _ in grids[1:]]
    else:
        gaps = [rng.uniform(0.05, 0.6) * height for _ in grids[1:]]
    ink = lay_out(inks, gaps, [len(i) for i in inks], rng, rng.uniform(-0.15, 0.15), touching)
    return Image.fromarray(np.round(255 * (1 - 0.9 * ink)).astype(np.uint8))


def read_numbers(model, images, labels, count, seed, root, root_kept=False, reader=None):
    """(kind, how read, whole-number accuracy, per-digit accuracy) for count numbers of each kind,
    by cutting alone and, given a number reader, with it."""
    from bench_numbers import digits_right, read_number
    ways = [("cutting alone", None)] + ([("with the reader", reader)] if reader is not None else [])
    rows = []
    for k, kind in enumerate(("spaced", "touching")):
        folder = os.path.join(root, kind)
        os.makedirs(folder, exist_ok=True)
        whole, right = [0] * len(ways), [0] * len(ways)
        digits_total = 0
        for n in range(count):
            rng = np.random.default_rng([seed, k, n])
            picked = rng.choice(len(images), size=int(rng.integers(3, 6)), replace=False)
            truth = "".join(str(labels[i]) for i in picked)
            path = os.path.join(folder, f"{n:04d}_{truth}.png")
            number_scan([images[i] for i in picked], rng, kind == "touching").save(path)
            digits_total += len(truth)
            for w, (way, way_reader) in enumerate(ways):
                read = read_number(model, path, way_reader)
                whole[w] += read == truth
                right[w] += digits_right(read, truth)
                if read != truth and root_kept:
                    print(f"  {os.path.basename(path)} ({way}): read {read}", file=sys.stderr)
        for w, (way, _) in enumerate(ways):
            rows.append((f"{kind} | {way}", 100 * whole[w] / count, 100 * right[w] / digits_total))
            print(f"{kind}, {way}: whole numbers {rows[-1][1]:.1f}%, digits {rows[-1][2]:.1f}%",
                  file=sys.stderr, flush=True)
    return rows


def read_digits(model, images, labels, root):
    """(variant, accuracy) with a margin and without, each digit read by predict_user_input."""
    rows = []
    for variant, margin in (("margin", MARGIN), ("no margin", 0)):
        folder = os.path.join(root, variant.replace(" ", "_"))
        os.makedirs(folder, exist_ok=True)
        right = failed = 0
        confusion = np.zeros((10, 10), np.int64)
        for n, (grid, label) in enumerate(zip(images, labels)):
            path = os.path.join(folder, f"{n:05d}_{label}.png")
            scan(grid, margin).save(path)
            try:
                digit = predict.predict_user_input(model, path)
            except predict.PredictError:
                failed += 1
                continue
            right += digit == label
            confusion[label, digit] += 1
        rows.append((variant, 100 * right / len(labels)))
        worst = sorted(((confusion[t, p], t, p) for t in range(10) for p in range(10) if t != p),
                       reverse=True)[:3]
        print(f"{variant}: {100 * right / len(labels):.1f}%, no digit found {failed}; "
              f"commonest mistakes: " + ", ".join(f"{t} read as {p} ({c})" for c, t, p in worst),
              file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=os.path.join(REPO, "mnist_cnn.pt"),
                        help="weights to measure (default: mnist_cnn.pt)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N digits; with --numbers, the digits numbers are made of "
                             "(default: all 3823)")
    parser.add_argument("--keep", metavar="DIR",
                        help="write the pictures here and keep them (default: a temporary folder)")
    parser.add_argument("--numbers", type=int, metavar="N",
                        help="read N numbers of each kind instead of single digits (default: off)")
    parser.add_argument("--reader", help="with --numbers, the number reader to measure beside "
                        "cutting alone (default: number_reader.pt if it exists)")
    parser.add_argument("--seed", type=int, default=0,
                        help="picks the digits and layout of --numbers (default: 0)")
    args = parser.parse_args(argv)
    if args.numbers is not None and args.numbers < 1:
        parser.error("--numbers must be at least 1")
    if args.limit is not None and args.limit < (5 if args.numbers else 1):
        parser.error("--limit must be at least 1, and at least 5 with --numbers")
    if args.seed < 0:
        parser.error("--seed must not be negative")
    try:
        model = predict.load_model(args.weights)
        default_reader = os.path.join(REPO, predict.DEFAULT_READER)
        reader_path = args.reader or (default_reader if os.path.exists(default_reader) else None)
        reader = predict.load_reader(reader_path) if reader_path and args.numbers else None
    except predict.PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    data = np.load(DATA)
    images, labels = data["images"][:args.limit], data["labels"][:args.limit]

    tmp = None if args.keep else tempfile.TemporaryDirectory()
    root = args.keep or tmp.name
    try:
        if args.numbers:
            rows = read_numbers(model, images, labels, args.numbers, args.seed, root, bool(args.keep), reader)
        else:
            rows = read_digits(model, images, labels, root)
    finally:
        if tmp:
            tmp.cleanup()

    what = (f"{args.numbers} numbers of each kind from {len(labels)} optdigits digits, seed {args.seed}"
            if args.numbers else f"{len(labels)} optdigits digits")
    if reader is not None:
        what += f", number reader {os.path.relpath(reader_path)}"
    import torch  # for its version alone: tests draw this file's scans where torch is not installed
    print(f"\n{what} (30 writers), weights {os.path.relpath(args.weights)}; "
          f"{platform.machine()} CPU, torch {torch.__version__}\n")
    if args.numbers:
        print("| kind | read | whole number | per digit |\n|---|---|---:|---:|")
    else:
        print("| picture | predict.py |\n|---|---:|")
    for row in rows:
        print("| " + " | ".join([row[0]] + [f"{x:.1f}%" for x in row[1:]]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
