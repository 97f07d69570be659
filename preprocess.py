"""
Pictures -> what MNIST digits look like: white ink on black, the ink scaled to fit 20x20 and
centred by its centre of mass in 28x28, normalised as in training.

    from preprocess import preprocess_image
    x = preprocess_image("photo.jpg")               # the 1x28x28 tensor of the one digit in it

A photo is none of that MNIST recipe, and resizing it to 28x28 scores near chance, so each step
is redone: read_ink() turns any picture into background-free ink levels and the mask of the ink
(paper tint, lighting, polarity, the table around the sheet, specks and ruled lines dealt with);
to_mnist() turns the ink of one digit into the model's input (segment.py splits the ink of a
whole number into digits). Every step raises a PredictError subclass with a one-sentence message
for bad input.
"""
import contextlib
import os
import threading
import warnings
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
    the pixels that are ink), scale (pixels of the original picture per pixel here), name, and
    pieces, label_pieces(mask) when it is already known (None otherwise)."""
    levels: np.ndarray
    mask: np.ndarray
    scale: float
    name: str
    pieces: tuple = None


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
    ink pixels found. Ink scattered in more than MAX_PIECES pieces is noise or a texture, not
    handwriting: NoDigitError, as for a blank picture."""
    name = "the image" if isinstance(image, Image.Image) else os.fspath(image)
    img, scale = open_image(image, with_scale=True)
    grey = read_grey(img)
    levels = to_ink_polarity(remove_background(grey))
    try:
        mask, pieces = _find_ink(levels, name)
    except NoDigitError:
        # A bold digit filling the picture leaves the paper only in the corners, and a curved
        # lighting surface can bend to follow the ink itself; a flat paper level cannot.
        levels = to_ink_polarity(grey - _paper_level(grey))
        mask, pieces = _find_ink(levels, name)
    if pieces[1] > MAX_PIECES:
        raise NoDigitError(f"No digit found in {name}: its ink lies in {pieces[1]} separate pieces, "
                           f"as in noise or a texture, not in handwriting.")
    return Ink(levels, mask, scale, name, pieces)


def open_image(image, with_scale=False):
    """The image as a loaded PIL image, upright (EXIF orientation applied), at most MAX_SIDE
    on its long side (and, with_scale, how many original pixels one of its pixels spans).
    Raises ImageNotFoundError or NotAnImageError naming the path, or NoDigitError for a picture
    under 3 pixels on a side."""
    if isinstance(image, Image.Image):
        img, path = image, "the image"
    else:
        path = os.fspath(image)
        if not os.path.exists(path):
            broken = os.path.islink(path)
            raise ImageNotFoundError(f"No such image: {path}" + (" (a link to nothing)." if broken else "."))
        if os.path.isdir(path):
            raise NotAnImageError(f"{path} is a folder, not an image.")
        if not os.path.isfile(path):  # a pipe or a device would keep Pillow waiting or reading
            raise NotAnImageError(f"{path} is not a regular file, so not an image file.")
        img = open_file(path, path)
    source = img
    try:
        if img.format != "JPEG":
            # Decoded before EXIF is looked for: a PNG keeps it after the pixels, and looking
            # decodes them with any error swallowed, leaving a half-decoded picture behind.
            img.load()
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
        if source is not image:
            source.close()
        raise NotAnImageError(f"{path} could not be decoded: the file is truncated or "
                              f"corrupt.") from error
    if source is not image and getattr(source, "n_frames", 1) > 1:
        # The first frame of an animation or a multi-page scan; the file is not kept open.
        img = img.copy() if img is source else img
        source.close()
    if min(full_size) < 3:
        raise NoDigitError(f"No digit found in {path}: the image is only "
                           f"{full_size[0]}x{full_size[1]} pixels.")
    return (img, max(full_size) / max(img.size)) if with_scale else img


def open_file(source, name):
    """Image.open(source), a path or a file object, with its failures as NotAnImageError
    naming name. Pillow refuses pictures of more than twice its MAX_IMAGE_PIXELS and only warns
    below that; those are refused too, unless they are JPEG, which open_image decodes at a
    fraction of their size: decoding one whole takes gigabytes and seconds."""
    try:
        with _quiet():
            img = Image.open(source)
    except UnidentifiedImageError as error:
        raise NotAnImageError(f"{name} is not an image file Pillow can read.") from error
    except Image.DecompressionBombError as error:
        raise NotAnImageError(f"{name} has too many pixels to open safely "
                              f"(Pillow's decompression-bomb guard).") from error
    except OSError as error:
        raise NotAnImageError(f"{name} could not be opened as an image ({error}).") from error
    limit = Image.MAX_IMAGE_PIXELS
    width, height = img.size
    if limit and img.format != "JPEG" and width * height > limit:
        img.close()
        raise NotAnImageError(f"{name} has too many pixels to open safely ({width}x{height}; "
                              f"Pillow's decompression-bomb guard allows {limit}).")
    return img


