"""
How long does a picture take to read, whatever is drawn on it?

    python benchmarks/bench_shapes.py --weights mnist_cnn.pt      # each drawing 7 times

Reads each picture as app.py's worker processes do (app.read_picture, one torch thread) and
prints the median and the slowest of --repeats reads, in wall-clock and in CPU time (CPU time is
what the reading itself costs; wall-clock also counts whatever else runs on the machine). The
drawings are 240x160, as the page posts its pad: a long bar, a tilted one, a filled blob, a
scribble across the pad, forty small marks, a wave and a row of loops across the pad, one MNIST
digit and six touching MNIST digits. The photos are phone photos of numbers from
bench_numbers.py (spaced and touching digits, 300-1400 pixels wide).
"""
import argparse
import io
import os
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from bench_numbers import KINDS, make_number  # noqa: E402
from bench_predict import load_mnist_test  # noqa: E402

import app  # noqa: E402
import predict  # noqa: E402

PAD = (480, 320)


def pad_png(draw):
    """The PNG the page posts for strokes drawn on its pad by draw(ImageDraw): at half size."""
    img = Image.new("RGB", PAD, "white")
    draw(ImageDraw.Draw(img))
    buf = io.BytesIO()
    img.reduce(2).save(buf, "PNG")
    return buf.getvalue()


def digits_png(images, picks, step):
    """MNIST digits dark on the pad, 180 pad pixels tall, each step of that height after the one
    before (under 0.6: their strokes touch)."""
    height = 180
    paper = np.zeros((PAD[1], PAD[0]), np.uint8)
    left = (PAD[0] - int(step * height * (len(picks) - 1)) - height) // 2
    for k, i in enumerate(picks):
        tile = np.asarray(Image.fromarray(images[i]).resize((height, height), Image.Resampling.BICUBIC))
        x = left + int(k * step * height)
        region = paper[70:70 + height, x:x + height]
        np.maximum(region, tile[:, :region.shape[1]], out=region)
    return pad_png(lambda d: d.bitmap((0, 0), Image.fromarray(paper), fill="black"))


def drawings(images):
    """(name, PNG bytes) of the 240x160 drawings."""
    rng = np.random.default_rng(0)
    scribble = [(rng.uniform(10, 470), rng.uniform(10, 310)) for _ in range(40)]
    marks = [(x, y, x + dx, y + dy) for x, y, dx, dy in zip(rng.uniform(20, 450, 40), rng.uniform(20, 290, 40),
                                                          rng.uniform(-15, 15, 40), rng.uniform(-15, 15, 40))]
    wave = [(20 + 4 * i, 160 + 25 * np.sin(i / 3)) for i in range(111)]
    loops = [(30 + 4 * i + 30 * np.cos(i / 2), 160 + 40 * np.sin(i / 2)) for i in range(105)]
    pen = {"fill": "black", "width": 22, "joint": "curve"}
    return [
        ("a long bar", pad_png(lambda d: d.line([(20, 160), (460, 160)], **pen))),
        ("a tilted bar", pad_png(lambda d: d.line([(20, 120), (460, 200)], **pen))),
        ("a filled blob", pad_png(lambda d: d.ellipse([30, 30, 450, 290], fill="black"))),
        ("a scribble across the pad", pad_png(lambda d: d.line(scribble, **pen))),
        ("forty small marks", pad_png(lambda d: [d.line(m, fill="black", width=8) for m in marks])),
        ("a wave across the pad", pad_png(lambda d: d.line(wave, **{**pen, "width": 14}))),
        ("loops across the pad", pad_png(lambda d: d.line(loops, **{**pen, "width": 10}))),
        ("one digit", digits_png(images, [0], 0)),
        ("six touching digits", digits_png(images, list(range(1, 7)), 0.25)),
    ]


def photos(images, count):
    """(name, JPEG bytes) of phone photos of numbers, as bench_numbers.py makes them."""
    found = []
    for n in range(count):
        kind = ("spaced", "tight")[n % 2]
        rng = np.random.default_rng([0, KINDS.index(kind), n])
        picked = rng.choice(len(images), size=int(rng.integers(4, 7)), replace=False)
        data, _ = make_number(kind, [images[i] for i in picked], rng)
        width = Image.open(io.BytesIO(data)).width
        found.append((f"a photo of {len(picked)} {kind} digits, {width} px wide", data))
    return found


def time_reads(model, data, repeats):
    """(wall, cpu) seconds of each of repeats reads of data, after one that is not timed."""
    walls, cpus = [], []
    for k in range(repeats + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            app.read_picture(model, data)
        except predict.PredictError:
            pass  # a picture with no digit is answered too: its time counts the same
        if k:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return np.array(walls), np.array(cpus)


def run(weights, repeats, photo_count, data_dir):
    torch.set_num_threads(1)  # as each of app.py's worker processes
    model = predict.load_model(weights)
    images, _ = load_mnist_test(data_dir)
    print(f"| picture | wall p50 | wall max | CPU p50 | CPU max |\n|---|---:|---:|---:|---:|")
    for name, data in drawings(images) + photos(images, photo_count):
        wall, cpu = time_reads(model, data, repeats)
        print(f"| {name} | {1000 * np.median(wall):.0f} ms | {1000 * wall.max():.0f} ms | "
              f"{1000 * np.median(cpu):.0f} ms | {1000 * cpu.max():.0f} ms |", flush=True)
    print(f"\n{repeats} reads each, one torch thread; load average {os.getloadavg()[0]:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="How long a picture takes to read, whatever is drawn on it.")
    parser.add_argument("--weights", default=os.path.join(REPO, "mnist_cnn.pt"),
                        help="trained weights (default: mnist_cnn.pt)")
    parser.add_argument("--repeats", type=int, default=7, help="timed reads of each picture (default: 7)")
    parser.add_argument("--photos", type=int, default=4, help="phone photos of numbers (default: 4)")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "data"), help="MNIST folder (default: data/)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.photos < 0:
        parser.error("--repeats must be at least 1 and --photos not negative")
    if not os.path.exists(args.weights):
        sys.exit(f"error: no weights file at {args.weights}: train first with `python mnist_cnn_model.py`.")
    run(args.weights, args.repeats, args.photos, args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
