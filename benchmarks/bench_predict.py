"""
How well does predict.py read digits as people really hand them in?

    python benchmarks/bench_predict.py                    # 500 images per kind
    python benchmarks/bench_predict.py --per-kind 100     # quicker
    python benchmarks/bench_predict.py --keep bench_images  # keep the generated images to look at

Builds user-style images from MNIST *test* digits only (never training images), deterministically
from --seed, writes them to files, and reports the accuracy of predict_user_input on each kind
next to the naive approach a new user tries first (convert to grey, resize to 28x28, normalise),
then the images per second of predicting a whole folder the way `python predict.py FOLDER` does.
Prints a markdown table.

Each MNIST digit is enlarged smoothly to the chosen size with pen-sharp edges (for thick strokes,
widened with a round marker; for thin ones, thinned to its skeleton and redrawn with a fine pen),
put at a random place, on the chosen background. Kinds:
  mnist        the MNIST test image itself, white on black (control)
  photo        dark ink on tinted paper, lighting gradient and vignetting, noise, blur, JPEG,
               off-centre, digit 15-70% of the picture's height, pictures 480-1600 px wide
  transparent  strokes on a transparent background (a canvas export), black, white or coloured
  thick        a marker: stroke width 16-22% of the digit's height (MNIST's median is 12%,
               its 90th percentile 17%), dark on white
  thin         a fine pen: stroke width 1.5-4% of the digit's height (1-5 pixels), dark on white;
               loops MNIST's pen closed to a faint dip in the grey are drawn open
  chalkboard   light chalk on a dark, unevenly lit board, noise, blur, JPEG
  form         the photo kind written in a form: a printed box around the digit (touching it in a
               third of the pictures) or the lines of a table cell across the whole picture
  ruled        the photo kind on lined or squared paper, its lines running through the digit
"""
import argparse
import io
import os
import platform
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from torchvision.datasets import MNIST

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import predict  # noqa: E402  (the repo root is only on the path once the line above ran)
from reading.digit_input import MNIST_MEAN, MNIST_STD  # noqa: E402
from training.mnist_data import prepare_mnist  # noqa: E402

KINDS = ["mnist", "photo", "transparent", "thick", "thin", "chalkboard", "form", "ruled"]


def load_mnist_test(data_dir):
    """MNIST test images (uint8, N x 28 x 28, never the training set) and labels."""
    prepare_mnist(data_dir)
    dataset = MNIST(data_dir, train=False, download=False)
    return dataset.data.numpy(), dataset.targets.numpy()


# ---------------------------------------------------------------------------------------------
# Redrawing a digit with a pen

def skeleton(mask):
    """Zhang-Suen thinning of a boolean mask to one-pixel-wide lines, vectorised with NumPy."""
    img = mask.astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            p = np.pad(img, 1)
            n = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:],      # P2 N, P3 NE, P4 E, P5 SE
                 p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]    # P6 S, P7 SW, P8 W, P9 NW
            neighbours = sum(x.astype(np.int32) for x in n)
            transitions = sum(((n[i] == 0) & (n[(i + 1) % 8] == 1)).astype(np.int32) for i in range(8))
            if step == 0:
                c1, c2 = n[0] * n[2] * n[4], n[2] * n[4] * n[6]
            else:
                c1, c2 = n[0] * n[2] * n[6], n[0] * n[4] * n[6]
            remove = ((img == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1)
                      & (c1 == 0) & (c2 == 0))
            if remove.any():
                img[remove] = 0
                changed = True
        if not changed:
            return img.astype(bool)


# Shapes are worked on at 4x MNIST's resolution (112x112), where the strokes are about 10 pixels
# wide, then enlarged to the size wanted with smooth interpolation and crisp, anti-aliased edges.
INK_LEVEL = 0.3  # MNIST grey level (of 1) taken as the edge of a stroke
HOLE_LEVEL = 0.7  # a loop is open where the grey inside it stays below this


def field_4x(digit28):
    img = Image.fromarray(digit28.astype(np.float32) / 255, mode="F")
    return np.asarray(img.resize((112, 112), Image.Resampling.BICUBIC))


