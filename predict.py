"""
Predict the digit in your own images with the CNN trained by mnist_cnn_model.py.

    python predict.py                      # reads the image named by image_path below
    python predict.py photo.jpg            # or name files and folders on the command line
    python predict.py digits/ --top-k 3    # every image in a folder, the 3 likeliest digits each
    python predict.py photo.jpg --show     # also write a figure: input, what the model saw, probabilities

From Python:

    from predict import load_model, predict_user_input, predict_with_probabilities
    model = load_model("mnist_cnn.pt")
    digit = predict_user_input(model, "photo.jpg")                 # an int
    digit, probs = predict_with_probabilities(model, "photo.jpg")  # and the 10 probabilities

Photos, scans and drawings are turned into what MNIST digits look like (white ink on black, the
ink scaled to fit 20x20 and centred by its centre of mass in 28x28) by preprocess_image(), which
every entry point uses. Problems are raised as PredictError subclasses with a one-sentence message:
WeightsNotFoundError, BadWeightsError, ImageNotFoundError, NotAnImageError and NoDigitError
(the image is blank or uniform: nothing to read).
"""
import argparse
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_cnn_model import CNN, MNIST_MEAN, MNIST_STD

# Edit this to point at your own image, then run `python predict.py`.
image_path = "my_digit.png"

DEFAULT_WEIGHTS = "mnist_cnn.pt"

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
# Folders are predicted this many images per forward pass.
BATCH_SIZE = 256


class PredictError(Exception):
    """Base class of the errors predict.py raises for bad input; str(error) is one sentence."""


class WeightsNotFoundError(PredictError, FileNotFoundError):
    """The weights file does not exist (the model has not been trained yet)."""


class BadWeightsError(PredictError, ValueError):
    """The file is not a PyTorch weights file, or holds weights of another architecture."""


class ImageNotFoundError(PredictError, FileNotFoundError):
    """The image path does not exist."""


class NotAnImageError(PredictError, ValueError):
    """The path exists but is not an image Pillow can read."""


class NoDigitError(PredictError, ValueError):
    """The image has no ink at all (blank or uniform), so there is no digit to read."""


# ---------------------------------------------------------------------------------------------
# Loading the model

