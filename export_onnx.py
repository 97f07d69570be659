"""
Export the trained models to ONNX, to read digits where PyTorch is not installed: with ONNX
Runtime in a small server or container, on a phone or in a browser (docs/onnx.md says how).

    python export_onnx.py                        # mnist_cnn.pt -> mnist_cnn.onnx, and
                                                 # number_reader.pt -> number_reader.onnx if it exists
    python export_onnx.py --weights runs/a.pt    # -> runs/a.onnx, beside the weights
    python export_onnx.py --reader my_reader.pt  # -> my_reader.onnx

The digit CNN's file gives both its logits and its calibrated probabilities (softmax of the logits
over the temperature training recorded), and records the temperature and the "not a digit"
threshold in its metadata. Each export is checked before it is kept: the whole MNIST test set
through PyTorch and through ONNX Runtime must give the same digit for every image (for the number
reader, the same digits for every row made of them) and probabilities within 1e-4; otherwise
nothing is written.
"""
import argparse
import os
import sys
import warnings

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ModuleNotFoundError:  # the reading-only install (requirements-serve.txt) has no PyTorch
    sys.exit("Error: exporting needs PyTorch, which is not installed here: "
             "pip install -r requirements.txt (requirements-serve.txt only reads).")

from reading.ctc import decode
from reading.digit_input import MNIST_MEAN, MNIST_STD
from reading.errors import PredictError
from reading.models import load_model, load_reader
from reading.runtime import (DEFAULT_READER, DEFAULT_WEIGHTS, DIGIT_INPUT, DIGIT_MODEL, MEAN_KEY, MEANINGS,
                             MODEL_KEY, NUMBER_READER, READER_INPUT, READER_OUTPUT, STD_KEY, TEMPERATURE_KEY,
                             THRESHOLD_KEY, OnnxDigits, OnnxReader, TorchDigits, TorchReader, reader_weights)
from reading.verdict import NOT_A_DIGIT_BELOW
from training.run_files import atomic_write

# Opset 17 is read by every ONNX Runtime of the last few years, onnxruntime-web and -mobile included.
OPSET = 17
# The largest difference in any probability that the check lets through.
TOLERANCE = 1e-4
# Batches of 500 digits; the number reader's rows hold 1, 2, 4 or 5 of them, so every digit is read once.
CHECK_BATCH = 500
ROW_LENGTHS = (1, 2, 4, 5)
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class ExportError(Exception):
    """The export could not be made or does not read as PyTorch does; str(error) is one sentence."""


class Calibrated(torch.nn.Module):
    """The CNN with its calibration: the logits, and softmax(logits / temperature)."""

    def __init__(self, model, temperature):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, image):
        logits = self.model(image)
        return logits, F.softmax(logits / self.temperature, dim=1)


def main(argv=None):
    args = parse_args(argv)
    try:
        export_digit_model(args.weights)
        reader = reader_weights(args.reader)
        if reader:
            export_number_reader(reader)
    except (PredictError, ExportError) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Export the digit CNN and the number reader to ONNX, "
                                                 "each beside its weights with the suffix .onnx.")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help=f"the digit CNN's weights (default: {DEFAULT_WEIGHTS})")
    parser.add_argument("--reader", default=None,
                        help=f"the number reader's weights (default: {DEFAULT_READER}, when it exists)")
    return parser.parse_args(argv)


def target_of(source):
    """Where the export of the weights at source goes: beside them, with the suffix .onnx."""
    return os.path.splitext(source)[0] + ".onnx"


def export_digit_model(source):
    model = load_model(source)
    temperature = float(getattr(model, "temperature", 1.0))
    metadata = {MODEL_KEY: DIGIT_MODEL, TEMPERATURE_KEY: repr(temperature),
                THRESHOLD_KEY: repr(NOT_A_DIGIT_BELOW), MEAN_KEY: repr(MNIST_MEAN), STD_KEY: repr(MNIST_STD)}

    def write(path):
        export(Calibrated(model, temperature), torch.zeros(2, 1, 28, 28), path, metadata,
               inputs={DIGIT_INPUT: {0: "batch"}}, outputs={"logits": {0: "batch"}, "probabilities": {0: "batch"}})
        return check_digits(TorchDigits(model), OnnxDigits(path), source)
    write_checked(source, write, OnnxDigits)


def export_number_reader(source):
    reader = load_reader(source)

    def write(path):
        export(reader, torch.zeros(2, 1, 28, 64), path, {MODEL_KEY: NUMBER_READER},
               inputs={READER_INPUT: {0: "batch", 3: "width"}}, outputs={READER_OUTPUT: {0: "batch", 1: "columns"}})
        return check_reader(TorchReader(reader), OnnxReader(path), source)
    write_checked(source, write, OnnxReader)


