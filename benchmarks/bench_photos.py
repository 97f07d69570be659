"""
How well does predict.py read phone photos with a shadow across the sheet, or written on squared
or lined paper whatever the lines' contrast?

    python benchmarks/bench_photos.py                          # 100 pictures per kind
    python benchmarks/bench_photos.py --before ../main         # beside another checkout's reading
    python benchmarks/bench_photos.py --held-out               # variants the code was not tuned on

Builds phone-style photos of MNIST *test* digits (the pen, paper, lighting, blur, noise and JPEG of
bench_predict.py's photo kind), deterministically from --seed, and reads each kind's single digits
with predict_user_input and numbers with predict_number (whole numbers right). Kinds:
  shadow_hard    a shadow over part of the sheet, 30-60% darker, its edge sharp, straight or bent
  shadow_soft    the same, its edge a ramp 3-12% of the picture wide
  grid_light     squared paper, lines grey 140-230 of 255, 1-2 px, rotated up to 3 degrees
  grid_mid       lines grey 110-190, 1-3 px
  grid_dark      lines grey 60-170, 1-4 px
  lined_mid      lined paper (rules only), lines grey 110-190
  lined_dark     lined paper, lines grey 60-170
  box_dark       a printed box around the digit, dark, 1-4 px, rotated up to 3 degrees
  number_grid    a 3-5 digit number written on dark squared paper, one digit to one or two cells
  number_shadow  a 3-5 digit number half in a hard shadow
--held-out draws other variants, never used to tune the reading: deeper and shallower shadows with
curved (a hand's) outlines, lines rotated 3-6 degrees, wider and narrower spacing, thicker lines,
red, green and violet lines, and another seed.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from bench_numbers import lay_out
from bench_predict import finish_photo, lighting, load_mnist_test, place, written

KINDS = ["shadow_hard", "shadow_soft", "grid_light", "grid_mid", "grid_dark", "lined_mid",
         "lined_dark", "box_dark", "number_grid", "number_shadow"]
LEVELS = {"light": (140, 230), "mid": (110, 190), "dark": (60, 170)}
THICKNESS = {"light": (1.0, 2.0), "mid": (1.0, 3.0), "dark": (1.0, 4.0)}

# What the reading was tuned on, and what it never saw.
TUNED = {"depth": [(0.3, 0.6)], "curve": 0.15, "blob": 0.0, "angle": (0.0, 3.0), "step": (0.25, 0.6),
         "thick_extra": 0.0, "tints": ["grey", "blue"]}
HELD_OUT = {"depth": [(0.2, 0.3), (0.6, 0.7)], "curve": 0.4, "blob": 0.5, "angle": (3.0, 6.0),
            "step": (0.15, 0.25, 0.6, 1.0), "thick_extra": 1.0, "tints": ["red", "green", "violet"]}
TINTS = {"grey": (1.0, 1.0, 1.0), "blue": (0.85, 0.95, 1.15), "red": (1.2, 0.75, 0.75),
         "green": (0.75, 1.1, 0.8), "violet": (1.0, 0.75, 1.15)}

# Reads every picture in a folder with a checkout's own predict.py; run in a child process so
# that another checkout's modules never mix with this one's.
SCORER = """
import json, os, sys
repo, folder, weights, reader = sys.argv[1:5]
sys.path.insert(0, repo)
import predict
model = predict.load_model(weights)
reader = predict.load_reader(reader) if reader else None
out = {}
for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    try:
        if name.startswith("n"):
            out[name] = predict.predict_number(model, path, reader)
        else:
            out[name] = str(predict.predict_user_input(model, path))
    except predict.PredictError:
        out[name] = ""
print(json.dumps(out))
"""


def shadow_field(h, w, rng, soft, v):
    """The light left by a shadow: 1 in the light, 1 - depth in the shadow. Its edge is a line
    through the middle part of the picture, in any direction, bent a little, or (held out, a hand)
    the outline of a large ellipse."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    angle = rng.uniform(0, 2 * np.pi)
    nx, ny = np.cos(angle), np.sin(angle)
    if rng.random() < v["blob"]:
        a, b = rng.uniform(0.3, 0.7, size=2) * max(h, w)
        u, t = (xx - cx) * nx + (yy - cy) * ny, (xx - cx) * -ny + (yy - cy) * nx
        d = (np.sqrt((u / a) ** 2 + (t / b) ** 2) - 1) * min(a, b)
    else:
        d = (xx - cx) * nx + (yy - cy) * ny
        d = d + rng.uniform(-v["curve"], v["curve"]) * ((xx - cx) * -ny + (yy - cy) * nx) ** 2 / max(h, w)
    low, high = v["depth"][rng.integers(len(v["depth"]))]
    depth = rng.uniform(low, high)
    width = rng.uniform(0.03, 0.12) * max(h, w) if soft else rng.uniform(0.5, 2.0)
    return 1 - depth * np.clip(d / width + 0.5, 0, 1)


