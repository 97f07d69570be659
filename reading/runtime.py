"""The models' edge: what the rest of reading asks of a trained model, from PyTorch or from ONNX
Runtime behind one small interface, so that reading can run where PyTorch is not installed.

- a digit model's probabilities(batch): N x 1 x 28 x 28 float32 (normalised with MNIST_MEAN and
  MNIST_STD) -> N x 10 calibrated probabilities;
- a number reader's log_probabilities(batch): N x 1 x 28 x W float32 (ink 1 on 0, W even) ->
  N x W/2 x 11 log-probabilities of the ten digits and CTC's blank for each column.

pad_rows and ctc_log_likelihood do in NumPy what the number reader's input and decoding need of
PyTorch today (reading/number_model.py's batch_lines and log_likelihood).

open_digit_model and open_number_reader pick the implementation from the file: a .onnx file runs
on ONNX Runtime, anything else is loaded as PyTorch weights. This module imports neither torch
nor onnxruntime until one of them is needed, and the ONNX Runtime path never imports torch.
"""
import math
import os

import numpy as np

from reading.errors import BadWeightsError, WeightsNotFoundError

# The names export_onnx.py gives the graphs' inputs and outputs, and what their values mean.
DIGIT_INPUT = "image"
DIGIT_OUTPUTS = ("logits", "probabilities")
READER_INPUT = "line"
READER_OUTPUT = "log_probs"
MEANINGS = {
    DIGIT_INPUT: "digits as MNIST: 28x28 grey levels in [0, 1], white ink on black, then "
                 "(x - mnist_mean) / mnist_std",
    "logits": "the CNN's raw scores for the digits 0-9",
    "probabilities": "softmax(logits / temperature): the calibrated probabilities of 0-9; the digit "
                     "is the likeliest, unless its probability is under not_a_digit_below",
    READER_INPUT: "a row of digits: ink levels in [0, 1], ink 1 on background 0, 28 pixels high "
                  "(digits 20 high, 4 of background above and below), any even width",
    READER_OUTPUT: "for each column of 2 pixels, the log-probabilities of the digits 0-9 and of "
                   "CTC's blank (index 10)",
}

# metadata_props export_onnx.py writes: "reading.model" says which model a file holds, the rest
# what a program needs to prepare its input and judge its output without this repository.
MODEL_KEY = "reading.model"
DIGIT_MODEL = "mnist_cnn"
NUMBER_READER = "number_reader"
TEMPERATURE_KEY = "reading.temperature"
THRESHOLD_KEY = "reading.not_a_digit_below"
MEAN_KEY = "reading.mnist_mean"
STD_KEY = "reading.mnist_std"

EXPORT_COMMAND = "python export_onnx.py"
# CTC's "no digit in this column": the number reader's last class, after the ten digits.
BLANK = 10


def is_onnx(path):
    """Whether a weights path names an ONNX model, by its suffix."""
    return os.fspath(path).lower().endswith(".onnx")


def open_digit_model(path, device=None):
    """The digit CNN at path behind the probabilities() interface: OnnxDigits for a .onnx file,
    else TorchDigits over reading.models.load_model (one-sentence PredictErrors either way)."""
    if is_onnx(path):
        return OnnxDigits(path)
    from reading.models import load_model
    return TorchDigits(load_model(path, device))


def open_number_reader(path, device=None):
    """The number reader at path behind the log_probabilities() interface: OnnxReader for a .onnx
    file, else TorchReader over reading.models.load_reader."""
    if is_onnx(path):
        return OnnxReader(path)
    from reading.models import load_reader
    return TorchReader(load_reader(path, device))


# ---------------------------------------------------------------------------------------------
# PyTorch

class TorchDigits:
    """A loaded CNN (reading.models.load_model) behind the probabilities() interface."""

    def __init__(self, model):
        self.model = model
        self.temperature = float(getattr(model, "temperature", 1.0))

    def probabilities(self, batch):
        import torch

        from reading.models import predict_batch
        # predict_batch is the one place that turns the CNN's logits into calibrated probabilities.
        return predict_batch(self.model, torch.from_numpy(_as_batch(batch, 28))).numpy()


class TorchReader:
    """A loaded number reader (reading.models.load_reader) behind log_probabilities()."""

    def __init__(self, reader):
        self.reader = reader

    def log_probabilities(self, batch):
        import torch
        device = next(self.reader.parameters()).device
        with torch.no_grad():
            out = self.reader(torch.from_numpy(_as_batch(batch, None)).to(device))
        return out.float().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# ONNX Runtime

class OnnxDigits:
    """The digit CNN as exported by export_onnx.py, run by ONNX Runtime."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.session = _session(self.path)
        meta = _check_ours(self.session, self.path, DIGIT_MODEL, "the digit CNN")
        _check_io(self.session, self.path, "the digit CNN", {DIGIT_INPUT: [None, 1, 28, 28]},
                  {"logits": [None, 10], "probabilities": [None, 10]})
        self.temperature = _number(meta, TEMPERATURE_KEY, self.path)
        self.not_a_digit_below = _number(meta, THRESHOLD_KEY, self.path)

    def probabilities(self, batch):
        return self.session.run(["probabilities"], {DIGIT_INPUT: _as_batch(batch, 28)})[0]

    def logits(self, batch):
        return self.session.run(["logits"], {DIGIT_INPUT: _as_batch(batch, 28)})[0]


class OnnxReader:
    """The number reader as exported by export_onnx.py, run by ONNX Runtime."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.session = _session(self.path)
        _check_ours(self.session, self.path, NUMBER_READER, "the number reader")
        _check_io(self.session, self.path, "the number reader", {READER_INPUT: [None, 1, 28, None]},
                  {READER_OUTPUT: [None, None, 11]})

    def log_probabilities(self, batch):
        return self.session.run([READER_OUTPUT], {READER_INPUT: _as_batch(batch, None)})[0]


