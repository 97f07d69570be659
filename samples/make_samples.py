"""
Make the sample pictures in samples/, so that a fresh clone has something to read:

    python samples/make_samples.py

    digit.jpg     a phone photo of one handwritten digit (a 7)
    number.jpg    a phone photo of a number, its digits spaced as people write them (4835)
    drawing.png   a digit drawn on the web page's pad: dark round strokes on white (a 5)

The digits are MNIST *test* digits, drawn with the benchmarks' own pen, paper and camera
(benchmarks/bench_predict.py's photo kind, bench_numbers.py's spaced kind), so the samples are
pictures of the kind the benchmarks measure. Each seed picks the digits and the picture's
randomness; the seeds were chosen for pictures a few KB in size that the default model reads
right. The same code and data give the same files.
"""
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from bench_numbers import make_number  # noqa: E402  (benchmarks/ is only on the path from here)
from bench_predict import fine_pen, load_mnist_test, make_image  # noqa: E402

DIGIT_SEED = [22, 18]
NUMBER_SEED = [23, 214]
DRAWING_SEED = [24, 1]
PAD = (320, 480)  # app.html's drawing pad, height x width
PAD_PEN = 22  # its default pen width, in pad pixels
PAD_INK = 17  # its stroke colour, #111


def digit_photo(images):
    rng = np.random.default_rng(DIGIT_SEED)
    data, _ = make_image("photo", images[rng.integers(len(images))], rng)
    return data


def number_photo(images):
    rng = np.random.default_rng(NUMBER_SEED)
    picked = rng.choice(len(images), size=int(rng.integers(3, 5)), replace=False)
    data, _ = make_number("spaced", [images[i] for i in picked], rng)
    return data


def pad_drawing(images):
    """A digit as a mouse or finger leaves it on the pad, centred: the MNIST digit's skeleton
    stroked with the pad's round pen."""
    rng = np.random.default_rng(DRAWING_SEED)
    digit = images[rng.integers(len(images))]
    height = int(rng.integers(180, 241))
    ink = fine_pen(digit, height, PAD_PEN / height)
    canvas = np.zeros(PAD, np.float32)
    top, left = (PAD[0] - ink.shape[0]) // 2, (PAD[1] - ink.shape[1]) // 2
    canvas[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    return Image.fromarray(np.round(255 - (255 - PAD_INK) * canvas).astype(np.uint8))


def main():
    images, _ = load_mnist_test(os.path.join(REPO, "data"))
    for name, data in (("digit.jpg", digit_photo(images)), ("number.jpg", number_photo(images))):
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
    pad_drawing(images).save(os.path.join(HERE, "drawing.png"), optimize=True)
    print(f"Wrote digit.jpg, number.jpg and drawing.png to {os.path.relpath(HERE)}/")


if __name__ == "__main__":
    main()
