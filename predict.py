"""
Read the handwritten digits in your own pictures with the CNN trained by mnist_cnn_model.py.

    python predict.py                              # reads the picture named by image_path below
    python predict.py samples/digit.jpg            # or name files and folders on the command line
    python predict.py digits/ --top-k 3            # every picture in a folder, its 3 likeliest digits
    python predict.py samples/number.jpg --number  # a whole number, each digit left to right (with
                                                   # number_reader.pt, when trained, for touching digits)
    python predict.py samples/drawing.png --show   # also write a figure: the picture, what the model
                                                   # saw, the ten probabilities
    python predict.py --weights mnist_cnn.onnx samples/digit.jpg  # the export (export_onnx.py), read
                                                   # by ONNX Runtime: no PyTorch needed (docs/onnx.md)

From Python (after `python mnist_cnn_model.py`; load_reader after `python number_reader.py`):

    from predict import (load_model, load_reader, predict_digits, predict_number, predict_user_input,
                         predict_with_probabilities, read_digit)
    model = load_model("mnist_cnn.pt")
    digit = predict_user_input(model, "samples/digit.jpg")                 # an int
    digit, probs = predict_with_probabilities(model, "samples/digit.jpg")  # and the ten probabilities
    reading = read_digit(model, "samples/digit.jpg")   # .digit: an int, or None for no digit (.reason)
    number = predict_number(model, "samples/number.jpg")                   # a str, leading zeros kept
    number = predict_number(model, "samples/number.jpg", load_reader())    # touching digits read better
    for d in predict_digits(model, "samples/number.jpg"):
        print(d.digit, d.box)

load_model and load_reader take PyTorch weights (.pt: the torch module itself) or their ONNX
export (.onnx: reading.runtime.OnnxDigits and OnnxReader); every function here reads with either,
and preprocess_image and DigitReading.image are NumPy arrays. Pictures become what MNIST digits
look like in reading/digit_input.py, and a number is split into its digits in reading/segment.py,
helped by the number reader of number_reader.py where it is given. The probabilities are
calibrated (a reading given at 90% is right about 90% of the time), and a picture whose
probabilities name no digit clearly (a letter, a scribble, an object) is not a digit
(reading/verdict.py). Problems are raised as PredictError subclasses with a one-sentence
message: WeightsNotFoundError, BadWeightsError, ImageNotFoundError, NotAnImageError and
NoDigitError (nothing to read: the picture is blank or uniform, under 3 pixels on a side, or noise
rather than handwriting), and its subclass NotADigitError (marks, but no digit among them).
"""
import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from PIL import Image

from reading.ctc import read_row
from reading.digit_input import ink_as_one_digit, preprocess_image
from reading.errors import (BadWeightsError, ImageNotFoundError, NoDigitError, NotADigitError, NotAnImageError,
                            PredictError, WeightsNotFoundError)
from reading.figures import (check_matplotlib, has_display, number_confidence, pyplot, show_number,
                             show_prediction)
from reading.ink import read_ink
from reading.marks import Mark
from reading.runtime import (DEFAULT_READER, DEFAULT_WEIGHTS, digit_probabilities, is_onnx, load_model,
                             load_reader, reader_default, reader_weights)
from reading.segment import count_digits, split_marks
from reading.verdict import why_not_a_digit

# What users import from here; the errors and the loaders live in reading/.
__all__ = ["load_model", "load_reader", "predict_user_input", "predict_with_probabilities", "read_digit",
           "Reading", "predict_number", "predict_number_reading", "read_number", "NumberReading", "Mark",
           "predict_digits", "read_digits", "preprocess_image", "number_confidence", "DigitReading",
           "DEFAULT_WEIGHTS", "DEFAULT_READER", "PredictError", "WeightsNotFoundError", "BadWeightsError",
           "ImageNotFoundError", "NotAnImageError", "NoDigitError", "NotADigitError"]

# Edit this to point at your own image, then run `python predict.py`.
image_path = "samples/digit.jpg"

# Folders are predicted this many images per forward pass.
BATCH_SIZE = 256


def predict_with_probabilities(model, image_path):
    """(digit, probabilities): the likeliest digit as an int and the ten calibrated probabilities
    as a list of floats that sums to 1 (probabilities[d] is the model's confidence in digit d).
    It always names a digit; read_digit also says when the picture holds none."""
    probs = digit_probabilities(model, [preprocess_image(image_path)])[0]
    return int(probs.argmax()), probs.tolist()


class Reading(NamedTuple):
    """A picture read as one digit: digit, an int, or None when the picture holds no digit;
    probabilities, the ten calibrated probabilities (floats summing to 1); reason, why it is not
    a digit (None when it is one)."""
    digit: object
    probabilities: list
    reason: object = None


def read_digit(model, image_path):
    """The Reading of the picture at image_path (a path or a PIL image), taking all its ink as one
    digit. Raises NoDigitError when it holds nothing to read (blank, uniform, noise)."""
    probs = digit_probabilities(model, [preprocess_image(image_path)])[0].tolist()
    reason = why_not_a_digit(probs)
    return Reading(None if reason else probs.index(max(probs)), probs, reason)