def enlarge(field, height):
    """The ink of a 112x112 field, cropped and enlarged to `height` pixels tall, as levels in
    [0, 1] with edges about as sharp as a pen's."""
    rows, cols = np.flatnonzero((field > INK_LEVEL).any(1)), np.flatnonzero((field > INK_LEVEL).any(0))
    field = field[max(rows[0] - 4, 0):rows[-1] + 5, max(cols[0] - 4, 0):cols[-1] + 5]
    scale = height / (rows[-1] - rows[0] + 1)
    size = (max(1, round(field.shape[1] * scale)), max(1, round(field.shape[0] * scale)))
    big = np.asarray(Image.fromarray(field.astype(np.float32), mode="F")
                     .resize(size, Image.Resampling.BICUBIC))
    edge = 0.1 / max(scale / 4, 1)  # a ramp about one final pixel wide, whatever the size
    return np.clip((big - INK_LEVEL) / edge + 0.5, 0, 1).astype(np.float32)


def written(digit28, height):
    """The MNIST digit as written, enlarged to `height` pixels (its own stroke widths)."""
    return enlarge(field_4x(digit28), height)


def marker(digit28, height, ratio):
    """The digit written with a thick marker: its strokes widened to ratio x its height."""
    field = field_4x(digit28)
    mask = field > INK_LEVEL
    box_h = np.ptp(np.flatnonzero(mask.any(1))) + 1
    radius = max(0.0, (ratio - 0.12) * box_h / 2)  # MNIST strokes are about 0.12 x the height
    k = int(np.ceil(radius))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    disc = torch.from_numpy(((yy ** 2 + xx ** 2) <= radius ** 2 + 0.5).astype(np.float32))
    grown = F.conv2d(torch.from_numpy(mask.astype(np.float32))[None, None], disc[None, None],
                     padding=k)[0, 0].numpy() > 0
    smooth = F.avg_pool2d(torch.from_numpy(grown.astype(np.float32))[None, None], 3, 1, 1)[0, 0]
    return enlarge(smooth.numpy(), height)


def grow_within(seed, region):
    """The parts of boolean mask region connected to seed (8-connected), seed included."""
    free = torch.from_numpy(region.astype(np.float32))[None, None]
    reached = torch.from_numpy(seed.astype(np.float32))[None, None] * free
    while True:
        grown = F.max_pool2d(reached, 3, 1, 1) * free
        if torch.equal(grown, reached):
            return grown[0, 0].numpy() > 0
        reached = grown


def holes(background):
    """The pixels of a boolean background mask that cannot reach the picture's border."""
    border = np.ones_like(background)
    border[1:-1, 1:-1] = False
    return background & ~grow_within(border, background)


