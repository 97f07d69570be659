"""The trained models in PyTorch: loading their weights safely, on the device asked for, and
running the CNN on prepared inputs. Only reading PyTorch weights imports this module (see
reading/runtime.py, which also reads the .onnx exports without torch).
"""
import hashlib
import json
import os
import warnings

import torch
import torch.nn.functional as F

from reading.errors import BadWeightsError, DeviceNameError, PredictError, WeightsNotFoundError
from reading.number_model import NumberReader
from reading.runtime import DEFAULT_READER, DEFAULT_WEIGHTS


def sha256_of(path):
    """The file's SHA-256 as hex: training records it beside the weights, loading checks it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata_path(weights):
    """The .json beside a weights file, where training records how they were made."""
    path = os.path.splitext(weights)[0] + ".json"
    return path if path != weights else path + ".json"


def load_model(weights_path=DEFAULT_WEIGHTS, device=None):
    """A CNN in eval mode with the weights from weights_path, on device (default: the CPU)."""
    # The CNN is defined in the training script; it is imported only when a CNN is loaded, so
    # that importing predict loads no training script at all.
    from mnist_cnn_model import CNN
    model = _load_weights(CNN(), weights_path, device, "the CNN in mnist_cnn_model.py",
                          "python mnist_cnn_model.py")
    model.temperature = recorded_temperature(weights_path)
    return model


def recorded_temperature(weights_path):
    """The temperature that training fitted to calibrate these weights' probabilities, from the
    record beside them; 1.0 (the logits as they are) when there is none."""
    try:
        with open(metadata_path(os.fspath(weights_path))) as f:
            temperature = float(json.load(f).get("temperature", 1.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 1.0  # no record (weights from elsewhere) or an unreadable one
    return temperature if 0 < temperature < float("inf") else 1.0


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
    device = resolve_device(device)
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


def resolve_device(device):
    """The torch.device named (cpu, cuda, cuda:N or mps; None: the CPU), or PredictError with one
    sentence when it is not a device name or is not available here."""
    # The CPU by default: a forward pass of these small models is quicker there than starting
    # CUDA, and preprocessing runs on the CPU anyway.
    if device is None:
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceNameError(f"{device!r} is not a device name (use cpu, cuda, cuda:N or mps).") from error
    if device.type not in ("cpu", "cuda", "mps"):
        raise PredictError(f"{str(device)!r} is not a device this can read pictures on (use cpu, "
                           f"cuda, cuda:N or mps).")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError("CUDA was asked for but no CUDA GPU is available; use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PredictError("Apple MPS was asked for but is not available; use --device cpu.")
    return device


@torch.no_grad()
def predict_batch(model, tensors):
    """Calibrated probabilities (N x 10) for a list of preprocessed 1x28x28 tensors, in one
    forward pass: the softmax of the logits divided by the model's temperature (see load_model)."""
    device = next(model.parameters()).device
    batch = torch.stack(list(tensors)).to(device)
    return F.softmax(model(batch) / getattr(model, "temperature", 1.0), dim=1).cpu()
