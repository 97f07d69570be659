"""
Read the handwritten digits in your own pictures with the CNN trained by mnist_cnn_model.py.

    python predict.py                      # reads the image named by image_path below
    python predict.py photo.jpg            # or name files and folders on the command line
    python predict.py digits/ --top-k 3    # every image in a folder, the 3 likeliest digits each
    python predict.py number.jpg --number  # a whole number: each digit, left to right (with
                                           # number_reader.pt, when trained, for touching digits)
    python predict.py photo.jpg --show     # also write a figure: input, what the model saw, probabilities

From Python:

    from predict import load_model, predict_user_input, predict_number
    model = load_model("mnist_cnn.pt")
    digit = predict_user_input(model, "photo.jpg")                 # an int
    digit, probs = predict_with_probabilities(model, "photo.jpg")  # and the 10 probabilities
    number = predict_number(model, "meter.jpg")                    # a str, leading zeros kept
    number = predict_number(model, "meter.jpg", load_reader())     # digits that touch read far better
    for d in predict_digits(model, "meter.jpg"): print(d.digit, d.box)

Pictures become what MNIST digits look like in preprocess.py, and a number is split into its
digits in segment.py, helped by the number reader of number_reader.py where it is given.
Problems are raised as PredictError subclasses with a one-sentence message: WeightsNotFoundError,
BadWeightsError, ImageNotFoundError, NotAnImageError and NoDigitError (nothing to read: the image
is blank or uniform, under 3 pixels on a side, or noise rather than handwriting).
"""
import argparse
import json
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image

from mnist_cnn_model import CNN, MNIST_MEAN, MNIST_STD, metadata_path, sha256_of
from number_reader import NumberReader, batch_lines, decode, log_likelihood
from preprocess import (ImageNotFoundError, NoDigitError, NotAnImageError,  # noqa: F401
                        PredictError, open_image, preprocess_image, read_ink, to_line_input, to_mnist)
from segment import LineReading, count_digits, split_number

# Edit this to point at your own image, then run `python predict.py`.
image_path = "my_digit.png"

DEFAULT_WEIGHTS = "mnist_cnn.pt"
DEFAULT_READER = "number_reader.pt"
# Folders are predicted this many images per forward pass.
BATCH_SIZE = 256


class WeightsNotFoundError(PredictError, FileNotFoundError):
    """The weights file does not exist (the model has not been trained yet)."""


class BadWeightsError(PredictError, ValueError):
    """The file is not a PyTorch weights file, holds weights of another architecture, or holds
    values that are not numbers (NaN or infinity)."""


# ---------------------------------------------------------------------------------------------
# Loading the model

def load_model(weights_path=DEFAULT_WEIGHTS, device=None):
    """A CNN in eval mode with the weights from weights_path, on device (default: the CPU)."""
    return _load_weights(CNN(), weights_path, device, "the CNN in mnist_cnn_model.py",
                         "python mnist_cnn_model.py")


def load_reader(weights_path=DEFAULT_READER, device=None):
    """The number reader (number_reader.py) in eval mode with the weights from weights_path, on
    device (default: the CPU). Pass it to predict_number, predict_digits or read_digits to read
    digits that touch far better than cutting them apart does."""
    return _load_weights(NumberReader(), weights_path, device, "the NumberReader in number_reader.py",
                         "python number_reader.py")