def load_model(weights_path=DEFAULT_WEIGHTS, device=None):
    """A CNN in eval mode with the weights from weights_path, on device (default: the CPU).

    weights_only=True means no pickled code from the file ever runs, and map_location lets a file
    saved on a GPU machine load on a CPU-only one."""
    device = _resolve_device(device)
    weights_path = os.fspath(weights_path)
    if not os.path.exists(weights_path):
        raise WeightsNotFoundError(
            f"No weights file at {weights_path}: train the model first with "
            f"`python mnist_cnn_model.py`.")
    if os.path.isdir(weights_path):
        raise BadWeightsError(f"{weights_path} is a folder, not a weights file.")
    try:
        state = torch.load(weights_path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many types here (zip, pickle, EOF, magic number)
        raise BadWeightsError(
            f"{weights_path} is not a PyTorch weights file (a state_dict saved by "
            f"mnist_cnn_model.py) and cannot be loaded.") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadWeightsError(f"{weights_path} does not hold a state_dict of tensors, so it is not "
                              f"weights for this model.")
    model = CNN()
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # missing or unexpected keys, or tensors of the wrong shape
        raise BadWeightsError(
            f"{weights_path} holds weights for a different model architecture than the CNN in "
            f"mnist_cnn_model.py.") from error
    return model.to(device).eval()


def _resolve_device(device):
    # The CPU by default: a forward pass of this small CNN takes about a millisecond there, less
    # than starting CUDA would, and preprocessing runs on the CPU anyway.
    if device is None:
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise PredictError(f"{device!r} is not a device name (use cpu, cuda, cuda:N or mps).") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError("CUDA was asked for but no CUDA GPU is available; use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PredictError("Apple MPS was asked for but is not available; use --device cpu.")
    return device


# ---------------------------------------------------------------------------------------------
# Preprocessing: any image file -> what an MNIST digit looks like

def preprocess_image(image):
    """The normalised 1x28x28 float tensor the model reads, from a path or a PIL image.

    The MNIST recipe, step by step: read the image as grey levels; remove uneven lighting and
    paper tint; make the ink bright on a dark background; separate ink from background (Otsu); crop
    to the ink; bring thin strokes to MNIST's width; scale to fit 20x20 keeping the aspect ratio;
    place in 28x28 with the centre of mass at the centre; normalise as training did.
    Raises ImageNotFoundError, NotAnImageError or NoDigitError."""
    name = "the image" if isinstance(image, Image.Image) else os.fspath(image)
    grey = read_grey(image)
    ink = to_ink_polarity(remove_background(grey))
    mask = find_ink(ink, name)
    digit = crop_to_ink(ink, mask)
    digit = normalise_stroke_width(digit)
    small = centre_in_28x28(digit)
    return torch.from_numpy((small - MNIST_MEAN) / MNIST_STD).float().unsqueeze(0)


def open_image(image):
    """The image as a loaded PIL image, upright (EXIF orientation applied), at most MAX_SIDE
    on its long side. Raises ImageNotFoundError or NotAnImageError naming the path."""
    if isinstance(image, Image.Image):
        img = image
        path = "the image"
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
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: a huge photo never fills memory.
        if img.format == "JPEG":
            img.draft(img.mode, (MAX_SIDE, MAX_SIDE))
        img.load()
        img = _upright(img)
        if max(img.size) > MAX_SIDE:
            # resize, not thumbnail: a caller's own PIL image must not be shrunk in place.
            scale = MAX_SIDE / max(img.size)
            img = _standard_mode(img).resize(
                (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                Image.Resampling.BOX)
    except Exception as error:  # Pillow's decoders raise many types on damaged files
        raise NotAnImageError(f"{path} could not be decoded: the file is truncated or "
                              f"corrupt.") from error
    return img


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


def to_ink_polarity(residual):
    """The ink bright on a black background, as in MNIST, from the background-free image. The
    ink is whichever side of the paper reaches further: dark ink on light paper gives a deep
    minimum, chalk on a board a high maximum. Extremes are taken after a 3x3 average so that a
    single noisy pixel cannot outvote a stroke."""
    smooth = F.avg_pool2d(torch.from_numpy(residual)[None, None], 3, 1, 1,
                          count_include_pad=False)[0, 0]
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


def find_ink(ink, name="the image"):
    """Boolean mask of the ink pixels. Raises NoDigitError when there is none to speak of: a
    blank or uniform image, or one whose 'ink' is no brighter than the background's own noise.

    A photo often shows the table around the sheet, or a shadow at its edge, darker than any
    pen: such pieces touch the picture's border. They are set aside and the ink looked for again
    inside; if nothing stands out there, the border pieces were the digit itself (a tight crop)."""
    mask = _threshold(ink, name)
    pieces = _pieces(mask)
    edge = _edge_pieces(mask, pieces)
    if edge.any():
        try:
            inner = _threshold(np.where(_grow(edge, 2), 0.0, ink), name)
            inner &= ~_edge_pieces(inner)
        except NoDigitError:
            inner = np.zeros_like(mask)
        # Inside ink must be pen-strong, not the JPEG ringing or anti-aliasing left around a
        # digit that itself touches the border.
        if inner.sum() >= 20 and np.median(ink[inner]) >= 0.25 * np.median(_sample(ink[mask])):
            mask, pieces = inner, None
    return _drop_specks(mask, pieces)


def _threshold(ink, name):
    if float(ink.max()) < 1e-3:
        raise NoDigitError(f"No digit found in {name}: the image is blank or uniform.")
    mask = ink > otsu_threshold(ink)
    background = ink[~mask]
    if background.size == 0 or mask.sum() < 3:
        raise NoDigitError(f"No digit found in {name}: the image is blank or uniform.")
    noise = float(background.std())
    contrast = float(np.median(_sample(ink[mask]))) - float(np.median(_sample(background)))
    # On plain noise Otsu still splits the histogram, but the two halves are only about 1.6
    # standard deviations apart; real ink stands many deviations clear of the paper.
    if contrast < max(6 * noise, 0.02):
        raise NoDigitError(f"No digit found in {name}: the image is blank or uniform.")
    return mask


def _pieces(mask):
    """(small, step, rows, starts, ends, root): the mask's 8-connected pieces as runs labelled
    on a copy at most 512 pixels on its long side (block maximum, so thin strokes survive),
    which bounds the time on noisy photos."""
    h, w = mask.shape
    step = max(1, math.ceil(max(h, w) / 512))
    small = mask
    if step > 1:
        t = torch.from_numpy(mask.astype(np.float32))[None, None]
        small = (F.max_pool2d(t, step, step, ceil_mode=True)[0, 0] > 0).numpy()
    return (small, step) + _runs_and_pieces(small)


def _paint(shape, step, full_shape, rows, starts, ends):
    # The chosen runs as a mask at full resolution.
    out = np.zeros(shape, bool)
    for r, s, e in zip(rows, starts, ends):
        out[r, s:e] = True
    if step > 1:
        out = np.repeat(np.repeat(out, step, axis=0), step, axis=1)[:full_shape[0], :full_shape[1]]
    return out


def _edge_pieces(mask, pieces=None):
    """The part of mask made of pieces that touch the picture's border (pieces: _pieces(mask),
    if already computed)."""
    small, step, rows, starts, ends, root = pieces or _pieces(mask)
    if not len(rows):
        return np.zeros_like(mask)
    touching = (rows == 0) | (rows == small.shape[0] - 1) | (starts == 0) | (ends == small.shape[1])
    on_edge = np.isin(root, root[touching])
    return mask & _paint(small.shape, step, mask.shape, rows[on_edge], starts[on_edge], ends[on_edge])


def _drop_specks(mask, pieces=None):
    """The ink mask without isolated specks (dust, noise, JPEG artefacts): 8-connected pieces
    smaller than a tenth of the largest."""
    small, step, rows, starts, ends, root = pieces or _pieces(mask)
    if len(rows) == 0:
        return mask
    size = np.zeros(len(rows), np.int64)
    np.add.at(size, root, ends - starts)
    keep = size[root] >= 0.1 * size.max()
    if keep.all():
        return mask
    return mask & _paint(small.shape, step, mask.shape, rows[keep], starts[keep], ends[keep])


def _runs_and_pieces(mask):
    """Horizontal runs of True in mask (row, start, end exclusive) and, for each run, the id of
    the 8-connected piece it belongs to (union-find over runs that touch in adjacent rows)."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]
    parent = list(range(len(rows)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(1, mask.shape[0]):
        a, a_end = first[r - 1], first[r]
        b, b_end = first[r], first[r + 1]
        while a < a_end and b < b_end:
            # Diagonal contact counts (8-connectivity): runs touch if they overlap once each is
            # widened by one pixel.
            if starts[a] <= ends[b] and starts[b] <= ends[a]:
                parent[find(a)] = find(b)
            if ends[a] < ends[b]:
                a += 1
            else:
                b += 1
    root = np.array([find(i) for i in range(len(rows))], dtype=np.int64)
    return rows, starts, ends, root


def crop_to_ink(ink, mask):
    """The ink inside the mask's bounding box, as soft levels in [0, 1]: background 0, solid ink
    1, anti-aliased edges in between, so contrast no longer depends on pen or lighting."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    ink = ink[top:bottom, left:right]
    inside = mask[top:bottom, left:right]
    solid = float(np.median(_sample(ink[inside])))
    background = float(np.median(_sample(ink[~inside]))) if (~inside).any() else 0.0
    floor = background + 0.25 * (solid - background)
    soft = np.clip((ink - floor) / max(solid - floor, 1e-6), 0.0, 1.0)
    # Specks dropped from the mask are dropped from the picture too, not just from the box.
    return np.where(_grow(inside, 2), soft, 0.0).astype(np.float32)


def _grow(mask, radius):
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.max_pool2d(t, 2 * radius + 1, 1, radius)[0, 0] > 0).numpy()


def _resize(array, width, height):
    # Pillow's resampling is anti-aliased when shrinking (its filter widens with the scale).
    img = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(img.resize((max(1, width), max(1, height)), Image.Resampling.BILINEAR))


def _fit_long_side(digit, side):
    h, w = digit.shape
    scale = side / max(h, w)
    return _resize(digit, round(w * scale), round(h * scale))


def stroke_width(mask):
    """Mean stroke width in pixels of a boolean ink mask: ink area over half its boundary length."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    padded = np.pad(mask, 1)
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]) & mask
    boundary = area - int(interior.sum())
    return 2.0 * area / max(boundary, 1)


def _dilate(mask, radius):
    """mask grown by radius pixels in every direction (a square pen), padded by radius on each
    side. Box sums through cumulative sums cost the same whatever the radius."""
    k = 2 * radius + 1
    a = np.pad(mask.astype(np.int32), 2 * radius)
    for axis in (0, 1):
        c = np.cumsum(a, axis=axis)
        c = np.concatenate([np.zeros_like(c.take([0], axis=axis)), c], axis=axis)
        n = a.shape[axis] - k + 1
        a = c.take(range(k, k + n), axis=axis) - c.take(range(0, n), axis=axis)
    return a > 0


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
            digit = np.maximum(np.pad(digit, radius), _dilate(mask, radius).astype(np.float32))
    return np.clip(_fit_long_side(digit, 20 * SUPERSAMPLE), 0.0, 1.0)


def centre_in_28x28(digit):
    """Place the digit in a 28x28 field (at SUPERSAMPLE resolution) with its centre of mass at
    the centre, then average SUPERSAMPLE x SUPERSAMPLE blocks down to 28x28."""
    s = SUPERSAMPLE
    size = 28 * s
    h, w = digit.shape
    total = float(digit.sum())
    ys, xs = np.mgrid[0:h, 0:w]
    cy = float((ys * digit).sum() / total)
    cx = float((xs * digit).sum() / total)
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
# Predicting

@torch.no_grad()
def predict_batch(model, tensors):
    """Probabilities (N x 10) for a list of preprocessed 1x28x28 tensors, in one forward pass."""
    device = next(model.parameters()).device
    batch = torch.stack(list(tensors)).to(device)
    return F.softmax(model(batch), dim=1).cpu()


def predict_with_probabilities(model, image_path):
    """(digit, probabilities): the predicted digit as an int and the ten probabilities as a list
    of floats that sums to 1 (probabilities[d] is the model's confidence in digit d)."""
    probs = predict_batch(model, [preprocess_image(image_path)])[0]
    return int(probs.argmax()), probs.tolist()


def predict_user_input(model, image_path):
    """The digit (an int, 0-9) in the image at image_path."""
    return predict_with_probabilities(model, image_path)[0]


# ---------------------------------------------------------------------------------------------
# Command line

def image_files(paths):
    """Each path in order; a folder stands for the image files directly in it, sorted by name
    (other files in a folder, such as notes or hidden files, are skipped)."""
    extensions = {ext for ext, _ in Image.registered_extensions().items()}
    for path in paths:
        if os.path.isdir(path):
            for entry in sorted(os.listdir(path)):
                full = os.path.join(path, entry)
                if (not entry.startswith(".") and os.path.isfile(full)
                        and os.path.splitext(entry)[1].lower() in extensions):
                    yield full
        else:
            yield path


def _preprocess_or_error(path):
    try:
        return preprocess_image(path)
    except PredictError as error:
        return error


def format_line(path, probs, top_k=1):
    """'path: digit (confidence%)', then the next likeliest digits when top_k > 1."""
    values, digits = torch.topk(probs, top_k)
    ranked = ", ".join(f"{int(d)} ({100 * float(v):.1f}%)" for v, d in zip(values, digits))
    return f"{path}: {ranked}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Predict the handwritten digit in images (photos, scans, drawings).")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help=f"image files or folders of images (default: image_path in predict.py, "
                             f"now {image_path!r})")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help=f"trained weights from mnist_cnn_model.py (default: {DEFAULT_WEIGHTS})")
    parser.add_argument("--top-k", type=int, default=1, metavar="K",
                        help="print the K likeliest digits with their probabilities (default: 1)")
    parser.add_argument("--show", action="store_true",
                        help="write a figure per image (input, the 28x28 the model saw, the ten "
                             "probabilities) to predictions/<name>.png and open it if a display exists")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cpu)")
    args = parser.parse_args(argv)
    if not 1 <= args.top_k <= 10:
        parser.error(f"--top-k must be between 1 and 10, not {args.top_k}")
    return args


