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
# Stroke width of an MNIST digit relative to the long side of its box (median over the test set,
# measured with stroke_width() below). Thinner strokes are thickened to this; a one-pixel pen line
# shrunk into a 20x20 box would otherwise fade to a faint grey the model has never seen.
MNIST_STROKE_RATIO = 0.125
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

    The MNIST recipe, step by step: read the image as grey levels; make the ink bright on a dark
    background; remove uneven lighting and paper tint; separate ink from background (Otsu); crop
    to the ink; bring thin strokes to MNIST's width; scale to fit 20x20 keeping the aspect ratio;
    place in 28x28 with the centre of mass at the centre; normalise as training did.
    Raises ImageNotFoundError, NotAnImageError or NoDigitError."""
    name = "the image" if isinstance(image, Image.Image) else os.fspath(image)
    grey = read_grey(image)
    ink = remove_background(to_ink_polarity(grey))
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
            img = _standard_mode(img)
            img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
    except (OSError, ValueError, SyntaxError, EOFError) as error:
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


def to_ink_polarity(grey):
    """Make the ink bright on a dark background, as in MNIST. The background is most of the
    picture, so the median grey level is the paper; if the paper is lighter than the ink side of
    the histogram, the image is dark ink on light paper and is inverted."""
    lo, median, hi = np.percentile(grey, [0.5, 50, 99.5])
    return 1.0 - grey if hi - median < median - lo else grey


def remove_background(ink):
    """Subtract the background (paper tint, lighting gradient, vignetting) estimated as a smooth
    quadratic surface fitted to the background pixels, so one threshold works everywhere."""
    h, w = ink.shape
    # Fit on a small copy: the lighting is smooth, and a 64x64 fit costs microseconds.
    step = max(1, max(h, w) // 64)
    sample = ink[::step, ::step]
    ys, xs = np.mgrid[0:sample.shape[0], 0:sample.shape[1]]
    ys = ys.ravel() * step / max(h - 1, 1)
    xs = xs.ravel() * step / max(w - 1, 1)
    values = sample.ravel().astype(np.float64)
    basis = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], axis=1)
    keep = np.ones(values.shape, dtype=bool)
    for _ in range(4):
        # Refit on the pixels not brighter than the surface by much: ink, which is bright now,
        # must not pull the background estimate up.
        coef, *_ = np.linalg.lstsq(basis[keep], values[keep], rcond=None)
        residual = values - basis @ coef
        spread = 1.4826 * np.median(np.abs(residual[keep] - np.median(residual[keep])))
        new_keep = residual <= max(2.5 * spread, 1e-6)
        if new_keep.sum() < basis.shape[1] or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    c = coef.astype(np.float32)
    surface = c[0] + c[1] * xx + c[2] * yy + c[3] * xx * xx + c[4] * xx * yy + c[5] * yy * yy
    return np.clip(ink - surface, 0.0, None)


def otsu_threshold(values):
    """Otsu's threshold of values (any range): the level that best splits them into two classes."""
    lo, hi = float(values.min()), float(values.max())
    hist, edges = np.histogram(values, bins=256, range=(lo, hi))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1e-12)
    mean1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(weight1, 1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def find_ink(ink, name="the image"):
    """Boolean mask of the ink pixels. Raises NoDigitError when there is none to speak of: a
    blank or uniform image, or one whose 'ink' is no brighter than the background's own noise."""
    top = float(ink.max())
    if top < 1e-3:
        raise NoDigitError(f"No digit found in {name}: the image is blank or uniform.")
    threshold = otsu_threshold(ink)
    mask = ink > threshold
    background = ink[~mask]
    noise = float(background.std()) if background.size else 0.0
    contrast = float(np.median(ink[mask])) - float(np.median(background)) if background.size else 0.0
    # On plain noise Otsu still splits the histogram, but the two halves are only about 1.6
    # standard deviations apart; real ink stands many deviations clear of the paper.
    if contrast < max(6 * noise, 0.02) or mask.sum() < 3:
        raise NoDigitError(f"No digit found in {name}: the image is blank or uniform.")
    return _drop_specks(mask)


def _drop_specks(mask):
    """The ink mask without isolated specks (dust, noise, JPEG artefacts): connected pieces much
    smaller than the largest one. Labelling is done with torch max-pooling on a small copy."""
    h, w = mask.shape
    step = max(1, math.ceil(max(h, w) / 256))
    small = torch.from_numpy(mask[::step, ::step].copy())
    if step > 1:
        # Subsampling must not break a thin stroke into pieces: take the max over each block.
        t = torch.from_numpy(mask.astype(np.float32))[None, None]
        small = F.max_pool2d(t, step, step, ceil_mode=True)[0, 0] > 0
    labels = torch.where(small, torch.arange(1, small.numel() + 1, dtype=torch.float32)
                         .reshape(small.shape), torch.zeros(()))
    # Each piece takes the largest label in it, spreading one pixel (8-connected) per round.
    for _ in range(small.numel()):
        spread = F.max_pool2d(labels[None, None], 3, 1, 1)[0, 0] * small
        if torch.equal(spread, labels):
            break
        labels = spread
    ids, sizes = torch.unique(labels[small], return_counts=True)
    if len(ids) <= 1:
        return mask
    keep_ids = ids[sizes >= 0.1 * sizes.max()]
    keep_small = torch.isin(labels, keep_ids).numpy()
    keep = np.repeat(np.repeat(keep_small, step, axis=0), step, axis=1)[:h, :w]
    return mask & keep


def crop_to_ink(ink, mask):
    """The ink inside the mask's bounding box, as soft levels in [0, 1]: background 0, solid ink
    1, anti-aliased edges in between, so contrast no longer depends on pen or lighting."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    ink = ink[top:bottom, left:right]
    inside = mask[top:bottom, left:right]
    solid = float(np.median(ink[inside]))
    background = float(np.median(ink[~inside])) if (~inside).any() else 0.0
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


def stroke_width(digit):
    """Mean stroke width in pixels: ink area over half the ink boundary length."""
    mask = digit > 0.5
    area = int(mask.sum())
    if area == 0:
        return 0.0
    padded = np.pad(mask, 1)
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]) & mask
    boundary = area - int(interior.sum())
    return 2.0 * area / max(boundary, 1)


def normalise_stroke_width(digit):
    """The digit at SUPERSAMPLE x 20 pixels on its long side, its strokes thickened to MNIST's
    width if they are thinner (a grey dilation, which keeps the anti-aliased edges)."""
    side = 20 * SUPERSAMPLE
    digit = _fit_long_side(digit, side)
    target = MNIST_STROKE_RATIO * side
    width = stroke_width(digit)
    radius = int(round((target - width) / 2))
    if width > 0 and radius >= 1:
        t = torch.from_numpy(np.pad(digit, radius))[None, None]
        digit = F.max_pool2d(t, 2 * radius + 1, 1, radius)[0, 0].numpy()
        # Thickening made the ink box larger than 20x20 again: fit it back.
        digit = _fit_long_side(digit, side)
    return np.clip(digit, 0.0, 1.0)


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
                             "probabilities) to <name>_prediction.png and open it if a display exists")
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
    for start in range(0, len(files), BATCH_SIZE):
        chunk, tensors = [], []
        for path in files[start:start + BATCH_SIZE]:
            try:
                tensors.append(preprocess_image(path))
                chunk.append(path)
            except PredictError as error:
                failures += 1
                hint = (" Edit image_path at the top of predict.py or pass a path: "
                        "python predict.py PATH." if not args.paths else "")
                print(f"error: {error}{hint}", file=sys.stderr)
        if not chunk:
            continue
        probs = predict_batch(model, tensors)
        for path, tensor, p in zip(chunk, tensors, probs):
            print(format_line(path, p, args.top_k), flush=True)
            if args.show:
                show_prediction(path, tensor, p, figures, keep_open=display and len(figures) < 10)
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


def figure_path(image_file, taken):
    """Where --show writes the figure for image_file: <name>_prediction.png in the current
    folder, numbered rather than overwrite a figure written earlier in the same run (taken)."""
    stem = os.path.splitext(os.path.basename(image_file))[0]
    path, n = f"{stem}_prediction.png", 2
    while path in taken:
        path, n = f"{stem}_prediction_{n}.png", n + 1
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
    fig.savefig(out, dpi=100)
    print(f"figure written to {out}")
    if not keep_open:
        plt.close(fig)
    return out



if __name__ == "__main__":
    sys.exit(main())
