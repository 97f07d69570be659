"""
How well does predict.py read real handwriting by writers who are not MNIST's?

    python benchmarks/bench_real.py --weights mnist_cnn.pt          # 3823 digits, twice; about a minute
    python benchmarks/bench_real.py --keep real_images               # keep the pictures to look at

The digits are UCI optdigits (data/optdigits/, 30 writers, written on forms and scanned), which
come as 8x8 grids of ink counts. Each is enlarged smoothly (bicubic) to a 96x96 scan, dark ink on
white paper, and read twice through predict_user_input: once with a white margin around the digit
(as most scans and photos have) and once with the digit filling the picture, its strokes touching
the edges (as a tightly cropped photo gives). Prints a markdown table.
"""
import argparse
import os
import platform
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import predict  # noqa: E402  (the repo root is only on the path once the line above ran)

DATA = os.path.join(REPO, "data", "optdigits", "optdigits_train.npz")
SIDE = 96  # the digit's picture, in pixels
MARGIN = 24  # white border of the "margin" variant, on each side


def scan(grid, margin):
    """The 8x8 grid of ink levels (bright ink on 0) as a grey scan: dark ink on white paper."""
    ink = Image.fromarray(grid.astype(np.uint8)).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    paper = Image.new("L", (SIDE + 2 * margin, SIDE + 2 * margin), 255)
    paper.paste(Image.fromarray(255 - np.asarray(ink)), (margin, margin))
    return paper


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=os.path.join(REPO, "mnist_cnn.pt"),
                        help="weights to measure (default: mnist_cnn.pt)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N digits (default: all 3823)")
    parser.add_argument("--keep", metavar="DIR", help="write the pictures here and keep them")
    args = parser.parse_args(argv)
    try:
        model = predict.load_model(args.weights)
    except predict.PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    data = np.load(DATA)
    images, labels = data["images"][:args.limit], data["labels"][:args.limit]

    tmp = None if args.keep else tempfile.TemporaryDirectory()
    root = args.keep or tmp.name
    rows = []
    try:
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
            rows.append((variant, 100 * right / len(labels), failed))
            worst = sorted(((confusion[t, p], t, p) for t in range(10) for p in range(10) if t != p),
                           reverse=True)[:3]
            print(f"{variant}: {100 * right / len(labels):.1f}%, no digit found {failed}; "
                  f"commonest mistakes: " + ", ".join(f"{t} read as {p} ({c})" for c, t, p in worst),
                  file=sys.stderr, flush=True)
    finally:
        if tmp:
            tmp.cleanup()

    print(f"\n{len(labels)} optdigits digits (30 writers), weights {os.path.relpath(args.weights)}; "
          f"{platform.machine()} CPU, torch {torch.__version__}\n")
    print("| picture | predict.py |")
    print("|---|---:|")
    for variant, accuracy, failed in rows:
        print(f"| {variant} | {accuracy:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
