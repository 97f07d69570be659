"""
Pictures -> what MNIST digits look like: white ink on black, the ink scaled to fit 20x20 and
centred by its centre of mass in 28x28, normalised as in training.

    from preprocess import preprocess_image, find_digits
    x = preprocess_image("photo.jpg")               # the 1x28x28 tensor of the one digit in it
    digits = find_digits("number.jpg", classify)    # each digit of a number, left to right

A photo is none of that MNIST recipe, and resizing it to 28x28 scores near chance, so each step
is redone: read_ink() turns any picture into background-free ink levels and the mask of the ink
(paper tint, lighting, polarity, the table around the sheet, specks and ruled lines dealt with);
to_mnist() turns the ink of one digit into the model's input; find_digits() splits the ink of a
whole number into digits, letting the model's confidence choose where touching digits are cut.
Every step raises a PredictError subclass with a one-sentence message for bad input.
"""
import os
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mnist_cnn_model import MNIST_MEAN, MNIST_STD

# Larger inputs are shrunk to this long side before any work: a digit needs far fewer pixels than
# a 48-megapixel photo has, and this bounds time and memory whatever the camera.
MAX_SIDE = 1024
# The ink is handled at SUPERSAMPLE times the final 28x28 resolution, so placing it by its centre
# of mass is accurate to a fraction of a final pixel and the last 4x4 averaging anti-aliases it.
SUPERSAMPLE = 4
# Stroke width of an MNIST digit relative to the long side of its ink box: the median over the test
# set, measured with stroke_width() below on the digits enlarged 8x (10% of them are under 0.09).
# Strokes much thinner than this are thickened to it.
MNIST_STROKE_RATIO = 0.12
EIGHT_CONNECTED = np.ones((3, 3), bool)


class PredictError(Exception):
    """Base class of the errors raised for bad input; str(error) is one sentence."""


class ImageNotFoundError(PredictError, FileNotFoundError):
    """The image path does not exist."""


class NotAnImageError(PredictError, ValueError):
    """The path exists but is not an image Pillow can read."""


class NoDigitError(PredictError, ValueError):
    """The image has no ink to speak of (blank, uniform, or too small), so no digit to read."""


class Ink(NamedTuple):
    """A picture's ink: levels (float32, bright ink on 0, the background removed), mask (bool,
    the pixels that are ink), scale (pixels of the original picture per pixel here), name."""
    levels: np.ndarray
    mask: np.ndarray
    scale: float
    name: str


class Digit(NamedTuple):
    """One digit found in a picture: box (x0, y0, x1, y1) in the original picture's pixels,
    x1 and y1 exclusive; tensor, the normalised 1x28x28 the model reads."""
    box: tuple
    tensor: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Reading a picture

def preprocess_image(image):
    """The normalised 1x28x28 float tensor the model reads, from a path or a PIL image, taking
    all the ink in the picture as one digit. Raises ImageNotFoundError, NotAnImageError or
    NoDigitError."""
    ink = read_ink(image)
    return to_mnist(ink.levels, ink.mask, ink.name)


def read_ink(image):
    """The picture's Ink: read as grey levels, paper and lighting removed, ink made bright, the
    ink pixels found."""
    name = "the image" if isinstance(image, Image.Image) else os.fspath(image)
    img, scale = open_image(image, with_scale=True)
    if min(img.size) < 3:
        raise NoDigitError(f"No digit found in {name}: the image is only "
                           f"{img.width}x{img.height} pixels.")
    grey = read_grey(img)
    levels = to_ink_polarity(remove_background(grey))
    try:
        return Ink(levels, find_ink(levels, name), scale, name)
    except NoDigitError:
        # A bold digit filling the picture leaves the paper only in the corners, and a curved
        # lighting surface can bend to follow the ink itself; a flat paper level cannot.
        levels = to_ink_polarity(grey - _paper_level(grey))
        return Ink(levels, find_ink(levels, name), scale, name)