def _load_weights(model, weights_path, device, architecture, train_command):
    """model in eval mode with the state_dict from weights_path, on device, or one sentence why not.

    weights_only=True means no pickled code from the file ever runs, and map_location lets a file
    saved on a GPU machine load on a CPU-only one."""
    device = _resolve_device(device)
    weights_path = os.fspath(weights_path)
    if not os.path.exists(weights_path):
        raise WeightsNotFoundError(
            f"No weights file at {weights_path}: train the model first with `{train_command}`.")
    if os.path.isdir(weights_path):
        raise BadWeightsError(f"{weights_path} is a folder, not a weights file.")
    if not os.path.isfile(weights_path):  # a pipe or a device would keep torch.load waiting
        raise BadWeightsError(f"{weights_path} is not a regular file, so not a weights file.")
    _check_recorded_checksum(weights_path)
    try:
        # torch warns before it refuses a file it will not unpickle; the sentence below says it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(weights_path, map_location=device, weights_only=True)
    except PermissionError as error:
        raise BadWeightsError(f"{weights_path} cannot be read: permission denied.") from error
    except Exception as error:  # torch raises many types here (zip, pickle, EOF, magic number)
        raise BadWeightsError(
            f"{weights_path} is not a PyTorch weights file (a state_dict saved by "
            f"{train_command.split()[-1]}) and cannot be loaded.") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) and v.is_floating_point()
                                              for v in state.values()):
        raise BadWeightsError(f"{weights_path} does not hold a state_dict of floating-point tensors, "
                              f"so it is not weights for this model.")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # missing or unexpected keys, or tensors of the wrong shape
        raise BadWeightsError(
            f"{weights_path} holds weights for a different model architecture than "
            f"{architecture}.") from error
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise BadWeightsError(f"{weights_path} holds weights that are not numbers (NaN or "
                              f"infinity), as a training run that diverged leaves; train again.")
    return model.to(device).eval()


def _check_recorded_checksum(weights_path):
    # Training records the weights' SHA-256 beside them: bytes damaged inside the file still
    # load (torch checks the archive's layout, not its contents) and read confidently wrong.
    try:
        with open(metadata_path(weights_path)) as f:
            recorded = json.load(f).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return  # no record (weights from elsewhere) or an unreadable one: nothing to check
    try:
        damaged = bool(recorded) and recorded != sha256_of(weights_path)
    except OSError:
        return  # unreadable: torch.load below says so
    if damaged:
        raise BadWeightsError(
            f"{weights_path} does not match the SHA-256 that training recorded in "
            f"{metadata_path(weights_path)}: the file is damaged or was replaced; train again, or "
            f"delete that record if you replaced the weights on purpose.")