def predict_user_input(model, image_path):
    """The digit (an int, 0-9) in the image at image_path. Raises NotADigitError when the
    picture holds marks but no digit (a letter, a scribble, an object)."""
    reading = read_digit(model, image_path)
    if reading.digit is None:
        name = os.fspath(image_path) if isinstance(image_path, (str, os.PathLike)) else "the image"
        raise NotADigitError(f"{name} is not a digit: {reading.reason}.")
    return reading.digit


class DigitReading(NamedTuple):
    """One digit of a number: the digit (int), its ten probabilities (floats summing to 1), its
    box (x0, y0, x1, y1) in the original picture's pixels (x1, y1 exclusive), image, the
    normalised 1x28x28 float32 array the model read, and all_ink, whether the digit is all the ink in
    the picture (image is then what preprocess_image makes of the picture)."""
    digit: int
    probabilities: list
    box: tuple
    image: np.ndarray
    all_ink: bool = False


class NumberReading(NamedTuple):
    """A number read in a picture: digits (DigitReading tuples, left to right) and left_out (Mark
    tuples, left to right: box, reason, probabilities), the marks that are not digits (letters,
    a unit, a dash, an underline, a scribble) and so are no part of the number."""
    digits: list
    left_out: list


def predict_digits(model, image_path, reader=None):
    """Each digit written in the picture (a path or a PIL image), left to right, as DigitReading
    tuples; marks that are not digits are left out (predict_number_reading lists them). Touching
    digits are cut where the model reads the parts most confidently; with a reader (load_reader),
    a group of touching digits is also read whole, which reads them better."""
    return read_digits(model, read_ink(image_path), reader)


def predict_number_reading(model, image_path, reader=None):
    """The NumberReading of the picture: its digits as predict_digits gives them, and the marks
    left out of the number with the reason for each. Raises NotADigitError when there is ink but
    no digit in it, and the errors of predict_digits."""
    return read_number(model, read_ink(image_path), reader, require_digits=True)


def read_digits(model, ink, reader=None):
    """predict_digits for a picture already read by reading.ink.read_ink."""
    return read_number(model, ink, reader, require_digits=True).digits


def read_number(model, ink, reader=None, require_digits=False):
    """predict_number_reading for a picture already read by reading.ink.read_ink; with
    require_digits False, a picture of marks alone is a NumberReading with no digits."""
    read_line = None if reader is None else lambda levels, mask, name: read_row(reader, levels, mask, name)
    found = split_marks(ink, lambda batch: digit_probabilities(model, batch), read_line)
    if not found.digits and (require_digits or not found.marks):
        raise _no_digit(ink.name, found.marks)
    probs = digit_probabilities(model, [d.tensor for d in found.digits]) if found.digits else []
    probs = [p.tolist() if d.reader_probabilities is None else d.reader_probabilities
             for d, p in zip(found.digits, probs)]
    return NumberReading([DigitReading(p.index(max(p)), p, d.box, d.tensor, d.all_ink)
                          for d, p in zip(found.digits, probs)], found.marks)


def _no_digit(name, marks):
    if not marks:
        return NoDigitError(f"No digit found in {name}: the image is blank or uniform.")
    if len(marks) == 1:
        return NotADigitError(f"No digit found in {name}: its ink is not a digit ({marks[0].reason}).")
    return NotADigitError(f"No digit found in {name}: none of its {len(marks)} marks is a digit (the "
                          f"first: {marks[0].reason}).")


def marks_left_out(count):
    """'2 marks that are not digits left out', for count marks."""
    return f"{count} mark{'s' if count != 1 else ''} that {'are' if count != 1 else 'is'} not " \
           f"{'digits' if count != 1 else 'a digit'} left out"


def predict_number(model, image_path, reader=None):
    """The number written in the picture as a str of its digits left to right, leading zeros
    kept ("007"); marks that are not digits are left out. reader: as for predict_digits."""
    return "".join(str(d.digit) for d in predict_digits(model, image_path, reader))


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


class OneDigit(NamedTuple):
    """A picture read as one digit: the normalised 1x28x28 array the model reads, and how many
    digits --number would find in it."""
    tensor: np.ndarray
    count: int


def _read_one(model, path):
    # A OneDigit, or the error. Digits are counted as --number finds them, not as pieces of ink:
    # a number may be written in fewer strokes than it has digits.
    try:
        ink = read_ink(path)
        return OneDigit(ink_as_one_digit(ink),
                        count_digits(ink, lambda batch: digit_probabilities(model, batch)))
    except PredictError as error:
        return _bare(error)


def _read_number(model, reader, path):
    try:
        return predict_number_reading(model, path, reader)
    except PredictError as error:
        return _bare(error)


def _bare(error):
    # The same sentence without the traceback, which would hold on to the picture's arrays (and
    # to a file Pillow failed to decode) until the whole batch has been printed.
    return type(error)(str(error))


def format_line(path, probs, top_k=1):
    """'path: digit (confidence%)', then the next likeliest digits when top_k > 1."""
    digits = np.argsort(-np.asarray(probs), kind="stable")[:top_k]
    ranked = ", ".join(f"{int(d)} ({100 * float(probs[d]):.1f}%)" for d in digits)
    return f"{path}: {ranked}"