def open_image(image, with_scale=False):
    """The image as a loaded PIL image, upright (EXIF orientation applied), at most MAX_SIDE
    on its long side (and, with_scale, how many original pixels one of its pixels spans).
    Raises ImageNotFoundError or NotAnImageError naming the path."""
    if isinstance(image, Image.Image):
        img, path = image, "the image"
    else:
        path = os.fspath(image)
        if not os.path.exists(path):
            raise ImageNotFoundError(f"No such image: {path}.")
        if os.path.isdir(path):
            raise NotAnImageError(f"{path} is a folder, not an image.")
        try:
            img = Image.open(path)
        except UnidentifiedImageError as error:
            raise NotAnImageError(f"{path} is not an image file Pillow can read.") from error
        except Image.DecompressionBombError as error:
            raise NotAnImageError(f"{path} has too many pixels to open safely "
                                  f"(Pillow's decompression-bomb guard).") from error
        except OSError as error:
            raise NotAnImageError(f"{path} could not be opened as an image ({error}).") from error
    try:
        full_size = _upright_size(img)
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: a huge photo never fills memory.
        if img.format == "JPEG":
            img.draft(img.mode, (MAX_SIDE, MAX_SIDE))
        img.load()
        img = _upright(img)
        if max(img.size) > MAX_SIDE:
            # resize, not thumbnail: a caller's own PIL image must not be shrunk in place.
            shrink = MAX_SIDE / max(img.size)
            img = _standard_mode(img).resize(
                (max(1, round(img.width * shrink)), max(1, round(img.height * shrink))),
                Image.Resampling.BOX)
    except Exception as error:  # Pillow's decoders raise many types on damaged files
        raise NotAnImageError(f"{path} could not be decoded: the file is truncated or "
                              f"corrupt.") from error
    return (img, max(full_size) / max(img.size)) if with_scale else img


def _upright_size(img):
    # The size before any draft decoding, turned as EXIF orientation 5-8 turns the picture.
    try:
        turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        turned = False
    return img.size[::-1] if turned else img.size


def _upright(img):
    # A broken EXIF block must not cost the user the prediction: keep the image as stored.
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _standard_mode(img):
    # Palette, 1-bit and CMYK images do not resize smoothly (palette ones fall back to nearest
    # neighbour), so they are first brought to one of the modes handled below.
    if img.mode in ("L", "LA", "RGB", "RGBA", "I", "F") or img.mode.startswith("I;16"):
        return img.convert("I") if img.mode.startswith("I;16") else img
    if img.mode == "P" and "transparency" in img.info or img.mode in ("PA", "La", "RGBa"):
        return img.convert("RGBA")
    if img.mode == "1":
        return img.convert("L")
    return img.convert("RGB")


def read_grey(image):
    """Grey levels in [0, 1] as a float32 array, transparency flattened.

    A drawing exported from a canvas is strokes on a fully transparent background; whatever colour
    the transparent pixels happen to store is meaningless, so the image is laid on a background
    that contrasts with its strokes (white under dark strokes, black under light ones)."""
    img = _standard_mode(open_image(image))
    alpha = None
    if img.mode in ("LA", "RGBA"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255
        img = img.convert("L" if img.mode == "LA" else "RGB")
        if alpha.min() >= 1:
            alpha = None
    if img.mode == "RGB":
        img = img.convert("L")
    grey = np.asarray(img, dtype=np.float32)
    if img.mode in ("I", "F"):
        # 16- and 32-bit images: scale by the range the values actually use (8 or 16 bits).
        top = grey.max()
        grey = grey / (65535.0 if top > 255 else 255.0 if top > 1 else 1.0)
    else:
        grey = grey / 255.0
    if alpha is not None:
        weight = alpha.sum()
        stroke_level = float((grey * alpha).sum() / weight) if weight > 0 else 0.0
        background = 1.0 if stroke_level < 0.5 else 0.0
        grey = grey * alpha + background * (1 - alpha)
    return np.clip(grey, 0.0, 1.0)


def remove_background(grey):
    """grey minus its background (paper tint, lighting gradient, vignetting), which is estimated
    as a smooth quadratic surface fitted to the background pixels only: after this the paper is
    near 0 everywhere and one threshold fits the whole picture. The result is signed: ink is
    negative where it is darker than the paper, positive where lighter."""
    h, w = grey.shape
    # Fit on a small copy: the lighting is smooth, and a 64x64 fit costs microseconds.
    step = max(1, max(h, w) // 64)
    sample = grey[::step, ::step]
    ys, xs = np.mgrid[0:sample.shape[0], 0:sample.shape[1]]
    ys = ys.ravel() * step / max(h - 1, 1)
    xs = xs.ravel() * step / max(w - 1, 1)
    values = sample.ravel().astype(np.float64)
    basis = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], axis=1)
    # Two starting guesses for which pixels are paper: all of them (right when the ink is thin,
    # however uneven the light), or the larger side of an Otsu split (right when a bold digit
    # covers a third of the picture, which a quadratic could otherwise bend to follow). Each is
    # refined; the fit that leaves the paper flattest wins.
    side = values > otsu_threshold(values)
    starts = [np.ones(values.shape, bool), side if side.mean() >= 0.5 else ~side]
    fits = [_fit_paper(basis, values, keep) for keep in starts]
    c = min(fits, key=lambda fit: fit[1])[0].astype(np.float32)
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    surface = c[0] + c[1] * xx + c[2] * yy + c[3] * xx * xx + c[4] * xx * yy + c[5] * yy * yy
    return grey - surface