def write_checked(source, write, opener):
    """write(path) exports and checks to a temporary name beside source, which becomes the .onnx
    only once checked: on any failure no file is left. Then says what was written."""
    target = target_of(source)
    checked = []
    try:
        atomic_write(target, lambda path: checked.append(write(path)))
    except OSError as error:
        raise ExportError(f"Could not write {target}: {error.strerror or error}.") from error
    describe(source, target, opener(target).session, checked[0])


def export(module, example, path, metadata, inputs, outputs):
    """module as an ONNX graph at path with dynamic axes and the metadata given."""
    import onnx
    # The TorchScript-based exporter: it needs no onnxscript, writes one self-contained file, and
    # keeps the number reader's width free in the graph's declared output shape.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its DeprecationWarning, and the LSTM's note on batch sizes
        torch.onnx.export(module.eval(), (example,), path, dynamo=False, opset_version=OPSET,
                          input_names=list(inputs), output_names=list(outputs), dynamic_axes={**inputs, **outputs})
    graph = onnx.load(path)
    onnx.helper.set_model_props(graph, metadata)
    onnx.checker.check_model(graph)
    onnx.save(graph, path)


def mnist_test_batches():
    """The MNIST test set normalised as reading normalises a digit, in batches of N x 1 x 28 x 28
    float32, with the ink levels in [0, 1] alongside (for the number reader's rows)."""
    from training.mnist_data import load_digits
    images, _ = load_digits(DATA_DIR, train=False)
    levels = images.astype(np.float32) / 255
    for start in range(0, len(levels), CHECK_BATCH):
        chunk = levels[start:start + CHECK_BATCH, None]
        yield ((chunk - MNIST_MEAN) / MNIST_STD).astype(np.float32), chunk


def check_digits(torch_model, onnx_model, source):
    """ExportError unless both give the same digit for every MNIST test image and probabilities
    within TOLERANCE."""
    differ, largest, count = 0, 0.0, 0
    for batch, _ in mnist_test_batches():
        expected, got = torch_model.probabilities(batch), onnx_model.probabilities(batch)
        differ += int((expected.argmax(1) != got.argmax(1)).sum())
        largest = max(largest, float(np.abs(expected - got).max()))
        count += len(batch)
    return judge(source, differ, largest, f"{count} MNIST test digits")


def check_reader(torch_reader, onnx_reader, source):
    """ExportError unless both read the same digits in every row of MNIST test digits (rows of
    ROW_LENGTHS digits side by side, so the width varies) and give probabilities within TOLERANCE."""
    differ, largest, count = 0, 0.0, 0
    for i, (_, levels) in enumerate(mnist_test_batches()):
        rows = rows_of(levels, ROW_LENGTHS[i % len(ROW_LENGTHS)])
        expected, got = torch_reader.log_probabilities(rows), onnx_reader.log_probabilities(rows)
        differ += sum(decode(a) != decode(b) for a, b in zip(expected, got))
        largest = max(largest, float(np.abs(np.exp(expected) - np.exp(got)).max()))
        count += len(rows)
    return judge(source, differ, largest, f"{count} rows of MNIST test digits")


def judge(source, differ, largest, what):
    """ExportError unless nothing read differently and no probability moved by more than
    TOLERANCE; else what was checked, for describe()."""
    if differ or not largest <= TOLERANCE:
        raise ExportError(f"The ONNX export of {source} does not read as PyTorch does: {differ} of {what} "
                          f"read differently and probabilities differ by up to {largest:.2g} (at most "
                          f"{TOLERANCE:g} allowed), so nothing was written.")
    return f"{what} read alike in PyTorch and ONNX Runtime, probabilities within {largest:.1g}"


def rows_of(levels, k):
    """The digits (N x 1 x 28 x 28, ink levels) side by side k at a time: N//k rows 28 x 28k."""
    n = len(levels) // k * k
    return np.ascontiguousarray(levels[:n, 0].reshape(-1, k, 28, 28).transpose(0, 2, 1, 3)
                                .reshape(-1, 1, 28, 28 * k))


def describe(source, target, session, checked):
    """The export's opset, inputs and outputs (names, shapes, meaning), metadata and file sizes."""
    import onnx
    graph = onnx.load(target)
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    print(f"{target}: opset {opset}, {os.path.getsize(target) / 1e6:.2f} MB "
          f"(from {source}, {os.path.getsize(source) / 1e6:.2f} MB)")
    for kind, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for arg in args:
            shape = " x ".join(str(d) for d in arg.shape)
            print(f"  {kind} {arg.name} ({shape}, float32): {MEANINGS[arg.name]}")
    for prop in graph.metadata_props:
        print(f"  metadata {prop.key} = {prop.value}")
    print(f"  checked: {checked}")


if __name__ == "__main__":
    sys.exit(main())