def _resolve_device(device):
    # The CPU by default: a forward pass of this small CNN takes about a millisecond there, less
    # than starting CUDA would, and preprocessing runs on the CPU anyway.
    if device is None:
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise PredictError(f"{device!r} is not a device name (use cpu, cuda, cuda:N or mps).") from error
    if device.type not in ("cpu", "cuda", "mps"):
        raise PredictError(f"{str(device)!r} is not a device this can read pictures on (use cpu, "
                           f"cuda, cuda:N or mps).")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError("CUDA was asked for but no CUDA GPU is available; use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PredictError("Apple MPS was asked for but is not available; use --device cpu.")
    return device


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


class DigitReading(NamedTuple):
    """One digit of a number: the digit (int), its ten probabilities (floats summing to 1), its
    box (x0, y0, x1, y1) in the original picture's pixels (x1, y1 exclusive), image, the
    normalised 1x28x28 tensor the model read, and all_ink, whether the digit is all the ink in
    the picture (image is then what preprocess_image makes of the picture)."""
    digit: int
    probabilities: list
    box: tuple
    image: torch.Tensor
    all_ink: bool = False


def predict_digits(model, image_path, reader=None):
    """Each digit written in the picture (a path or a PIL image), left to right, as DigitReading
    tuples. Touching digits are cut where the model reads the parts most confidently; with a
    reader (load_reader), a group of touching digits is also read whole, which reads them better."""
    return read_digits(model, read_ink(image_path), reader)


def read_digits(model, ink, reader=None):
    """predict_digits for a picture already read by preprocess.read_ink."""
    read_line = None if reader is None else lambda levels, mask, name: read_row(reader, levels, mask, name)
    digits = split_number(ink, lambda batch: predict_batch(model, batch), read_line)
    if not digits:
        raise NoDigitError(f"No digit found in {ink.name}: the image is blank or uniform.")
    probs = predict_batch(model, [d.tensor for d in digits])
    probs = [p.tolist() if d.read is None else d.read for d, p in zip(digits, probs)]
    return [DigitReading(p.index(max(p)), p, d.box, d.tensor, d.all_ink)
            for d, p in zip(digits, probs)]


@torch.no_grad()
def read_row(reader, levels, mask, name="the image"):
    """The number reader's LineReading of the ink in mask: its digits, the ten probabilities of
    each (the reader's, at the column where it is likeliest, over the digits alone), and the
    log-likelihood of any other list of digits."""
    x, columns = batch_lines([to_line_input(levels, mask, name)])
    log_probs = reader(x.to(next(reader.parameters()).device))[0, :columns[0]].float().cpu()
    digits, at = decode(log_probs)
    probabilities = [F.softmax(log_probs[t, :10], 0).tolist() for t in at]
    return LineReading(digits, probabilities, lambda other: log_likelihood(log_probs, other))


def predict_number(model, image_path, reader=None):
    """The number written in the picture as a str of its digits left to right, leading zeros
    kept ("007"). reader: as for predict_digits."""
    return "".join(str(d.digit) for d in predict_digits(model, image_path, reader))


def number_confidence(readings):
    """The model's confidence that every digit of the number is right: the product of each
    digit's probability."""
    confidence = 1.0
    for reading in readings:
        confidence *= reading.probabilities[reading.digit]
    return confidence


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


def _read_one(model, path):
    # (the digit's tensor, how many digits --number would read), or the error. Counting pieces
    # of ink instead said "holds 2 digits" of a 5-digit number written in two strokes.
    try:
        ink = read_ink(path)
        return to_mnist(ink.levels, ink.mask, ink.name), count_digits(ink, lambda batch: predict_batch(model, batch))
    except PredictError as error:
        return _bare(error)


def _read_number(model, reader, path):
    try:
        return predict_digits(model, path, reader)
    except PredictError as error:
        return _bare(error)


def _bare(error):
    # The same sentence without the traceback, which would hold on to the picture's arrays (and
    # to a file Pillow failed to decode) until the whole batch has been printed.
    return type(error)(str(error))


def format_line(path, probs, top_k=1):
    """'path: digit (confidence%)', then the next likeliest digits when top_k > 1."""
    values, digits = torch.topk(probs, top_k)
    ranked = ", ".join(f"{int(d)} ({100 * float(v):.1f}%)" for v, d in zip(values, digits))
    return f"{path}: {ranked}"


def format_number(path, readings):
    """'path: number (confidence%)', the confidence that every digit is right."""
    number = "".join(str(r.digit) for r in readings)
    return f"{path}: {number} ({100 * number_confidence(readings):.1f}%)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Read the handwritten digit, or with --number the whole number, in images "
                    "(photos, scans, drawings).")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help=f"image files or folders of images (default: image_path in predict.py, "
                             f"now {image_path!r})")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help=f"trained weights from mnist_cnn_model.py (default: {DEFAULT_WEIGHTS})")
    parser.add_argument("--number", action="store_true",
                        help="read every digit, left to right, as one number (default: off, one "
                             "digit per picture)")
    parser.add_argument("--reader", metavar="WEIGHTS",
                        help=f"with --number, the number reader from number_reader.py, which reads "
                             f"digits that touch (default: {DEFAULT_READER} if it exists)")
    parser.add_argument("--top-k", type=int, default=1, metavar="K",
                        help="print the K likeliest digits with their probabilities (default: 1)")
    parser.add_argument("--show", action="store_true",
                        help="write a figure per image (input, the 28x28 the model saw, the ten "
                             "probabilities) to predictions/<name>.png and open it if a display exists")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cpu)")
    args = parser.parse_args(argv)
    if not 1 <= args.top_k <= 10:
        parser.error(f"--top-k must be between 1 and 10, not {args.top_k}")
    if args.number and args.top_k != 1:
        parser.error("--top-k lists the likeliest single digits; it does not go with --number")
    if args.reader and not args.number:
        parser.error("--reader reads whole numbers; use it with --number")
    return args