def _fit_paper(basis, values, keep):
    """(coefficients, spread): least squares on the pixels in keep, then refitted on the pixels
    within 3 robust standard deviations of the surface until that set settles. The median
    absolute deviation ignores the ink (a minority), whichever side of the paper it lies."""
    # Until a fit exists: a flat surface at the median, which is all a tiny picture allows.
    coef = np.zeros(basis.shape[1])
    coef[0] = np.median(values)
    spread = float(np.inf)
    for _ in range(8):
        chosen = basis[keep]
        if len(chosen) < 2 * basis.shape[1]:
            break
        # Solved through the 6x6 normal equations (cheap); lstsq rather than solve, because a
        # picture one pixel high makes them singular.
        coef = np.linalg.lstsq(chosen.T @ chosen, chosen.T @ values[keep], rcond=None)[0]
        residual = values - basis @ coef
        centre = np.median(residual[keep])
        spread = 1.4826 * np.median(np.abs(residual[keep] - centre))
        new_keep = np.abs(residual - centre) <= max(3 * spread, 0.01)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return coef, spread


def _paper_level(grey):
    # The median of the larger side of an Otsu split: the paper, which covers more of a picture
    # than the ink does.
    above = grey > otsu_threshold(grey)
    side = above if above.mean() >= 0.5 else ~above
    return float(np.median(grey[side])) if side.any() else float(np.median(grey))


def to_ink_polarity(residual):
    """The ink bright on a black background, as in MNIST, from the background-free image. The
    ink is whichever side of the paper reaches further: dark ink on light paper gives a deep
    minimum, chalk on a board a high maximum. Extremes are taken after a 3x3 average so that a
    single noisy pixel cannot outvote a stroke."""
    smooth = ndimage.uniform_filter(residual, 3, mode="nearest")
    dark_ink = -float(smooth.min()) > float(smooth.max())
    return np.clip(-residual if dark_ink else residual, 0.0, None)