def main(argv=None):
    args = parse_args(argv)
    paths = args.paths or [image_path]
    try:
        model = load_model(args.weights, args.device)
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failures = 0
    figures = set()
    # Where a screen exists the first few figures stay open to be shown at the end.
    display = args.show and _has_display()
    files = list(image_files(paths))
    if not files:
        print(f"error: no image files in {', '.join(paths)}.", file=sys.stderr)
        return 1
    # Preprocessing is most of the time; Pillow, NumPy and torch release the GIL in their heavy
    # parts, so threads spread it over the cores (1.7x on 2 cores) with results kept in order.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), BATCH_SIZE):
            batch = files[start:start + BATCH_SIZE]
            chunk, tensors = [], []
            for path, result in zip(batch, pool.map(_preprocess_or_error, batch)):
                if isinstance(result, PredictError):
                    failures += 1
                    hint = (" Edit image_path at the top of predict.py or pass a path: "
                            "python predict.py PATH." if not args.paths else "")
                    print(f"error: {result}{hint}", file=sys.stderr)
                else:
                    chunk.append(path)
                    tensors.append(result)
            if not chunk:
                continue
            probs = predict_batch(model, tensors)
            for path, tensor, p in zip(chunk, tensors, probs):
                print(format_line(path, p, args.top_k), flush=True)
                if args.show:
                    show_prediction(path, tensor, p, figures,
                                    keep_open=display and len(figures) < 10)
    if display:
        _pyplot().show()
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------
# The --show figure