# warnings.catch_warnings() swaps the process's warning filters in and out: two threads inside it
# at once (predict.py reads a folder with a pool of threads) could leave them swapped for good.
_FILTERS = threading.Lock()


@contextlib.contextmanager
def _quiet():
    """Pillow's warnings silenced for a moment (their news is in the sentence raised, if any)."""
    with _FILTERS, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _upright_size(img):
    # The size before any draft decoding, turned as EXIF orientation 5-8 turns the picture.
    try:
        with _quiet():
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        turned = False
    return img.size[::-1] if turned else img.size


def _upright(img):
    # A broken EXIF block must not cost the user the prediction (nor print Pillow's warning
    # about it): keep the image as stored.
    try:
        with _quiet():
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
        grey = np.nan_to_num(grey, nan=0.0, posinf=0.0, neginf=0.0)  # a float TIFF may hold them
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
    # A background of one exact grey level (a canvas or a drawing program's export, a cleaned
    # scan) has no lighting to fit, and fitting costs most of this function's time. It is that
    # when half the pixels are alike and the rest are ink with its soft edges; not when values
    # near the level lie away from any ink, as where a sheet blown out to pure white by the
    # light fades into shadow.
    level = np.median(values)
    alike = sample == level
    if 2 * np.count_nonzero(alike) >= alike.size:
        near_ink = ndimage.binary_dilation(np.abs(sample - level) >= 0.15, iterations=2)
        if np.count_nonzero(~alike & ~near_ink) <= 0.01 * alike.size:
            return grey - np.float32(level)
    basis = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], axis=1)
    # Two starting guesses for which pixels are paper: all of them (right when the ink is thin,
    # however uneven the light), or the larger side of an Otsu split (right when a bold digit
    # covers a third of the picture, which a quadratic could otherwise bend to follow). Each is
    # refined; the fit that leaves the paper flattest wins.
    side = values > otsu_threshold(values)
    starts = [np.ones(values.shape, bool), side if side.mean() >= 0.5 else ~side]
    fits = [_fit_paper(basis, values, keep) for keep in starts]
    # Paper under light is never brighter than the brightest pixel nor darker than the darkest:
    # a surface that leaves that range is following a bold digit's strokes, not the lighting
    # (and would turn the digit inside out). Then a flat paper level is the better guess.
    lo, hi = values.min() - 0.05, values.max() + 0.05
    fits = [fit for fit in fits if lo <= (surface := basis @ fit[0]).min() and surface.max() <= hi]
    if not fits:
        return grey - _paper_level(grey)
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
    return _find_ink(levels, name)[0]


def _find_ink(levels, name):
    """(find_ink's mask, its pieces as label_pieces numbers them). Most pictures lose no piece
    on the way, so the pieces are numbered once, not for each step that looks at them."""
    mask = _drop_ruled_lines(_threshold(levels, name))
    mask, pieces = _drop_frames(mask, label_pieces(mask))
    kept = _set_aside_edge_background(levels, mask, pieces, name)
    return _drop_specks(kept, pieces if kept is mask else label_pieces(kept))


# A handwritten digit is one to three pieces of ink, and the longest numbers in the benchmarks
# eight or fewer; fifty leaves room for long numbers written in broken strokes, while random
# noise leaves a hundred or more pieces.
MAX_PIECES = 50


def _threshold(levels, name):
    blank = NoDigitError(f"No digit found in {name}: the image is blank or uniform.")
    if float(levels.max()) < 1e-3:
        raise blank
    mask = levels > otsu_threshold(levels)
    background = levels[~mask]
    if background.size == 0 or mask.sum() < 3:
        raise blank
    contrast = float(np.median(_sample(levels[mask]))) - float(np.median(_sample(background)))
    # On plain noise Otsu still splits the histogram, but the two halves are only about 1.6
    # standard deviations apart; real ink stands many deviations clear of the paper.
    if contrast < max(6 * float(background.std()), 0.02):
        # The background's spread also counts the soft edges of a bold, blurred digit filling
        # the picture; the noise is what changes from one background pixel to the next.
        jitter = float((levels - ndimage.uniform_filter(levels, 5, mode="nearest"))[~mask].std())
        if contrast < max(6 * jitter, 0.02):
            raise blank
    return mask