def fine_pen(digit28, height, pen_ratio):
    """The digit redrawn with a fine pen: thinned to its skeleton, then stroked pen_ratio x height
    wide (at least one pixel), with anti-aliased edges.

    A loop written with MNIST's thick pen is often closed to a faint dip in the grey levels; its
    skeleton would be a line, so a fine-pen 8 would come out a 9. Holes that only the darker core
    of the strokes (level HOLE_LEVEL) shows are opened, as the writer's fine pen would have left
    them; loops already open at INK_LEVEL stay as they are."""
    field = field_4x(digit28)
    ink = field > INK_LEVEL
    core_holes = holes(field <= HOLE_LEVEL)
    closed_loops = core_holes & ~grow_within(holes(~ink), core_holes)
    skel = skeleton(ink & ~closed_loops)
    rows, cols = np.flatnonzero(skel.any(1)), np.flatnonzero(skel.any(0))
    skel = skel[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # Drawn at 2x and shrunk at the end, for smooth edges.
    scale = 2 * height / skel.shape[0]
    pen = max(2.0, 2 * pen_ratio * height)
    margin = int(pen) + 2
    canvas = Image.new("L", (round(skel.shape[1] * scale) + 2 * margin,
                             round(skel.shape[0] * scale) + 2 * margin))
    draw = ImageDraw.Draw(canvas)

    def at(y, x):
        return (x + 0.5) * scale + margin, (y + 0.5) * scale + margin

    # The pen follows the skeleton: a segment to each 8-connected neighbour, a round dot at each
    # pixel so joints and ends are round as a real pen's.
    h, w = skel.shape
    for y, x in zip(*np.nonzero(skel)):
        cx, cy = at(y, x)
        draw.ellipse([cx - pen / 2, cy - pen / 2, cx + pen / 2, cy + pen / 2], fill=255)
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            if 0 <= y + dy < h and 0 <= x + dx < w and skel[y + dy, x + dx]:
                draw.line([at(y, x), at(y + dy, x + dx)], fill=255, width=max(1, round(pen)))
    small = canvas.resize((max(1, canvas.width // 2), max(1, canvas.height // 2)),
                          Image.Resampling.BOX)
    return np.asarray(small, np.float32) / 255


def place(ink, height, width, rng):
    """An (height x width) ink canvas with `ink` pasted at a random place fully inside it."""
    canvas = np.zeros((height, width), np.float32)
    h, w = ink.shape
    h, w = min(h, height), min(w, width)
    top = rng.integers(0, height - h + 1)
    left = rng.integers(0, width - w + 1)
    canvas[top:top + h, left:left + w] = ink[:h, :w]
    return canvas


def lighting(height, width, rng, low, high):
    """A smooth illumination field in [low, high]: a gradient in a random direction plus a
    vignette centred somewhere in the picture."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= height
    xx /= width
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * xx + np.sin(angle) * yy)
    cy, cx = rng.uniform(0.2, 0.8, size=2)
    vignette = -((yy - cy) ** 2 + (xx - cx) ** 2)
    field = rng.uniform(0.5, 1.0) * gradient + rng.uniform(0.5, 1.5) * vignette
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    return low + (high - low) * field


def finish_photo(rgb, rng):
    """Camera-like degradations on an RGB float image: blur, sensor noise, JPEG."""
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5) * max(img.size) / 800))
    arr = np.asarray(img, np.float32) / 255
    arr = arr + rng.normal(0, rng.uniform(0.01, 0.04), size=arr.shape[:2])[..., None]
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(50, 91)))
    return buf.getvalue()


def printed_lines(kind, ink, size, rng):
    """Printed lines on the sheet under the ink (1 on a line): a form's box around the digit or
    a table cell's lines across the picture (form), lined or squared paper (ruled)."""
    height, width = ink.shape
    lines = np.zeros((height, width), np.float32)
    thick = max(2, size // 40)
    rows, cols = np.nonzero(ink > 0.5)
    if kind == "form":
        touching = rng.random() < 1 / 3
        pad = size * (rng.uniform(-0.02, 0.02) if touching else rng.uniform(0.08, 0.35))
        top, bottom = int(max(rows.min() - pad, 0)), int(min(rows.max() + pad, height - thick))
        left, right = int(max(cols.min() - pad, 0)), int(min(cols.max() + pad, width - thick))
        if rng.random() < 0.5:  # a box
            for y in (top, bottom):
                lines[y:y + thick, left:right + thick] = 1
            for x in (left, right):
                lines[top:bottom + thick, x:x + thick] = 1
        else:  # a table cell's lines, across the whole picture
            for y in (top, bottom):
                lines[y:y + thick, :] = 1
            for x in (left, right):
                lines[:, x:x + thick] = 1
    else:
        step = int(size * rng.uniform(0.3, 0.6))
        lines[int(rng.integers(step))::step, :] = 1
        if rng.random() < 0.5:  # squared paper
            step = int(size * rng.uniform(0.15, 0.3))
            lines[:, int(rng.integers(step))::step] = 1
    return lines


def make_image(kind, digit28, rng):
    """(file bytes, file extension) of one user-style image of the digit."""
    makers = {"mnist": lambda kind, digit28, rng: _png(digit28), "photo": _photo, "chalkboard": _photo, "form": _printed,
              "ruled": _printed, "transparent": _transparent, "thick": _pen, "thin": _pen}
    if kind not in makers:
        raise ValueError(f"unknown kind {kind}")
    return makers[kind](kind, digit28, rng)


def _png(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue(), ".png"


def _photo(kind, digit28, rng):
    """A phone photo of ink on paper (photo) or of chalk on a board (chalkboard)."""
    width = int(rng.integers(480, 1601))
    height = width * 3 // 4
    if rng.random() < 0.5:
        width, height = height, width
    size = int(min(width, height) * rng.uniform(0.15, 0.7))
    ink = place(written(digit28, size), height, width, rng)
    ink = ink * rng.uniform(0.8, 1.0)
    if kind == "photo":
        paper = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.8, 1.0), rng.uniform(0.65, 0.95)])
        pen = np.array([0.1, 0.1, rng.uniform(0.1, 0.45)]) * rng.uniform(0.3, 1.0)
        light = lighting(height, width, rng, rng.uniform(0.45, 0.75), 1.0)
    else:
        paper = np.array([0.12, rng.uniform(0.12, 0.25), 0.15])
        pen = np.array([0.9, 0.9, 0.85]) * rng.uniform(0.7, 1.0)
        light = lighting(height, width, rng, rng.uniform(0.5, 0.8), 1.0)
    rgb = (paper * (1 - ink[..., None]) + pen * ink[..., None]) * light[..., None]
    return finish_photo(rgb, rng), ".jpg"


def _printed(kind, digit28, rng):
    """The photo kind written in a form (form) or on lined or squared paper (ruled)."""
    width = int(rng.integers(480, 1201))
    height = width * 3 // 4
    size = int(height * rng.uniform(0.25, 0.6))
    ink = place(written(digit28, size), height, width, rng) * rng.uniform(0.8, 1.0)
    lines = printed_lines(kind, ink, size, rng)
    paper = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.8, 1.0), rng.uniform(0.65, 0.95)])
    pen = np.array([0.1, 0.1, rng.uniform(0.1, 0.45)]) * rng.uniform(0.3, 1.0)
    printed = np.array([0.2, 0.2, 0.25]) if kind == "form" else np.array([0.55, 0.7, 0.95])
    rgb = paper * (1 - lines[..., None]) + printed * lines[..., None]
    rgb = rgb * (1 - ink[..., None]) + pen * ink[..., None]
    light = lighting(height, width, rng, rng.uniform(0.55, 0.8), 1.0)
    return finish_photo(rgb * light[..., None], rng), ".jpg"