def _has_display():
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _pyplot():
    import matplotlib
    # Without a display the default backend may fail to start; Agg only writes files.
    if not _has_display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


FIGURE_DIR = "predictions"


def figure_path(image_file, taken):
    """Where --show writes the figure for image_file: predictions/<name>.png under the current
    folder (git-ignored), numbered rather than overwrite a figure written earlier in the same
    run (taken), as when two folders both hold a 7.png."""
    stem = os.path.splitext(os.path.basename(image_file))[0]
    path, n = os.path.join(FIGURE_DIR, f"{stem}.png"), 2
    while path in taken:
        path, n = os.path.join(FIGURE_DIR, f"{stem}_{n}.png"), n + 1
    taken.add(path)
    return path


def show_prediction(path, tensor, probs, taken, keep_open=False):
    """Write the figure for one prediction and print where it is; returns the file name. The
    figure is closed unless keep_open, so a folder of thousands does not pile them up in memory."""
    plt = _pyplot()
    original = open_image(path).convert("RGB")
    seen = (tensor[0].numpy() * MNIST_STD + MNIST_MEAN).clip(0, 1)
    digit = int(probs.argmax())
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    axes[0].imshow(original)
    axes[0].set_title("your image")
    axes[1].imshow(seen, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("what the model saw (28x28)")
    for ax in axes[:2]:
        ax.axis("off")
    colours = ["tab:orange" if d == digit else "tab:blue" for d in range(10)]
    axes[2].bar(range(10), probs.numpy(), color=colours)
    axes[2].set_xticks(range(10))
    axes[2].set_ylim(0, 1)
    axes[2].set_xlabel("digit")
    axes[2].set_ylabel("probability")
    axes[2].set_title(f"prediction: {digit} ({100 * float(probs[digit]):.1f}%)")
    fig.suptitle(os.path.basename(path))
    fig.tight_layout()
    out = figure_path(path, taken)
    os.makedirs(FIGURE_DIR, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"figure written to {out}")
    if not keep_open:
        plt.close(fig)
    return out



if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