def label_pieces(mask):
    """(labels, count): the mask's 8-connected pieces numbered 1..count (0 is background)."""
    return ndimage.label(mask, structure=EIGHT_CONNECTED)


def _border_ids(labels):
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.unique(edge[edge > 0])


def _set_aside_edge_background(levels, mask, pieces, name):
    """The mask without the table around a photographed sheet, or a shadow at its edge.

    Such a region touches the picture's border, is often darker than any pen, and is solid: far
    thicker than a pen stroke. A digit cropped tightly touches the border too, but with strokes
    as thin as the rest of the ink. So the ink is looked for again away from the border pieces
    (their darkness may have pushed the first threshold past the pen), and only the border
    pieces much thicker than that ink's strokes are set aside. pieces: label_pieces(mask)."""
    labels, count = pieces
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
    # A digit cropped tightly leaves, away from the border, only fragments of itself, a few
    # pixels from its border pieces; the digit on a photographed sheet stands clear of the table
    # by a margin of paper (here: 4 pixels, or 3% of the picture's long side if more).
    clearance = float(ndimage.distance_transform_edt(~edge)[inner].min())
    if clearance < max(4.0, 0.03 * max(mask.shape)):
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


def _drop_specks(mask, pieces):
    """(mask, pieces): the ink mask without isolated specks (dust, noise, JPEG artefacts),
    8-connected pieces smaller than a tenth of the largest, and its label_pieces. pieces:
    label_pieces(mask)."""
    labels, count = pieces
    if count <= 1:
        return mask, pieces
    size = np.bincount(labels.ravel())
    size[0] = 0
    keep = size >= 0.1 * size.max()
    keep[0] = False
    if keep[1:].all():
        return mask, pieces
    mask = keep[labels]
    return mask, label_pieces(mask)


def _drop_ruled_lines(mask):
    """The ink mask without the ruled lines of lined or squared paper, or of a table around a
    cell: straight horizontal or vertical runs across nine tenths of the picture, thin for their
    length, and either at least three times as long as the tallest piece of writing clear of the
    picture's border, or half as long again with paper beside it, clear of the writing or far
    thinner than its strokes. (A digit's own bar or stem is neither: it is as thick as the rest
    of the digit, which joins it. A digit cropped so tightly that it touches the border is left
    as it is: it has no such piece beside it.)"""
    h, w = mask.shape
    lines = _long_runs(mask, max(int(0.9 * w), 8)) | _long_runs(mask.T, max(int(0.9 * h), 8)).T
    if not lines.any():
        return mask
    labels, count = label_pieces(mask & ~ndimage.binary_dilation(lines, iterations=1))
    border = set(_border_ids(labels))
    clear = [s for k, s in enumerate(ndimage.find_objects(labels), start=1) if k not in border]
    if not clear:
        return mask
    tall = max(max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in clear)
    # Each piece: writing clear of the border, not a speck of noise (nor a sliver of a blurred
    # line's edge, which runs to the border).
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[list(border)] = 0
    writing = sizes >= 0.1 * sizes.max()
    pen = stroke_width(writing[labels])
    line_labels, count = label_pieces(lines)
    areas = np.bincount(line_labels.ravel(), minlength=count + 1)
    long_ids = []
    for i, s in enumerate(ndimage.find_objects(line_labels), start=1):
        length = max(s[0].stop - s[0].start, s[1].stop - s[1].start)
        # A ruled line is thin for its length; a bold stroke across a tightly cropped digit is not.
        if areas[i] / length > length / 15 or length < 1.5 * tall:
            continue
        if length < 3 * tall:
            # The two pixels on each side of the line: paper beside a table's line, ink beside a
            # run through the middle of a bold stroke. Where writing touches the line, it must be
            # far thinner than the writing's strokes: a digit's own stem or bar is not.
            box = tuple(slice(max(x.start - 3, 0), x.stop + 3) for x in s)
            band = ndimage.binary_dilation(line_labels[box] == i, iterations=1)
            beside = ndimage.binary_dilation(band, iterations=2) & ~band
            if mask[box][beside].mean() > 0.25:
                continue
            if writing[labels[box][beside]].any() and stroke_width(line_labels[s] == i) > 0.6 * pen:
                continue
        long_ids.append(i)
    if not long_ids:
        return mask
    return mask & ~ndimage.binary_dilation(np.isin(line_labels, long_ids), iterations=1)