def _transparent(kind, digit28, rng):
    """Strokes on a transparent canvas, black, white or coloured."""
    side = int(rng.integers(200, 601))
    size = int(side * rng.uniform(0.4, 0.9))
    ink = place(written(digit28, size), side, side, rng)
    colours = [(0, 0, 0), (255, 255, 255), (30, 60, 200), (200, 30, 30)]
    colour = colours[rng.integers(len(colours))]
    unused = 255 * int(rng.integers(2))  # what the transparent pixels happen to store
    rgba = np.empty((side, side, 4), np.uint8)
    rgba[..., :3] = np.where(ink[..., None] > 0, colour, unused)
    rgba[..., 3] = np.round(ink * 255).astype(np.uint8)
    return _png(rgba, "RGBA")


def _pen(kind, digit28, rng):
    """A marker (thick) or a fine pen (thin), dark on white."""
    side = int(rng.integers(300, 1001))
    size = int(side * rng.uniform(0.3, 0.8))
    if kind == "thick":
        ink = marker(digit28, size, rng.uniform(0.16, 0.22))
    else:
        ink = fine_pen(digit28, size, rng.uniform(0.015, 0.04))
    ink = place(ink, side, side, rng)
    return _png((255 * (1 - ink)).astype(np.uint8))


def naive_tensor(path):
    """What a new user writes first: the training transforms applied to the file as it is."""
    img = Image.open(path).convert("L").resize((28, 28))
    x = torch.from_numpy(np.asarray(img, np.float32) / 255)
    return ((x - MNIST_MEAN) / MNIST_STD).unsqueeze(0)


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=os.path.join(REPO, "mnist_cnn.pt"),
                        help="weights to measure (default: mnist_cnn.pt)")
    parser.add_argument("--per-kind", type=int, default=500, help="images per kind (default: 500)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated kinds to run (default: all of them)")
    parser.add_argument("--seed", type=int, default=0, help="picks the digits and their pictures (default: 0)")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "data"),
                        help="where MNIST is (default: data/)")
    parser.add_argument("--keep", metavar="DIR",
                        help="write the images here and keep them (default: a temporary folder)")
    args = parser.parse_args(argv)
    args.kinds = args.kinds.split(",")
    for kind in args.kinds:
        if kind not in KINDS:
            parser.error(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    return args


def write_kind(folder, kind, picked, images, labels, seed):
    """Writes one picture of the kind per picked MNIST digit; returns {path: its digit}."""
    os.makedirs(folder, exist_ok=True)
    truth = {}
    for n, i in enumerate(picked):
        rng = np.random.default_rng([seed, KINDS.index(kind), int(i)])
        data, ext = make_image(kind, images[i], rng)
        path = os.path.join(folder, f"{n:05d}_{labels[i]}{ext}")
        with open(path, "wb") as f:
            f.write(data)
        truth[path] = int(labels[i])
    return truth


def score(model, truth):
    """(right by predict_user_input, right by the naive resize, pictures it found no digit in)."""
    ours = naive = failed = 0
    for path, label in truth.items():
        try:
            ours += predict.predict_user_input(model, path) == label
        except predict.PredictError:
            failed += 1
        with torch.no_grad():
            naive += int(model(naive_tensor(path)[None]).argmax()) == label
    return ours, naive, failed


def folder_seconds(folder, weights):
    """How long `python predict.py FOLDER` takes on the folder: batched, a line per image."""
    t0 = time.perf_counter()
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        predict.main([folder, "--weights", weights])
    return time.perf_counter() - t0


def print_table(args, rows, files, seconds):
    print(f"\n{args.per_kind} images per kind from the MNIST test set, seed {args.seed}, "
          f"weights {os.path.relpath(args.weights)}; {platform.machine()} CPU, "
          f"{os.cpu_count()} cores, torch {torch.__version__}\n")
    print("| kind | predict.py | naive resize to 28x28 | folder, images/s |")
    print("|---|---:|---:|---:|")
    for kind, ours, naive, failed, rate in rows:
        print(f"| {kind} | {ours:.1f}% | {naive:.1f}% | {rate:.0f} |")
    print(f"\nAll kinds: {files / seconds:.0f} images/s for a folder "
          f"(`python predict.py FOLDER`, model loading included).")


def main(argv=None):
    args = parse_args(argv)
    try:
        model = predict.load_model(args.weights)
    except predict.PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    images, labels = load_mnist_test(args.data_dir)
    picked = np.random.default_rng(args.seed).permutation(len(images))[:args.per_kind]
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    root = args.keep or tmp.name
    rows = []
    all_files = all_seconds = 0
    try:
        for kind in args.kinds:
            folder = os.path.join(root, kind)
            t0 = time.perf_counter()
            truth = write_kind(folder, kind, picked, images, labels, args.seed)
            made = time.perf_counter() - t0
            ours, naive, failed = score(model, truth)
            seconds = folder_seconds(folder, args.weights)
            total = len(truth)
            all_files += total
            all_seconds += seconds
            rows.append((kind, 100 * ours / total, 100 * naive / total, failed, total / seconds))
            print(f"{kind}: ours {100 * ours / total:.1f}%, naive {100 * naive / total:.1f}%, "
                  f"no digit found {failed}, folder {total / seconds:.0f} images/s "
                  f"(made in {made:.0f} s)", file=sys.stderr, flush=True)
    finally:
        if tmp:
            tmp.cleanup()
    print_table(args, rows, all_files, all_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
