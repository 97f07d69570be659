"""One digit's ink -> the model's 28x28 input (what MNIST digits look like: white ink on black,
scaled to fit 20x20, centred by mass in 28x28, normalised as in training), and a row of digits
-> the number reader's input.
"""
import numpy as np
from PIL import Image
from scipy import ndimage

from reading.errors import NoDigitError
from reading.ink import one_digit_mask, read_ink, stroke_width
from reading.paper import sample

# Mean and standard deviation of the MNIST training pixels (in [0, 1]). Training and predict.py
# both normalise with these, so a digit is seen the same way at both ends.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def grey_levels(x):
    """The model's normalised input (an array, or a torch tensor, any shape) back to grey levels
    in [0, 1]: what the model saw, for showing to people."""
    x = x * MNIST_STD + MNIST_MEAN
    # A tensor is clamped by its own method: this module must not import torch.
    return x.clamp(0, 1) if hasattr(x, "clamp") else np.clip(x, 0, 1)


# The ink is handled at SUPERSAMPLE times the final 28x28 resolution, so placing it by its centre
# of mass is accurate to a fraction of a final pixel and the last 4x4 averaging anti-aliases it.
SUPERSAMPLE = 4
# Stroke width of an MNIST digit relative to the long side of its ink box: the median over the test
# set, measured with stroke_width() on the digits enlarged 8x. Strokes much thinner than this are
# thickened to it.
MNIST_STROKE_RATIO = 0.12


def preprocess_image(image):
    """The normalised 1x28x28 float32 array the model reads, from a path or a PIL image, taking
    all the ink in the picture as one digit. Raises ImageNotFoundError, NotAnImageError or
    NoDigitError."""
    return ink_as_one_digit(read_ink(image))


def ink_as_one_digit(ink):
    """The model's input for a picture's Ink read as one digit: all of it, but for the pieces at
    the border that ink.one_digit_mask leaves out. Every reader of a whole picture as one digit
    (preprocess_image, predict.py's lines, the page) goes through here, so they agree."""
    return to_mnist(ink.levels, one_digit_mask(ink), ink.name)


# ---------------------------------------------------------------------------------------------
# One digit's ink -> the model's 28x28 input

def to_mnist(levels, mask, name="the image"):
    """The normalised 1x28x28 float32 array of the ink of one digit: cropped to the mask, made soft
    levels in [0, 1], strokes brought to MNIST's width, fitted to 20x20 and centred by mass."""
    digit = crop_to_ink(levels, mask)
    if digit.size == 0 or float(digit.sum()) <= 0:
        raise NoDigitError(f"No digit found in {name}: too little ink is left once cropped.")
    small = centre_in_28x28(normalise_stroke_width(digit))
    return ((small - MNIST_MEAN) / MNIST_STD).astype(np.float32)[None]


def crop_to_ink(levels, mask):
    """The ink inside the mask's bounding box, as soft levels in [0, 1]: background 0, solid ink
    1, anti-aliased edges in between, so contrast no longer depends on pen or lighting."""
    box = ndimage.find_objects(mask.astype(np.int8))
    if not box:
        return np.zeros((0, 0), np.float32)
    levels, inside = levels[box[0]], mask[box[0]]
    solid = float(np.median(sample(levels[inside])))
    background = float(np.median(sample(levels[~inside]))) if (~inside).any() else 0.0
    floor = background + 0.25 * (solid - background)
    soft = np.clip((levels - floor) / max(solid - floor, 1e-6), 0.0, 1.0)
    # Pixels left out of the mask (specks, a neighbouring digit) are left out of the picture too,
    # but the anti-aliased rim of the mask's own strokes is kept. (Two 8-connected dilations, as
    # one separable 5x5 maximum: the same pixels, faster.)
    return np.where(ndimage.maximum_filter(inside, size=5, mode="constant"), soft,
                    0.0).astype(np.float32)


def resize(array, width, height):
    """A float array resized to width x height (at least 1 x 1), bilinear."""
    # Pillow's resampling is anti-aliased when shrinking (its filter widens with the scale), which
    # scipy's zoom is not.
    img = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(img.resize((max(1, width), max(1, height)), Image.Resampling.BILINEAR))