def main(argv=None):
    args = parse_args(argv)
    paths = args.paths or [image_path]
    try:
        model = load_model(args.weights, args.device)
        reader = None
        if args.reader or (args.number and os.path.exists(DEFAULT_READER)):
            reader = load_reader(args.reader or DEFAULT_READER, args.device)
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.number and reader is None:
        print(f"note: no {DEFAULT_READER}, so digits that touch are read by cutting them apart "
              f"alone; `python number_reader.py` trains the reader, which reads them far better.",
              file=sys.stderr)
    files = list(image_files(paths))
    if not files:
        print(f"error: no image files in {', '.join(paths)}.", file=sys.stderr)
        return 1
    failures = 0
    figures = set()
    # Where a screen exists the first few figures stay open to be shown at the end.
    display = args.show and _has_display()

    def report(error):
        nonlocal failures
        failures += 1
        hint = (" Edit image_path at the top of predict.py or pass a path: "
                "python predict.py PATH." if not args.paths else "")
        print(f"error: {error}{hint}", file=sys.stderr)

    # Preprocessing is most of the time; Pillow, NumPy, SciPy and torch release the GIL in their
    # heavy parts, so threads spread it over the cores with results kept in order.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), BATCH_SIZE):
            batch = files[start:start + BATCH_SIZE]
            if args.number:
                for path, result in zip(batch, pool.map(lambda p: _read_number(model, reader, p), batch)):
                    if isinstance(result, PredictError):
                        report(result)
                        continue
                    print(format_number(path, result), flush=True)
                    if args.show:
                        show_number(path, result, figures, keep_open=display and len(figures) < 10)
                continue
            chunk, tensors, counts = [], [], []
            for path, result in zip(batch, pool.map(lambda p: _read_one(model, p), batch)):
                if isinstance(result, PredictError):
                    report(result)
                else:
                    chunk.append(path)
                    tensors.append(result[0])
                    counts.append(result[1])
            if not chunk:
                continue
            probs = predict_batch(model, tensors)
            for path, tensor, p, count in zip(chunk, tensors, probs, counts):
                several = f"; it holds {count} digits: use --number to read them all" if count > 1 else ""
                print(format_line(path, p, args.top_k) + several, flush=True)
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
    """Write the figure for one prediction (the picture, the 28x28 the model saw, the ten
    probabilities) and print where it is; returns the file name."""
    plt = _pyplot()
    original = open_image(path).convert("RGB")
    seen = _seen(tensor)
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
    return _save_figure(plt, fig, path, taken, keep_open)


def _seen(tensor):
    # The 28x28 the model read, back in grey levels [0, 1].
    return (tensor[0].numpy() * MNIST_STD + MNIST_MEAN).clip(0, 1)


def show_number(path, readings, taken, keep_open=False):
    """Write the figure for a number: the picture with each digit's box and reading drawn on it,
    and below it the 28x28 each digit became, with its confidence. Returns the file name."""
    plt = _pyplot()
    original, scale = open_image(path, with_scale=True)
    n = len(readings)
    fig = plt.figure(figsize=(max(6.0, 1.3 * n), 6.5))
    grid = fig.add_gridspec(2, n, height_ratios=[3.2, 1])
    top = fig.add_subplot(grid[0, :])
    top.imshow(original.convert("RGB"))
    for r in readings:
        x0, y0, x1, y1 = (v / scale for v in r.box)
        top.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2, color="tab:orange"))
        top.text(x0, y0, str(r.digit), color="white", fontsize=14, va="bottom",
                 bbox=dict(facecolor="tab:orange", pad=1, lw=0))
    top.set_title(f"read as {''.join(str(r.digit) for r in readings)} "
                  f"({100 * number_confidence(readings):.1f}% that every digit is right)")
    top.axis("off")
    for i, r in enumerate(readings):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(_seen(r.image), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{r.digit} ({100 * r.probabilities[r.digit]:.0f}%)", fontsize=10)
        ax.axis("off")
    return _save_figure(plt, fig, path, taken, keep_open)


def _save_figure(plt, fig, path, taken, keep_open):
    # The figure is closed unless keep_open, so a folder of thousands does not pile them up.
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