def _drop_frames(mask, pieces):
    """(mask, pieces): the ink mask (pieces: its label_pieces) and its pieces without the
    printed boxes around the writing, a form's fields or a box drawn with a ruler. A box is a
    piece whose bounding box has ink along almost all of each of its four sides, within a band
    a tenth of its shorter side deep, and at least a quarter paper inside, its lines thinner
    than that band, with writing inside it. Only those lines are taken out (see _first_line): a
    digit that touches its box, or runs along it, keeps its strokes. (A digit's strokes along
    its own bounding box are thicker for it, or leave its corners empty, or hold no ink, as a
    square 0 does.)"""
    labels, count = pieces
    frames = np.zeros(mask.shape, bool)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
        if min(height, width) < 20:
            continue
        own = labels[box] == k
        band = max(2, min(height, width) // 10)
        sides = [own[:band], own[:-band - 1:-1], own.T[:band], own.T[:-band - 1:-1]]
        inside = own[band:-band, band:-band]
        # A box's lines are thin for it, a digit's strokes along its bounding box are not; and a
        # box is drawn around writing: a square 0 holds no ink, an empty box is left as it is.
        if (min(side.any(0).mean() for side in sides) < 0.9 or inside.mean() > 0.75
                or max(np.median(side.sum(0)) for side in sides) >= band
                or mask[box][band:-band, band:-band].mean() < 0.02):
            continue
        line = np.zeros(own.shape, bool)
        views = [line[:band], line[:-band - 1:-1], line.T[:band], line.T[:-band - 1:-1]]
        for side, view in zip(sides, views):
            view |= _first_line(side)
        frames[box] |= line
    if not frames.any():
        return mask, pieces
    mask = mask & ~frames
    return mask, label_pieces(mask)


def _first_line(side):
    """In a band of ink along an edge (the edge is row 0), the straight line that runs along
    it: where the first ink met from the edge mostly lies, as thick as the band mostly holds
    ink. (A digit's stroke that crosses the line and sticks out beyond it moves the first ink
    in a few columns only.)"""
    present = np.flatnonzero(side.any(0))
    first = np.argmax(side, axis=0)[present].astype(np.float64)
    thickness = np.median(side.sum(0)[present])
    inliers = np.ones(len(present), bool)
    for _ in range(3):
        slope, offset = np.polyfit(present[inliers], first[inliers], 1)
        inliers = np.abs(first - (slope * present + offset)) <= max(2.0, thickness)
        if inliers.sum() < 2:
            break
    top = slope * np.arange(side.shape[1]) + offset
    rows = np.arange(side.shape[0])[:, None]
    return side & (rows >= np.floor(top) - 1) & (rows <= np.ceil(top) + thickness)


def _long_runs(mask, length):
    """The pixels of mask that lie in a horizontal run of at least `length` pixels."""
    out = np.zeros(mask.shape, bool)
    # Only a row with that much ink can hold such a run: counting first spares most pictures,
    # which have none, the search for runs through every row.
    candidates = np.flatnonzero(np.count_nonzero(mask, axis=1) >= length)
    if not len(candidates):
        return out
    padded = np.zeros((len(candidates), mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask[candidates]
    rows, starts = np.nonzero(np.diff(padded, axis=1) == 1)
    ends = np.nonzero(np.diff(padded, axis=1) == -1)[1]
    for r, s, e in zip(candidates[rows], starts, ends):
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
    # (Two 8-connected dilations, as one separable 5x5 maximum: the same pixels, a third of
    # the time.)
    return np.where(ndimage.maximum_filter(inside, size=5, mode="constant"), soft,
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
    # The interior is what a cross-shaped (4-connected) erosion keeps (the pixels whose four
    # neighbours are ink, outside the picture counting as paper); the rest is the boundary.
    padded = np.pad(mask, 1)
    interior = (mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
                & padded[1:-1, 2:])
    boundary = area - int(np.count_nonzero(interior))
    return 2.0 * area / max(boundary, 1)


def normalise_stroke_width(digit):
    """The digit at SUPERSAMPLE x 20 pixels on its long side, its strokes first thickened to
    MNIST's width if they are much thinner. That is judged at the crop's own resolution: a
    one-pixel pen line shrunk into a 20x20 box would fade to a faint grey trace the model has
    never seen, and once faded it could no longer be measured. (Thinning bold marker strokes
    the same way was tried and read worse: erosion cannot reopen a loop the marker closed.)"""
    digit = widen_strokes(digit, MNIST_STROKE_RATIO * max(digit.shape))
    h, w = digit.shape
    scale = 20 * SUPERSAMPLE / max(h, w)
    return np.clip(_resize(digit, round(w * scale), round(h * scale)), 0.0, 1.0)


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
    return np.pad(np.clip(_resize(ink, width, LINE_HEIGHT), 0.0, 1.0), LINE_PAD)