def _sample(values, size=65536):
    # Medians and percentiles of a regular subsample of at most `size` values: as good as the
    # whole image's for these statistics, and sorting a megapixel photo would dominate the time.
    flat = values.ravel()
    return flat[::max(1, flat.size // size)]


def otsu_threshold(values):
    """Otsu's threshold of values (any range): the level that best splits them into two classes."""
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo, hi, 257)
    bins = np.minimum(((values - lo) * (256 / max(hi - lo, 1e-12))).astype(np.int64), 255)
    hist = np.bincount(bins.ravel(), minlength=256).astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1e-12)
    mean1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(weight1, 1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


# ---------------------------------------------------------------------------------------------
# Which pixels are ink

def find_ink(levels, name="the image"):
    """Boolean mask of the ink pixels. Raises NoDigitError when there is none to speak of: a
    blank or uniform image, or one whose 'ink' is no brighter than the background's own noise.
    Specks and ruled lines are left out, and so is the table or shadow a photo may show along its
    edges (see _set_aside_edge_background)."""
    mask = _drop_ruled_lines(_threshold(levels, name))
    return _drop_specks(_set_aside_edge_background(levels, mask, name))


def _threshold(levels, name):
    blank = NoDigitError(f"No digit found in {name}: the image is blank or uniform.")
    if float(levels.max()) < 1e-3:
        raise blank
    mask = levels > otsu_threshold(levels)
    background = levels[~mask]
    if background.size == 0 or mask.sum() < 3:
        raise blank
    noise = float(background.std())
    contrast = float(np.median(_sample(levels[mask]))) - float(np.median(_sample(background)))
    # On plain noise Otsu still splits the histogram, but the two halves are only about 1.6
    # standard deviations apart; real ink stands many deviations clear of the paper.
    if contrast < max(6 * noise, 0.02):
        raise blank
    return mask


def label_pieces(mask):
    """(labels, count): the mask's 8-connected pieces numbered 1..count (0 is background)."""
    return ndimage.label(mask, structure=EIGHT_CONNECTED)


def _border_ids(labels):
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.unique(edge[edge > 0])


def _set_aside_edge_background(levels, mask, name):
    """The mask without the table around a photographed sheet, or a shadow at its edge.

    Such a region touches the picture's border, is often darker than any pen, and is solid: far
    thicker than a pen stroke. A digit cropped tightly touches the border too, but with strokes
    as thin as the rest of the ink. So the ink is looked for again away from the border pieces
    (their darkness may have pushed the first threshold past the pen), and only the border
    pieces much thicker than that ink's strokes are set aside."""
    labels, count = label_pieces(mask)
    edge_ids = _border_ids(labels)
    if not len(edge_ids):
        return mask
    edge = np.isin(labels, edge_ids)
    try:
        inner = _threshold(np.where(ndimage.binary_dilation(edge, iterations=2), 0.0, levels), name)
        inner_labels, _ = label_pieces(inner)
        inner &= ~np.isin(inner_labels, _border_ids(inner_labels))
    except NoDigitError:
        return mask
    # Inside ink must be pen-strong, not the JPEG ringing or anti-aliasing left around a digit
    # that itself touches the border.
    if inner.sum() < 20 or np.median(levels[inner]) < 0.25 * np.median(_sample(levels[mask])):
        return mask
    # A digit cropped tightly leaves, away from the border, only fragments of itself, a pen's
    # width or so from its border pieces; the digit on a photographed sheet stands clear of the
    # table by a margin of paper.
    depth = ndimage.distance_transform_edt(~inner)
    pen = 2.0 * float(depth[ndimage.binary_dilation(inner)].max()) if inner.any() else 0.0
    clearance = float(ndimage.distance_transform_edt(~edge)[inner].min())
    if clearance < max(2.0 * pen, 0.03 * max(mask.shape)):
        return mask
    # Distance to the nearest non-ink pixel, the picture's border counting as ink: a strip of
    # table along an edge is as thick as it looks, not half of it.
    depth = ndimage.distance_transform_edt(np.pad(mask | inner, 1, constant_values=True))[1:-1, 1:-1]
    pen = float(depth[inner].max())
    thickness = ndimage.maximum(depth, labels, edge_ids)
    background_ids = edge_ids[np.asarray(thickness) > 2.5 * pen + 1]
    if not len(background_ids):
        return mask
    return (mask & ~np.isin(labels, background_ids)) | inner


def _drop_specks(mask):
    """The ink mask without isolated specks (dust, noise, JPEG artefacts): 8-connected pieces
    smaller than a tenth of the largest."""
    labels, count = label_pieces(mask)
    if count <= 1:
        return mask
    size = np.bincount(labels.ravel())
    size[0] = 0
    keep = size >= 0.1 * size.max()
    keep[0] = False
    return keep[labels]


def _drop_ruled_lines(mask):
    """The ink mask without the ruled lines of lined or squared paper: straight horizontal or
    vertical runs at least three times as long as the largest thing written beside them is tall.
    (A digit's own bar or stem is never that much longer than the digit is tall.) A table or
    shadow along the border does not count as written."""
    h, w = mask.shape
    lines = _long_runs(mask, max(w // 2, 8)) | _long_runs(mask.T, max(h // 2, 8)).T
    if not lines.any():
        return mask
    rest = mask & ~ndimage.binary_dilation(lines, iterations=1)
    labels, count = label_pieces(rest)
    if not count:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    inside = sizes.copy()
    inside[_border_ids(labels)] = 0
    largest = ndimage.find_objects(labels)[int(np.argmax(inside if inside.any() else sizes)) - 1]
    tallest = max(largest[0].stop - largest[0].start, largest[1].stop - largest[1].start)
    line_labels, count = label_pieces(lines)
    areas = np.bincount(line_labels.ravel(), minlength=count + 1)
    long_ids = []
    for i, s in enumerate(ndimage.find_objects(line_labels), start=1):
        length = max(s[0].stop - s[0].start, s[1].stop - s[1].start)
        # A ruled line is thin for its length; a bold stroke across a tightly cropped digit is not.
        if length >= 3 * tallest and areas[i] / length <= length / 15:
            long_ids.append(i)
    if not long_ids:
        return mask
    return mask & ~ndimage.binary_dilation(np.isin(line_labels, long_ids), iterations=1)


def _long_runs(mask, length):
    """The pixels of mask that lie in a horizontal run of at least `length` pixels."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    rows, starts = np.nonzero(np.diff(padded, axis=1) == 1)
    ends = np.nonzero(np.diff(padded, axis=1) == -1)[1]
    out = np.zeros(mask.shape, bool)
    for r, s, e in zip(rows, starts, ends):
        if e - s >= length:
            out[r, s:e] = True
    return out


# ---------------------------------------------------------------------------------------------
# One digit's ink -> the model's 28x28 input

def to_mnist(levels, mask, name="the image"):
    """The normalised 1x28x28 tensor of the ink of one digit: cropped to the mask, made soft
    levels in [0, 1], strokes brought to MNIST's width, fitted to 20x20 and centred by mass."""
    digit = crop_to_ink(levels, mask)
    if digit.size == 0 or float(digit.sum()) <= 0:
        raise NoDigitError(f"No digit found in {name}: too little ink is left once cropped.")
    small = centre_in_28x28(normalise_stroke_width(digit))
    return torch.from_numpy((small - MNIST_MEAN) / MNIST_STD).float().unsqueeze(0)


def crop_to_ink(levels, mask):
    """The ink inside the mask's bounding box, as soft levels in [0, 1]: background 0, solid ink
    1, anti-aliased edges in between, so contrast no longer depends on pen or lighting."""
    box = ndimage.find_objects(mask.astype(np.int8))
    if not box:
        return np.zeros((0, 0), np.float32)
    levels, inside = levels[box[0]], mask[box[0]]
    solid = float(np.median(_sample(levels[inside])))
    background = float(np.median(_sample(levels[~inside]))) if (~inside).any() else 0.0
    floor = background + 0.25 * (solid - background)
    soft = np.clip((levels - floor) / max(solid - floor, 1e-6), 0.0, 1.0)
    # Pixels left out of the mask (specks, a neighbouring digit) are left out of the picture too,
    # but the anti-aliased rim of the mask's own strokes is kept.
    return np.where(ndimage.binary_dilation(inside, EIGHT_CONNECTED, iterations=2), soft,
                    0.0).astype(np.float32)


def _resize(array, width, height):
    # Pillow's resampling is anti-aliased when shrinking (its filter widens with the scale), which
    # scipy's zoom is not.
    img = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(img.resize((max(1, width), max(1, height)), Image.Resampling.BILINEAR))


def stroke_width(mask):
    """Mean stroke width in pixels of a boolean ink mask: ink area over half its boundary length."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    # The interior is what a cross-shaped (4-connected) erosion keeps; the rest is the boundary.
    boundary = area - int(ndimage.binary_erosion(mask, border_value=0).sum())
    return 2.0 * area / max(boundary, 1)


def normalise_stroke_width(digit):
    """The digit at SUPERSAMPLE x 20 pixels on its long side, its strokes first thickened to
    MNIST's width if they are much thinner. That is judged at the crop's own resolution: a
    one-pixel pen line shrunk into a 20x20 box would fade to a faint grey trace the model has
    never seen, and once faded it could no longer be measured. (Thinning bold marker strokes
    the same way was tried and read worse: erosion cannot reopen a loop the marker closed.)"""
    mask = digit > 0.5
    width = stroke_width(mask)
    target = MNIST_STROKE_RATIO * max(digit.shape)
    if 0 < width < 0.75 * target:
        radius = int(round((target - width) / 2))
        if radius >= 1:
            # A square pen of radius pixels drawn along every stroke.
            pen = np.ones((2 * radius + 1, 2 * radius + 1), bool)
            wider = ndimage.binary_dilation(np.pad(mask, radius), pen)
            digit = np.maximum(np.pad(digit, radius), wider.astype(np.float32))
    h, w = digit.shape
    scale = 20 * SUPERSAMPLE / max(h, w)
    return np.clip(_resize(digit, round(w * scale), round(h * scale)), 0.0, 1.0)


def centre_in_28x28(digit):
    """Place the digit in a 28x28 field (at SUPERSAMPLE resolution) with its centre of mass at
    the centre, then average SUPERSAMPLE x SUPERSAMPLE blocks down to 28x28."""
    s = SUPERSAMPLE
    size = 28 * s
    h, w = digit.shape
    cy, cx = ndimage.center_of_mass(digit)
    # MNIST digits have their centre of mass on pixel (14, 14) of the 28x28 field (measured: the
    # test-set mean is 13.99, 14.00); that pixel's centre is at 14*s + (s-1)/2 supersampled.
    target = 14 * s + (s - 1) / 2
    top = int(round(target - cy))
    left = int(round(target - cx))
    canvas = np.zeros((size, size), dtype=np.float32)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, size), min(left + w, size)
    canvas[y0:y1, x0:x1] = digit[y0 - top:y1 - top, x0 - left:x1 - left]
    return canvas.reshape(28, s, 28, s).mean(axis=(1, 3))


# ---------------------------------------------------------------------------------------------
# A whole number -> its digits

def find_digits(image, classify):
    """The digits of the number written in the picture, left to right, as Digit tuples.

    classify maps a batch of normalised tensors (N x 1 x 28 x 28) to probabilities (N x 10); it
    chooses where digits that touch are cut. Raises the errors of read_ink."""
    return split_number(read_ink(image), classify)


def split_number(ink, classify):
    """The digits in ink (an Ink), left to right.

    Handwriting as people write it: pieces of ink one above the other make one digit (see
    digit_groups); a group too wide for one digit is cut at the thin places of its ink; then, along
    each run of pieces that overlap or touch, the way of joining them into digits that reads best
    is chosen (see _choose_digits), so a 5 whose bar floats a little aside stays one 5 and two
    digits that touch become two."""
    groups = digit_groups(ink)
    if not groups:
        return []
    line = float(np.median([g.height for g in groups if g.height >= 0.5 * max(x.height for x in groups)]))
    chains = [_atoms(ink, g, line) for g in groups]
    sheared = groups[0].sheared
    digits = []
    for part in _choose_digits(ink, chains, line, classify):
        box = ndimage.find_objects(part.astype(np.int8))[0]
        digits.append((float(sheared[part].mean()), box, part))
    digits.sort(key=lambda d: d[0])
    return [Digit(_original_box(box, ink.scale), _tensor_in(ink, part, box))
            for _, box, part in digits]


class Group(NamedTuple):
    """Pieces of ink taken for one digit (or several that touch): mask (bool, whole picture),
    box (slices), left and right along the writing, height (rows), sheared (each pixel's
    position along the writing)."""
    mask: np.ndarray
    box: tuple
    left: float
    right: float
    height: int
    sheared: np.ndarray


def digit_groups(ink):
    """The ink's pieces grouped into digits, in no particular order: pieces one above the other,
    seen along the writing's common slant, make one digit (a 4 in two strokes, a broken 7, a 5
    whose bar floats); specks far smaller than the digits beside them are left out."""
    labels, count = label_pieces(ink.mask)
    if count == 0:
        return []
    h, w = ink.mask.shape
    ys, xs = np.mgrid[0:h, 0:w]
    sheared = (xs - _common_slant(ink.mask, labels, count) * (ys - h / 2)).astype(np.float32)
    ids = np.arange(1, count + 1)
    left = np.asarray(ndimage.minimum(sheared, labels, ids))
    right = np.asarray(ndimage.maximum(sheared, labels, ids)) + 1
    heights = np.array([b[0].stop - b[0].start for b in ndimage.find_objects(labels)])
    # The height of a digit in this picture: the median of the pieces that are not fragments.
    height = float(np.median(heights[heights >= 0.5 * heights.max()]))
    groups = []
    for members in _group_pieces(left, right, heights < 0.6 * height):
        mask = np.isin(labels, ids[members])
        box = ndimage.find_objects(mask.astype(np.int8))[0]
        group_height = box[0].stop - box[0].start
        lo, hi = float(left[members].min()), float(right[members].max())
        if max(group_height, hi - lo) < 0.3 * height:
            continue  # a speck, a dot or a comma beside digits of full height
        groups.append(Group(mask, box, lo, hi, group_height, sheared))
    return groups


def _common_slant(mask, labels, count):
    """How far the writing leans: dx/dy of its strokes (negative when the tops lean right, y
    growing downwards), from the second moments of each piece about its own centre, so that a
    drifting baseline between digits does not count as slant. Clipped to 27 degrees."""
    ys, xs = np.nonzero(mask)
    lab = labels[ys, xs]
    n = np.bincount(lab, minlength=count + 1).astype(np.float64)
    n[0] = 1
    my = np.bincount(lab, ys, count + 1) / n
    mx = np.bincount(lab, xs, count + 1) / n
    dy, dx = ys - my[lab], xs - mx[lab]
    var_y = float((dy * dy).sum())
    if var_y <= 0:
        return 0.0
    return float(np.clip((dx * dy).sum() / var_y, -0.5, 0.5))


def _group_pieces(left, right, short):
    """Lists of piece indices that make one digit: pieces whose extents along the writing overlap
    by at least half the narrower one's width, or at all where one of them is short (a floating
    bar, a fragment of a broken stroke), joined until no more join."""
    order = np.argsort(left)
    groups = [[i] for i in order]
    spans = [(left[i], right[i]) for i in order]
    merged = True
    while merged:
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                (l1, r1), (l2, r2) = spans[a], spans[b]
                overlap = min(r1, r2) - max(l1, l2)
                either_short = all(short[groups[a]]) or all(short[groups[b]])
                if overlap >= 0.5 * min(r1 - l1, r2 - l2) or overlap > 0 and either_short:
                    groups[a] += groups.pop(b)
                    spans[a] = (min(l1, l2), max(r1, r2))
                    spans.pop(b)
                    merged = True
                    break
            if merged:
                break
    return [np.array(g) for g in groups]


def _atoms(ink, group, line):
    """(mask, left, right, sliced) of the pieces a group may be made of, left to right: the whole group
    when it is narrow enough for one digit; else the parts that stay apart once the strokes are
    thinned (digits that touch usually do so where the ink is thinner than a stroke), each given
    back the ink nearest to it; a part still too wide for one digit is sliced at the thin places
    of its ink along the writing."""
    if group.right - group.left <= 0.75 * line:
        return [(group.mask, group.left, group.right, False)]
    box = group.box
    region = group.mask[box]
    sheared = group.sheared[box]
    stroke = stroke_width(region)
    parts = [region]
    # Thinned a little at a time, so that a contact no thicker than the strokes parts first.
    for fraction in (0.3, 0.5, 0.7):
        radius = max(1, int(round(fraction * stroke)))
        parts = [piece for part in parts for piece in
                 (_pull_apart(part, radius) if np.ptp(sheared[part]) + 1 > 0.9 * line else [part])]
    atoms = []
    for part in parts:
        lo, hi = float(sheared[part].min()), float(sheared[part].max()) + 1
        slices = [(part, lo, hi)] if hi - lo <= 1.5 * line else _slices(ink, part, box, sheared, lo, hi, line)
        for mask, a, b in slices:
            full = np.zeros(ink.mask.shape, bool)
            full[box] = mask
            atoms.append((full, a, b, len(slices) > 1))
    return sorted(atoms, key=lambda a: (a[1] + a[2]) / 2)


def _pull_apart(region, radius):
    """The parts of region that stay apart once its strokes are thinned by radius pixels, each
    given back the ink nearest to it; [region] if it stays whole."""
    core, count = label_pieces(ndimage.binary_erosion(region, iterations=radius))
    sizes = np.bincount(core.ravel())
    keep = np.flatnonzero(sizes >= max(4, 0.02 * region.sum()))
    keep = keep[keep > 0]
    if len(keep) <= 1:
        return [region]
    core = np.where(np.isin(core, keep), core, 0)
    nearest = ndimage.distance_transform_edt(core == 0, return_distances=False, return_indices=True)
    owner = core[nearest[0], nearest[1]]
    return [region & (owner == k) for k in keep]


def _slices(ink, part, box, sheared, lo, hi, line):
    """(mask, left, right) of a part of a group cut straight across the writing at the minima of
    its ink's projection, and every fifth of a digit height where there is none."""
    profile = np.bincount((sheared[part] - lo).astype(np.int64), weights=ink.levels[box][part],
                          minlength=int(hi - lo) + 1)
    smooth = ndimage.uniform_filter1d(profile, max(1, int(0.05 * line)), mode="constant")
    margin = max(1, int(0.1 * line))
    window = ndimage.minimum_filter1d(smooth, 2 * margin + 1, mode="nearest")
    minima = [i for i in range(margin, len(smooth) - margin) if smooth[i] == window[i]]
    cuts = []
    for i in sorted(minima, key=lambda i: smooth[i]):
        if all(abs(i - c) >= margin for c in cuts):
            cuts.append(i)
    step = max(1, int(0.2 * line))
    cuts += [i for i in range(step, len(smooth) - margin, step)
             if all(abs(i - c) >= margin for c in cuts)]
    edges = [lo] + sorted(lo + c for c in cuts) + [hi]
    out = []
    for a, b in zip(edges, edges[1:]):
        mask = part & (sheared >= a) & (sheared < b)
        if mask.any():
            out.append((mask, float(a), float(b)))
    return out


# How wide single handwritten digits are: for each digit 0-9, the density of its ink box's width
# over its height in the MNIST training set, in steps of 0.1 from 0 (ink at grey level 0.3;
# smoothed over neighbouring steps, as a 20-pixel-tall digit's width comes in whole pixels). A 1
# is narrow, a 0 or a 2 often wider than tall: a slice read as a 6 but half as wide as a 6 is
# likelier half of a 0, and two digits read as one are wider than that one digit ever is.
WIDTH_TABLE = np.array([
    [0.00, 0.00, 0.00, 0.00, 0.13, 0.51, 0.78, 1.00, 1.62, 2.09, 1.91, 1.19, 0.46, 0.16, 0.11],
    [0.05, 1.02, 2.05, 1.65, 1.52, 1.68, 1.00, 0.41, 0.29, 0.20, 0.08, 0.03, 0.01, 0.00, 0.00],
    [0.00, 0.00, 0.00, 0.00, 0.12, 0.46, 0.69, 0.88, 1.44, 1.94, 1.90, 1.30, 0.58, 0.24, 0.22],
    [0.00, 0.00, 0.01, 0.03, 0.42, 1.26, 1.54, 1.39, 1.73, 1.72, 1.12, 0.53, 0.17, 0.04, 0.02],
    [0.00, 0.00, 0.00, 0.02, 0.44, 1.35, 1.61, 1.39, 1.68, 1.66, 1.08, 0.53, 0.17, 0.04, 0.02],
    [0.00, 0.00, 0.00, 0.01, 0.21, 0.67, 0.87, 0.89, 1.25, 1.55, 1.51, 1.23, 0.75, 0.39, 0.38],
    [0.00, 0.00, 0.00, 0.06, 0.77, 1.98, 2.05, 1.48, 1.50, 1.21, 0.59, 0.24, 0.07, 0.02, 0.02],
    [0.00, 0.00, 0.00, 0.04, 0.52, 1.52, 1.77, 1.49, 1.66, 1.48, 0.87, 0.41, 0.13, 0.05, 0.03],
    [0.00, 0.00, 0.01, 0.05, 0.60, 1.66, 1.86, 1.43, 1.54, 1.42, 0.85, 0.39, 0.13, 0.04, 0.02],
    [0.00, 0.00, 0.01, 0.09, 1.09, 2.62, 2.46, 1.39, 1.10, 0.79, 0.32, 0.10, 0.02, 0.01, 0.01],
])

# Each digit read costs this much log-likelihood, so that pieces of one digit, which may each look
# like a digit to a model that has only seen whole ones, are not read as several without cause:
# much for a digit that includes a straight slice of ink, little for one made of whole pieces
# (which come apart where the ink is thin, as at the point where two digits touch).
DIGIT_COST = 2.0
PIECE_COST = 0.5


def _log_shape_prior(probs, width, height):
    """log P(shape | a single digit) for a part width x height (both in line heights), given the
    model's probabilities for it: the class-wise width density, weighed by the probabilities, and
    a part far shorter than the line (a floating bar, a dot) made unlikely."""
    if width < 1.5:
        density = WIDTH_TABLE[:, int(width * 10)]
    else:
        density = WIDTH_TABLE[:, -1] * np.exp(-(width - 1.5) / 0.2)
    joint = float((probs * np.maximum(density, 1e-3)).sum())
    short = max(0.0, 0.75 - height) / 0.2
    return np.log(joint) - short * short


def _choose_digits(ink, chains, line, classify):
    """The masks of the digits: for each chain of slices, the run of consecutive slices joined
    into each digit that makes the likeliest reading (dynamic programming over the slices), each
    digit scored by the model's probabilities for it and how likely its shape is."""
    candidates, tensors = [], []
    for n, chain in enumerate(chains):
        if len(chain) == 1:
            continue
        for i in range(len(chain)):
            mask = np.zeros(ink.mask.shape, bool)
            for j in range(i, len(chain)):
                mask = mask | chain[j][0]
                width = max(a[2] for a in chain[i:j + 1]) - min(a[1] for a in chain[i:j + 1])
                if j > i and width > 1.6 * line:
                    break
                box = ndimage.find_objects(mask.astype(np.int8))[0]
                try:
                    tensors.append(_tensor_in(ink, mask, box))
                except NoDigitError:
                    continue
                height = (box[0].stop - box[0].start) / line
                cost = DIGIT_COST if any(a[3] for a in chain[i:j + 1]) else PIECE_COST
                candidates.append((n, i, j + 1, mask, width / line, height, cost))
    probs = classify(torch.stack(tensors)).double().numpy() if tensors else []
    best = {}
    for (n, i, j, mask, width, height, cost), p in sorted(zip(candidates, probs), key=lambda c: c[0][:3]):
        start = best.get((n, i), (0.0, [])) if i else (0.0, [])
        if i and (n, i) not in best:
            continue
        score = start[0] + np.log(p.max()) + _log_shape_prior(p, width, height) - cost
        if (n, j) not in best or score > best[(n, j)][0]:
            best[(n, j)] = (score, start[1] + [mask])
    parts = []
    for n, chain in enumerate(chains):
        parts += [chain[0][0]] if len(chain) == 1 else best[(n, len(chain))][1]
    return parts


def _tensor_in(ink, part, box):
    # The part's digit on its own: only the ink inside the part's group box is looked at.
    return to_mnist(ink.levels[box], part[box], ink.name)


def _original_box(box, scale):
    """(x0, y0, x1, y1) of a pair of slices, in the original picture's pixels."""
    y, x = box
    return (int(x.start * scale), int(y.start * scale),
            int(np.ceil(x.stop * scale)), int(np.ceil(y.stop * scale)))
