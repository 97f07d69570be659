"""The models' edge: what the rest of reading asks of a trained model, from PyTorch or from ONNX
Runtime behind one small interface, so that reading can run where PyTorch is not installed.

- a digit model's probabilities(batch): N x 1 x 28 x 28 float32 (normalised with MNIST_MEAN and
  MNIST_STD) -> N x 10 calibrated probabilities;
- a number reader's log_probabilities(batch): N x 1 x 28 x W float32 (ink 1 on 0, W even) ->
  N x W/2 x 11 log-probabilities of the ten digits and CTC's blank for each column.

load_model and load_reader (predict.py's) pick the kind from the file: a .onnx file is opened on
ONNX Runtime (OnnxDigits, OnnxReader), anything else is loaded as PyTorch weights and returned as
the torch module itself, as before ONNX existed here. as_digit_model and as_number_reader put
either kind behind the interface. This module imports neither torch nor onnxruntime until one of
them is needed, and the ONNX Runtime path never imports torch.
"""
import math
import os

import numpy as np

from reading.errors import BadWeightsError, PredictError, WeightsNotFoundError

DEFAULT_WEIGHTS = "mnist_cnn.pt"
DEFAULT_READER = "number_reader.pt"

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


def is_onnx(path):
    """Whether a weights path names an ONNX model, by its suffix."""
    return os.fspath(path).lower().endswith(".onnx")


def load_model(weights_path=DEFAULT_WEIGHTS, device=None):
    """The digit CNN at weights_path: an OnnxDigits for a .onnx file, else the PyTorch CNN in
    eval mode (reading.models.load_model), on device (default: the CPU). PredictError with one
    sentence when the file is missing or bad, or PyTorch is needed but not installed."""
    if is_onnx(weights_path):
        _cpu_only(device)
        return OnnxDigits(weights_path)
    return _pytorch(weights_path).load_model(weights_path, device)


def load_reader(weights_path=DEFAULT_READER, device=None):
    """The number reader at weights_path: an OnnxReader for a .onnx file, else the PyTorch
    NumberReader in eval mode (reading.models.load_reader). Pass it to predict_number,
    predict_digits or read_digits to read digits that touch far better than cutting them apart."""
    if is_onnx(weights_path):
        _cpu_only(device)
        return OnnxReader(weights_path)
    return _pytorch(weights_path).load_reader(weights_path, device)


def reader_weights(given=None, weights=DEFAULT_WEIGHTS):
    """The number reader's file to use: the one given, else reader_default(weights) when it
    exists (the reader is optional), else None."""
    if given:
        return given
    default = reader_default(weights)
    return default if os.path.exists(default) else None


def reader_default(weights=DEFAULT_WEIGHTS):
    """The number reader read beside the digit model at weights when none is named: one of the
    same kind, number_reader.onnx beside .onnx weights (which may be read where there is no
    PyTorch), else DEFAULT_READER."""
    return os.path.splitext(DEFAULT_READER)[0] + ".onnx" if is_onnx(weights) else DEFAULT_READER


def _cpu_only(device):
    if device is not None and str(device).split(":")[0] != "cpu":
        raise PredictError(f"An .onnx model is read on the CPU by ONNX Runtime; --device {device} is for "
                           f"PyTorch weights.")


def _pytorch(weights_path):
    """reading.models, which needs torch; one sentence instead of a traceback where torch is not
    installed (a reading-only install from requirements-serve.txt)."""
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise PredictError(f"{os.fspath(weights_path)} is PyTorch weights, and PyTorch is not installed "
                           f"here: read the exported .onnx model instead (`{EXPORT_COMMAND}` writes it "
                           f"where PyTorch is installed).") from error
    from reading import models
    return models


def open_digit_model(path, device=None):
    """The digit CNN at path behind the probabilities() interface (OnnxDigits or TorchDigits)."""
    return as_digit_model(load_model(path, device))


def open_number_reader(path, device=None):
    """The number reader at path behind the log_probabilities() interface."""
    return as_number_reader(load_reader(path, device))


def as_digit_model(model):
    """model behind the probabilities() interface: as it is where it has one (OnnxDigits,
    TorchDigits), else a PyTorch CNN wrapped in TorchDigits."""
    return model if hasattr(model, "probabilities") else TorchDigits(model)


def as_number_reader(reader):
    """reader behind the log_probabilities() interface, as as_digit_model does for the CNN."""
    return reader if hasattr(reader, "log_probabilities") else TorchReader(reader)


def digit_probabilities(model, inputs):
    """The calibrated probabilities (an N x 10 float32 array) of a list or array of the model's
    1x28x28 inputs (reading.digit_input.to_mnist's), in one forward pass of model (either kind)."""
    return as_digit_model(model).probabilities(np.stack(list(inputs)))


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

class _OnnxFile:
    """Pickled as its path, and opened again when unpickled: an ONNX Runtime session cannot be
    pickled, and app.py hands its models to its worker processes that way."""

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


class OnnxDigits(_OnnxFile):
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


class OnnxReader(_OnnxFile):
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
    # One thread: these models take well under a millisecond a picture, the pictures' NumPy work
    # around them is most of the time, and app.py runs one process per core (a pool of threads
    # in each, spinning while they wait for work, would only fight the others for the cores).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
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