def format_number(path, readings, left_out=()):
    """'path: number (confidence%)', the confidence that every digit is right, then how many
    marks that are not digits were left out of it, if any."""
    number = "".join(str(r.digit) for r in readings)
    marks = f", {marks_left_out(len(left_out))}" if left_out else ""
    return f"{path}: {number} ({100 * number_confidence(readings):.1f}%){marks}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Read the handwritten digit, or with --number the whole number, in images "
                    "(photos, scans, drawings).")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help=f"image files or folders of images (default: image_path in predict.py, "
                             f"now {image_path!r})")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help=f"trained weights from mnist_cnn_model.py, or their export by export_onnx.py "
                             f"(a .onnx file: read by ONNX Runtime, no PyTorch needed) (default: "
                             f"{DEFAULT_WEIGHTS})")
    parser.add_argument("--number", action="store_true",
                        help="read every digit, left to right, as one number (default: off, one "
                             "digit per picture)")
    parser.add_argument("--reader", metavar="WEIGHTS",
                        help=f"with --number, the number reader from number_reader.py, which reads "
                             f"digits that touch, .pt or .onnx (default: {DEFAULT_READER} if it exists; "
                             f"number_reader.onnx with .onnx weights)")
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


def load_models(args):
    """(the CNN, the number reader or None) that the command line asks for; PredictError if a
    weights file is missing or bad. Without a reader, --number says how to train one."""
    model = load_model(args.weights, args.device)
    reader = None
    path = reader_weights(args.reader, args.weights) if args.number else None
    if path is not None:
        reader = load_reader(path, args.device)
    if args.number and reader is None:
        how = ("`python export_onnx.py` exports the reader once `python number_reader.py` has trained it"
               if is_onnx(args.weights) else "`python number_reader.py` trains the reader")
        print(f"note: no {reader_default(args.weights)}, so digits that touch are read by cutting them "
              f"apart alone; {how}, which reads them far better.", file=sys.stderr)
    return model, reader


class Output:
    """What the command line prints for each picture, the figures it writes, and how many
    pictures failed."""

    def __init__(self, args):
        self.args = args
        self.failures = 0
        self.figures = set()
        # Where a screen exists the first few figures stay open to be shown at the end.
        self.display = args.show and has_display()

    def error(self, error):
        self.failures += 1
        hint = (" Edit image_path at the top of predict.py or pass a path: "
                "python predict.py PATH." if not self.args.paths else "")
        print(f"error: {error}{hint}", file=sys.stderr)

    def _keep_open(self):
        return self.display and len(self.figures) < 10

    def number(self, path, reading):
        print(format_number(path, reading.digits, reading.left_out), flush=True)
        if self.args.show:
            show_number(path, reading.digits, self.figures, keep_open=self._keep_open(),
                        left_out=reading.left_out)

    def digit(self, path, tensor, probs, count):
        several = f"; it holds {count} digits: use --number to read them all" if count > 1 else ""
        if why_not_a_digit(probs):
            self.failures += 1  # as for a picture with nothing to read: the exit status says so
            print(f"{path}: not a digit{several}", flush=True)
        else:
            print(format_line(path, probs, self.args.top_k) + several, flush=True)
        if self.args.show:
            show_prediction(path, tensor, probs, self.figures, keep_open=self._keep_open())


def print_numbers(pool, model, reader, paths, output):
    """--number: each picture's number, read in the pool's threads, printed in order."""
    for path, result in zip(paths, pool.map(lambda p: _read_number(model, reader, p), paths)):
        if isinstance(result, PredictError):
            output.error(result)
        else:
            output.number(path, result)


def print_digits(pool, model, paths, output):
    """Each picture's digit: prepared in the pool's threads, read in one forward pass, printed
    in order."""
    read, tensors, counts = [], [], []
    for path, result in zip(paths, pool.map(lambda p: _read_one(model, p), paths)):
        if isinstance(result, PredictError):
            output.error(result)
        else:
            read.append(path)
            tensors.append(result.tensor)
            counts.append(result.count)
    if not read:
        return
    probs = digit_probabilities(model, tensors)
    for path, tensor, p, count in zip(read, tensors, probs, counts):
        output.digit(path, tensor, p, count)


def main(argv=None):
    args = parse_args(argv)
    paths = args.paths or [image_path]
    try:
        if args.show:
            check_matplotlib()
        model, reader = load_models(args)
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    files = list(image_files(paths))
    if not files:
        print(f"error: no image files in {', '.join(paths)}.", file=sys.stderr)
        return 1
    output = Output(args)
    # Preprocessing is most of the time; Pillow, NumPy and SciPy release the GIL in their
    # heavy parts, so threads spread it over the cores with results kept in order.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), BATCH_SIZE):
            batch = files[start:start + BATCH_SIZE]
            if args.number:
                print_numbers(pool, model, reader, batch, output)
            else:
                print_digits(pool, model, batch, output)
    if output.display:
        pyplot().show()
    return 1 if output.failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