def normalise_stroke_width(digit):
    """The digit at SUPERSAMPLE x 20 pixels on its long side, its strokes first thickened to
    MNIST's width if they are much thinner. That is judged at the crop's own resolution: a
    one-pixel pen line shrunk into a 20x20 box would fade to a faint grey trace the model has
    never seen, and once faded it could no longer be measured. Bold strokes are left bold:
    thinning cannot reopen a loop the marker closed."""
    digit = widen_strokes(digit, MNIST_STROKE_RATIO * max(digit.shape))
    h, w = digit.shape
    scale = 20 * SUPERSAMPLE / max(h, w)
    return np.clip(resize(digit, round(w * scale), round(h * scale)), 0.0, 1.0)


def widen_strokes(ink, target):
    """The ink (soft levels) with its strokes widened to about target pixels if they are much
    thinner, padded by the amount they grew."""
    mask = ink > 0.5
    width = stroke_width(mask)
    if 0 < width < 0.75 * target:
        radius = int(round((target - width) / 2))
        if radius >= 1:
            # A square pen of radius pixels drawn along every stroke (a maximum filter, which is
            # separable: a binary dilation by the same square costs its area per pixel).
            wider = ndimage.maximum_filter(np.pad(mask, radius).astype(np.float32), size=2 * radius + 1,
                                           mode="constant")
            ink = np.maximum(np.pad(ink, radius), wider)
    return ink


def centre_in_28x28(digit):
    """Place the digit in a 28x28 field (at SUPERSAMPLE resolution) with its centre of mass at
    the centre, then average SUPERSAMPLE x SUPERSAMPLE blocks down to 28x28."""
    s = SUPERSAMPLE
    size = 28 * s
    h, w = digit.shape
    cy, cx = ndimage.center_of_mass(digit)
    # MNIST digits have their centre of mass on pixel (14, 14) of the 28x28 field (the test set's
    # mean); that pixel's centre is at 14*s + (s-1)/2 supersampled.
    target = 14 * s + (s - 1) / 2
    top = int(round(target - cy))
    left = int(round(target - cx))
    canvas = np.zeros((size, size), dtype=np.float32)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, size), min(left + w, size)
    canvas[y0:y1, x0:x1] = digit[y0 - top:y1 - top, x0 - left:x1 - left]
    return canvas.reshape(28, s, 28, s).mean(axis=(1, 3))


# ---------------------------------------------------------------------------------------------
# A row of digits for the number reader (number_reader.py)

# The row is scaled to MNIST's 20-pixel digit box and padded to its 28, so that the reader's
# convolutions see strokes of the size the digit CNN's do.
LINE_HEIGHT = 20
LINE_PAD = 4


def to_line_input(levels, mask, name="the image"):
    """The ink of a row of digits (levels, with the mask of the ink that belongs to it) as the
    number reader reads it: 28 x W float32, ink 1 on 0. The strokes are brought to MNIST's width
    for the row's height, as to_mnist does for one digit."""
    ink = crop_to_ink(levels, mask)
    rows = np.flatnonzero((ink > 0.5).any(axis=1))
    if rows.size == 0:
        raise NoDigitError(f"No digit found in {name}: too little ink is left once cropped.")
    return fit_line(widen_strokes(ink, MNIST_STROKE_RATIO * (rows[-1] + 1 - rows[0])))


def fit_line(ink):
    """Ink levels in [0, 1] (background 0) cropped to the solid ink, scaled to LINE_HEIGHT rows,
    padded by LINE_PAD on every side: 28 x W float32."""
    rows = np.flatnonzero((ink > 0.5).any(axis=1))
    cols = np.flatnonzero((ink > 0.5).any(axis=0))
    if rows.size == 0:
        raise NoDigitError("No digit found: too little ink is left once cropped.")
    ink = np.asarray(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], np.float32)
    width = max(2, round(ink.shape[1] * LINE_HEIGHT / ink.shape[0]))
    return np.pad(np.clip(resize(ink, width, LINE_HEIGHT), 0.0, 1.0), LINE_PAD)