def spacing(size, rng, v):
    ranges = v["step"]
    k = 2 * rng.integers(len(ranges) // 2)
    return size * rng.uniform(ranges[k], ranges[k + 1])


def distance_to_rule(position, step, rng):
    """Distance to the nearest of a family of rules step apart, at a random offset."""
    return step / 2 - np.abs(np.mod(position - rng.uniform(0, step), step) - step / 2)


def ruling(h, w, size, rng, level, kind, v):
    """Printed lines, anti-aliased (1 on a line): a grid, a lined page's rules or a box around
    the middle of the picture, rotated a few degrees."""
    thick = rng.uniform(*THICKNESS[level]) + rng.uniform(0, v["thick_extra"])
    angle = np.radians(rng.uniform(*v["angle"]) * rng.choice([-1, 1]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy -= h / 2
    xx -= w / 2
    across = yy * np.cos(angle) - xx * np.sin(angle)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == "box":
        half_h, half_w = size * rng.uniform(0.6, 0.8), size * rng.uniform(0.45, 0.8)
        d = np.minimum(np.abs(np.abs(across) - half_h) + np.maximum(np.abs(along) - half_w, 0),
                       np.abs(np.abs(along) - half_w) + np.maximum(np.abs(across) - half_h, 0))
    else:
        step = spacing(size, rng, v)
        d = distance_to_rule(across, step, rng)
        if kind == "grid":
            step = step if rng.random() < 0.7 else spacing(size, rng, v)
            d = np.minimum(d, distance_to_rule(along, step, rng))
    return np.clip(thick / 2 + 0.5 - d, 0, 1)


def photo(ink, rng, v, lines=None, level="dark", shadow=None):
    """The photo of the ink (and printed lines) on tinted paper, as bench_predict's photo kind."""
    h, w = ink.shape
    paper = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.8, 1.0), rng.uniform(0.65, 0.95)])
    pen = np.array([0.1, 0.1, rng.uniform(0.1, 0.45)]) * rng.uniform(0.3, 1.0)
    rgb = np.broadcast_to(paper, (h, w, 3)).copy()
    if lines is not None:
        grey = rng.uniform(*LEVELS[level]) / 255
        tint = np.clip(grey * np.array(TINTS[v["tints"][rng.integers(len(v["tints"]))]]), 0, 1)
        rgb = rgb * (1 - lines[..., None]) + tint * lines[..., None]
    rgb = rgb * (1 - ink[..., None]) + pen * ink[..., None]
    light = lighting(h, w, rng, rng.uniform(0.6, 0.85), 1.0)
    if shadow is not None:
        light = light * shadow_field(h, w, rng, shadow == "soft", v)
    return finish_photo(rgb * light[..., None], rng)


