"""Pictures the tests draw: digits and numbers as people hand them in."""
import numpy as np
from PIL import Image, ImageDraw

from reading.digit_input import grey_levels, preprocess_image


def draw_seven(size=(300, 300), box=(90, 60, 190, 240), width=14, ink=0, paper=255, mode="L"):
    """A 7 drawn with a pen of `width` pixels inside box (left, top, right, bottom)."""
    img = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = box
    draw.line([(left, top), (right, top), (left + (right - left) * 0.35, bottom)], fill=ink,
              width=width, joint="curve")
    return img


def seen(image):
    """The 28x28 array in [0, 1] the model sees for image (a PIL image or a path)."""
    return grey_levels(preprocess_image(image)[0])


def centre_of_mass(a):
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    return (ys * a).sum() / a.sum(), (xs * a).sum() / a.sum()


def ink_box(a, level=0.1):
    rows = np.flatnonzero((a > level).any(axis=1))
    cols = np.flatnonzero((a > level).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def save(img, path, **kwargs):
    img.save(path, **kwargs)
    return str(path)


def as_mnist_photo(digit28, scale, offset, canvas=(400, 320)):
    """An MNIST digit written dark on light paper at scale x its size, off-centre."""
    big = Image.fromarray(255 - digit28).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    img = Image.new("L", canvas, 255)
    img.paste(big, offset)
    return img


def touching_number(images, picks, height=84):
    """MNIST test digits dark on light paper, each placed 0.48 of the height after the one
    before: less than their ink is wide (MNIST's digits mostly span 12-20 of 28 columns), so
    their strokes touch."""
    tiles = [np.asarray(Image.fromarray(images[i]).resize((height, height), Image.Resampling.BICUBIC))
             for i in picks]
    step = int(0.48 * height)
    paper = np.zeros((2 * height, len(tiles) * step + height + 40), np.uint8)
    for k, tile in enumerate(tiles):
        region = paper[height // 2:height // 2 + height, 20 + k * step:20 + k * step + height]
        np.maximum(region, tile, out=region)
    return Image.fromarray(255 - paper)
