"""
Does predict.py say "not a digit" where there is none, and still read the digits? Are its
probabilities calibrated?

    python benchmarks/bench_nondigits.py                        # 200 pictures per kind
    python benchmarks/bench_nondigits.py --per-kind 50          # quicker
    python benchmarks/bench_nondigits.py --weights other.pt --keep nondigit_images

Every picture is made from --seed alone, so every run reads the same pictures. Read through
predict.read_digit, as `python predict.py PICTURE` reads them; a picture is declined when
read_digit says it holds no digit or raises NoDigitError (nothing to read). Prints markdown tables:
- not digits: per kind (benchmarks/nondigit_kinds.py: kinds no training run or threshold ever
  sees; and the kinds training draws, drawn anew), as a phone photo and on a canvas, the share
  declined;
- digits: the MNIST test set as it is, bench_predict's kinds (from MNIST test digits) and real
  handwriting by other writers (bench_real's scans of UCI optdigits, with a margin and without),
  the share declined, the share read right, the share whose likeliest digit is right whether
  declined or not, and the expected calibration error (ECE, 15 bins) of the probabilities;
- numbers beside words ("82 km"): the share that read_number_beside_word reads as the digits
  alone.
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import predict  # noqa: E402  (the repo root is only on the path once the lines above ran)
from bench_numbers import lay_out  # noqa: E402
from bench_predict import KINDS as DIGIT_KINDS  # noqa: E402
from bench_predict import load_mnist_test, make_image, written  # noqa: E402
from bench_real import DATA as REAL_DIGITS  # noqa: E402
from bench_real import MARGIN, scan  # noqa: E402
from nondigit_kinds import HELD_OUT_KINDS, picture, resized  # noqa: E402

from reading.models import predict_batch  # noqa: E402
from reading.verdict import why_not_a_digit  # noqa: E402
from training.calibration import expected_calibration_error  # noqa: E402
from training.nondigits import TRAIN_KINDS, glyph, warp  # noqa: E402

STYLES = ["photo", "canvas"]
WORDS = ["km", "kWh", "mph", "ML", "kg", "cm", "EUR", "m", "h", "min"]


def write_pictures(folder, count, make, seed, key):
    """count pictures, each from make(rng) -> (bytes, extension), rng drawn from (seed, key, n);
    returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for n in range(count):
        data, ext = make(np.random.default_rng([seed, *key, n]))
        paths.append(os.path.join(folder, f"{n:05d}{ext}"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    return paths


class Outcome:
    """What read_digit made of a list of pictures: for each, None (declined) or the digit, and the
    ten probabilities where there were any (a picture with nothing to read has none)."""

    def __init__(self, model, paths):
        self.digits, self.probabilities = [], []
        for path in paths:
            try:
                reading = predict.read_digit(model, path)
            except predict.NoDigitError:
                self.digits.append(None)
                self.probabilities.append(None)
                continue
            self.digits.append(reading.digit)
            self.probabilities.append(reading.probabilities)

    def declined(self):
        return 100 * sum(d is None for d in self.digits) / len(self.digits)

    def digit_figures(self, labels):
        """(% declined, % read right, % whose likeliest digit is right, ECE %)."""
        right = sum(d == t for d, t in zip(self.digits, labels))
        probs = [(p, t) for p, t in zip(self.probabilities, labels) if p is not None]
        likeliest = sum(int(np.argmax(p)) == t for p, t in probs)
        ece = expected_calibration_error([p for p, _ in probs], [t for _, t in probs])
        n = len(labels)
        return self.declined(), 100 * right / n, 100 * likeliest / n, 100 * ece


def nondigit_rows(model, root, args):
    """(kind, style, % declined) for every kind that is not a digit, held out and trained."""
    rows = []
    kinds = [(name, make, "held out") for name, make in HELD_OUT_KINDS.items()]
    kinds += [(name, make, "trained, drawn anew") for name, make in TRAIN_KINDS.items()]
    for k, (name, make, which) in enumerate(kinds):
        for s, style in enumerate(STYLES):
            paths = write_pictures(os.path.join(root, f"{name}-{style}"), args.per_kind,
                                   lambda rng: picture(make(rng), style, rng), args.seed, (1, k, s))
            rows.append((name, which, style, Outcome(model, paths).declined()))
            print(f"{name} ({style}): {rows[-1][-1]:.1f}% declined", file=sys.stderr, flush=True)
    return rows


def mnist_row(model, data_dir):
    """The MNIST test set as it is: its normalised images read in batches, as read_digit would."""
    from training.mnist_data import load_mnist
    images, labels = load_mnist(data_dir, train=False)
    probs = torch.cat([predict_batch(model, images[i:i + 1000]) for i in range(0, len(images), 1000)])
    declined = [why_not_a_digit(p.tolist()) is not None for p in probs]
    likeliest = probs.argmax(1) == labels
    right = likeliest & ~torch.tensor(declined)
    n = len(labels)
    return ("MNIST test set (10000)", 100 * sum(declined) / n, 100 * float(right.sum()) / n,
            100 * float(likeliest.sum()) / n, 100 * expected_calibration_error(probs, labels))


def digit_rows(model, root, args):
    """(kind, % declined, % right, % likeliest right, ECE %) for MNIST, bench_predict's kinds and
    real handwriting."""
    rows = [mnist_row(model, args.data_dir)]
    images, labels = load_mnist_test(args.data_dir)
    picked = np.random.default_rng(args.seed).permutation(len(images))[:args.per_kind]
    for k, kind in enumerate(DIGIT_KINDS):
        paths = write_pictures(os.path.join(root, kind), len(picked),
                               lambda rng, n=iter(picked): make_image(kind, images[next(n)], rng), args.seed, (2, k))
        rows.append((kind, *Outcome(model, paths).digit_figures(labels[picked].tolist())))
        print(f"{kind}: {rows[-1][1:]}", file=sys.stderr, flush=True)
    real = np.load(REAL_DIGITS)
    order = np.random.default_rng(args.seed).permutation(len(real["labels"]))[:2 * args.per_kind]
    for margin in (MARGIN, 0):
        folder = os.path.join(root, f"real-{margin}")
        os.makedirs(folder, exist_ok=True)
        paths = []
        for i in order:
            paths.append(os.path.join(folder, f"{i:05d}.png"))
            scan(real["images"][i], margin).save(paths[-1])
        name = f"real handwriting, {'margin' if margin else 'no margin'}"
        rows.append((name, *Outcome(model, paths).digit_figures(real["labels"][order].tolist())))
        print(f"{name}: {rows[-1][1:]}", file=sys.stderr, flush=True)
    return rows


def number_beside_word(digits28, word, rng):
    """(file bytes, extension): a phone photo of a number written from MNIST digits followed (or
    preceded, for EUR) by a word or unit written in a bent font, a gap apart."""
    height = int(rng.uniform(40, 100))
    inks = [written(d, int(height * rng.uniform(0.9, 1.1))) for d in digits28]
    lower = word.islower()
    word_ink = resized(warp(glyph(word, "DejaVuSans.ttf", rng, side=48 * len(word)), rng, amount=0.03),
                       int(height * (0.65 if lower else 0.95)))
    inks = [word_ink] + inks if word == "EUR" else inks + [word_ink]
    gaps = [rng.uniform(0.1, 0.5) * height for _ in inks[1:]]
    ink = lay_out(inks, gaps, [len(i) for i in inks], rng, rng.uniform(-0.1, 0.1))
    return picture(ink, "photo", rng)


def read_number_beside_word(model, path):
    """The number predict_number reads in a picture of a number beside a word: the digits alone
    once predict_number leaves out the marks that are not digits."""
    try:
        return predict.predict_number(model, path)
    except predict.PredictError:
        return ""


def numbers_row(model, root, args):
    """% of numbers beside words read as their digits alone."""
    images, labels = load_mnist_test(args.data_dir)
    rng = np.random.default_rng([args.seed, 3])
    cases = [(rng.choice(len(images), rng.integers(1, 5)), WORDS[i % len(WORDS)]) for i in range(args.per_kind)]
    pending = iter(cases)

    def make(r):
        idx, word = next(pending)
        return number_beside_word(images[idx], word, r)
    paths = write_pictures(os.path.join(root, "numbers"), len(cases), make, args.seed, (3,))
    right = sum(read_number_beside_word(model, path) == "".join(str(labels[i]) for i in idx)
                for path, (idx, _) in zip(paths, cases))
    return 100 * right / len(cases)


def print_tables(args, nondigits, digits, numbers, seconds):
    print(f"\n{args.per_kind} pictures per kind and style, seed {args.seed}, weights "
          f"{os.path.relpath(args.weights)} (temperature {args.temperature:.3f}); {platform.machine()} CPU, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, {seconds:.0f} s\n")
    print("| not a digit | kind | photo: declined | canvas: declined |")
    print("|---|---|---:|---:|")
    by_kind = {}
    for name, which, style, declined in nondigits:
        by_kind.setdefault((name, which), {})[style] = declined
    for (name, which), shares in by_kind.items():
        print(f"| {name} | {which} | {shares['photo']:.1f}% | {shares['canvas']:.1f}% |")
    print("\n| digits | declined | read right | likeliest right | ECE |")
    print("|---|---:|---:|---:|---:|")
    for name, declined, right, likeliest, ece in digits:
        print(f"| {name} | {declined:.1f}% | {right:.1f}% | {likeliest:.1f}% | {ece:.2f}% |")
    print(f"\nNumbers beside words read as their digits alone: {numbers:.1f}%")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=os.path.join(REPO, "mnist_cnn.pt"),
                        help="weights to measure (default: mnist_cnn.pt)")
    parser.add_argument("--per-kind", type=int, default=200, help="pictures per kind and style (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="picks the pictures (default: 0)")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "data"), help="where MNIST is (default: data/)")
    parser.add_argument("--keep", metavar="DIR", help="write the pictures here and keep them (default: a "
                                                      "temporary folder)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: nondigits, digits, "
                                                   "numbers (default: none)")
    args = parser.parse_args(argv)
    if args.per_kind < 1:
        parser.error(f"--per-kind must be at least 1, got {args.per_kind}")
    try:
        args.model = predict.load_model(args.weights)
    except predict.PredictError as error:
        parser.error(str(error))
    return args


def main(argv=None):
    args = parse_args(argv)
    model = args.model
    args.temperature = model.temperature
    skip = set(args.skip.split(","))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        nondigits = [] if "nondigits" in skip else nondigit_rows(model, root, args)
        digits = [] if "digits" in skip else digit_rows(model, root, args)
        numbers = float("nan") if "numbers" in skip else numbers_row(model, root, args)
    print_tables(args, nondigits, digits, numbers, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