def make_digit(kind, digit28, rng, v):
    width = int(rng.integers(480, 1201))
    height = width * 3 // 4
    if rng.random() < 0.5:
        width, height = height, width
    size = int(min(width, height) * rng.uniform(0.25, 0.6))
    ink = place(written(digit28, size), height, width, rng) * rng.uniform(0.8, 1.0)
    family, level = kind.split("_")
    if family == "shadow":
        return photo(ink, rng, v, shadow=level)
    if family == "box":
        rows, cols = np.nonzero(ink > 0.5)
        centred = np.zeros_like(ink)
        dy, dx = height // 2 - int(rows.mean()), width // 2 - int(cols.mean())
        centred[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
            ink[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
        ink = centred
    lines = ruling(height, width, size, rng, level, {"lined": "rules"}.get(family, family), v)
    return photo(ink, rng, v, lines, level)


def make_number(kind, digits28, rng, v):
    height = rng.uniform(50, 110)
    sizes = [int(height * rng.uniform(0.85, 1.15)) for _ in digits28]
    inks = [written(d, s) for d, s in zip(digits28, sizes)]
    gaps = [rng.uniform(0.15, 0.6) * height for _ in digits28[1:]]
    ink = lay_out(inks, gaps, sizes, rng, rng.uniform(-0.15, 0.15))
    h, w = ink.shape
    sheet = np.zeros((int(h * rng.uniform(1.3, 2.0)), int(w * rng.uniform(1.1, 1.4))), np.float32)
    top, left = rng.integers(0, sheet.shape[0] - h + 1), rng.integers(0, sheet.shape[1] - w + 1)
    sheet[top:top + h, left:left + w] = ink * rng.uniform(0.8, 1.0)
    if kind == "number_shadow":
        return photo(sheet, rng, v, shadow="hard")
    cell = dict(v, step=(0.9, 1.6)) if v is TUNED else dict(v, step=(0.6, 0.9, 1.6, 2.2))
    return photo(sheet, rng, v, ruling(*sheet.shape, height, rng, "dark", "grid", cell), "dark")


def write_kind(folder, kind, images, labels, count, seed, v):
    """Writes count pictures of the kind; returns {file name: the digits it shows}."""
    os.makedirs(folder, exist_ok=True)
    truth = {}
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    for n in range(count):
        if kind.startswith("number"):
            picked = rng.choice(len(images), int(rng.integers(3, 6)), replace=False)
            data = make_number(kind, images[picked], rng, v)
            kind_letter = "n"
        else:
            picked = rng.choice(len(images), 1)
            data = make_digit(kind, images[picked[0]], rng, v)
            kind_letter = "d"
        digits = "".join(str(labels[i]) for i in picked)
        name = f"{kind_letter}{n:04d}_{digits}.jpg"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        truth[name] = digits
    return truth


def score(repo, folder, truth, weights, reader):
    """The percentage of the folder's pictures that the checkout at repo reads right."""
    out = subprocess.run([sys.executable, "-c", SCORER, repo, folder, weights, reader or ""],
                         capture_output=True, text=True, check=True).stdout
    read = json.loads(out.strip().splitlines()[-1])
    return 100 * sum(read[name] == digits for name, digits in truth.items()) / len(truth)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=os.path.join(REPO, "mnist_cnn.pt"),
                        help="weights to measure (default: mnist_cnn.pt)")
    parser.add_argument("--reader", default=None,
                        help="the number reader for the number kinds (default: none, cutting alone)")
    parser.add_argument("--per-kind", type=int, default=100, help="pictures per kind (default: 100)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated kinds to run (default: all of them)")
    parser.add_argument("--seed", type=int, default=0, help="picks the digits and pictures (default: 0)")
    parser.add_argument("--held-out", action="store_true",
                        help="the variants never tuned on, with seed + 1000 (default: off)")
    parser.add_argument("--before", metavar="REPO",
                        help="also read the same pictures with this checkout's code (default: none)")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "data"),
                        help="where MNIST is (default: data/)")
    parser.add_argument("--keep", metavar="DIR",
                        help="write the pictures here and keep them (default: a temporary folder)")
    args = parser.parse_args(argv)
    args.kinds = args.kinds.split(",")
    for kind in args.kinds:
        if kind not in KINDS:
            parser.error(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if args.before and not os.path.isfile(os.path.join(args.before, "predict.py")):
        parser.error(f"--before {args.before}: no predict.py there")
    return args


def main(argv=None):
    args = parse_args(argv)
    v, seed = (HELD_OUT, args.seed + 1000) if args.held_out else (TUNED, args.seed)
    images, labels = load_mnist_test(args.data_dir)
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    root = args.keep or tmp.name
    rows = []
    try:
        for kind in args.kinds:
            folder = os.path.join(root, kind)
            truth = write_kind(folder, kind, images, labels, args.per_kind, seed, v)
            now = score(REPO, folder, truth, args.weights, args.reader)
            before = score(args.before, folder, truth, args.weights, args.reader) if args.before else None
            rows.append((kind, now, before))
            print(f"{kind}: {now:.1f}%" + (f" (before {before:.1f}%)" if args.before else ""),
                  file=sys.stderr, flush=True)
    finally:
        if tmp:
            tmp.cleanup()
    print(f"\n{args.per_kind} pictures per kind from the MNIST test set, seed {seed}, "
          f"{'held-out' if args.held_out else 'tuned-on'} variants, weights "
          f"{os.path.relpath(args.weights)}; {platform.machine()} CPU\n")
    print("| kind | read right | " + ("before |" if args.before else ""))
    print("|---|---:|" + ("---:|" if args.before else ""))
    for kind, now, before in rows:
        print(f"| {kind} | {now:.1f}% |" + (f" {before:.1f}% |" if before is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