def _as_batch(batch, width):
    """batch as a C-contiguous float32 N x 1 x 28 x W array, or ValueError if it is not one (a
    programming error, not bad input from a user)."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1:3] != (1, 28) or (width and batch.shape[3] != width):
        raise ValueError(f"expected an N x 1 x 28 x {width or 'W'} batch, got shape {batch.shape}")
    return batch


def _session(path):
    """An ONNX Runtime session on the CPU for the file at path, or one sentence why not."""
    if not os.path.exists(path):
        raise WeightsNotFoundError(f"No ONNX model at {path}: export one first with `{EXPORT_COMMAND}`.")
    if not os.path.isfile(path):
        raise BadWeightsError(f"{path} is not a regular file, so not an ONNX model.")
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # ONNX Runtime's own warnings would print around our sentence
    try:
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...)
        raise BadWeightsError(f"{path} is not an ONNX model that ONNX Runtime can load (it is damaged, "
                              f"cut short or another kind of file).") from error


def _check_ours(session, path, model, what):
    """The file's metadata, or one sentence saying it is not a file export_onnx.py wrote for model."""
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get(MODEL_KEY) != model:
        raise BadWeightsError(f"{path} is an ONNX model, but not {what} as `{EXPORT_COMMAND}` writes it "
                              f"(its metadata has no {MODEL_KEY}={model}).")
    return meta


def _check_io(session, path, what, inputs, outputs):
    """One sentence unless the session's inputs and outputs are exactly those named, float, with
    these shapes (None: any size, as the batch and the row's width are)."""
    for kind, expected, actual in (("inputs", inputs, session.get_inputs()),
                                   ("outputs", outputs, session.get_outputs())):
        found = {arg.name: arg for arg in actual}
        wrong = set(found) != set(expected) or any(
            found[name].type != "tensor(float)" or not _shape_fits(found[name].shape, shape)
            for name, shape in expected.items())
        if wrong:
            described = ", ".join(f"{a.name} {a.shape}" for a in actual)
            wanted = ", ".join(f"{n} {['N' if d is None else d for d in s]}" for n, s in expected.items())
            raise BadWeightsError(f"{path} is not {what} as `{EXPORT_COMMAND}` writes it: its {kind} are "
                                  f"{described}, not {wanted} (float32).")


def _shape_fits(actual, expected):
    # A dimension left free in the export shows as a name (or None); a fixed one as its size.
    return len(actual) == len(expected) and all(
        want is None and not isinstance(got, int) or got == want for got, want in zip(actual, expected))


def _number(meta, key, path):
    try:
        value = float(meta[key])
    except (KeyError, ValueError) as error:
        raise BadWeightsError(f"{path} has no number for {key} in its metadata, so it was not written "
                              f"by `{EXPORT_COMMAND}`.") from error
    if not math.isfinite(value) or value <= 0:
        raise BadWeightsError(f"{path} records {key}={meta[key]} in its metadata, which is not a positive "
                              f"number.")
    return value


# ---------------------------------------------------------------------------------------------
# The number reader's input and output, in NumPy

def pad_rows(rows):
    """Rows of digits (28 x W arrays) as one N x 1 x 28 x W_max float32 batch, padded on the right
    with background to an even width, and the number of the reader's columns of each row."""
    width = max(row.shape[1] for row in rows)
    batch = np.zeros((len(rows), 1, 28, width + width % 2), np.float32)
    for i, row in enumerate(rows):
        batch[i, 0, :, :row.shape[1]] = row
    return batch, [row.shape[1] // 2 for row in rows]


def ctc_log_likelihood(log_probs, digits):
    """log P(digits | row) under CTC, for one row's T x 11 log-probabilities: the sum over every
    alignment of the digits to the columns (the forward algorithm), -inf when they cannot fit."""
    log_probs = np.asarray(log_probs, np.float64)
    if not digits:
        return float(log_probs[:, BLANK].sum())
    # The digits with a blank before, between and after them; an alignment walks this sequence,
    # staying, stepping on, or skipping a blank that stands between two different digits.
    labels = np.full(2 * len(digits) + 1, BLANK)
    labels[1::2] = digits
    skips = np.zeros(len(labels), bool)
    skips[2:] = (labels[2:] != BLANK) & (labels[2:] != labels[:-2])
    alpha = np.full(len(labels), -np.inf)
    alpha[:2] = log_probs[0, labels[:2]]
    for t in range(1, len(log_probs)):
        stepped = np.concatenate([[-np.inf], alpha[:-1]])
        skipped = np.where(skips, np.concatenate([[-np.inf, -np.inf], alpha[:-2]]), -np.inf)
        alpha = np.logaddexp(np.logaddexp(alpha, stepped), skipped) + log_probs[t, labels]
    return float(np.logaddexp(alpha[-1], alpha[-2]))
