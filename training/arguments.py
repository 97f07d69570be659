"""What both training scripts check on their command line, before any work: numbers, the device,
the precision, the folders they will write to.
"""
import os
import tempfile

import torch

from reading.errors import DeviceNameError, PredictError
from reading.models import resolve_device
from training.loop import native_bf16


def check_numbers(parser, args, at_least_one=(), positive=(), at_least_zero=()):
    """parser.error for the first of the named flags below its least value (None: not given)."""
    for least, names in ((1, at_least_one), (0, at_least_zero)):
        for name in names:
            value = getattr(args, name)
            if value is not None and value < least:
                parser.error(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    for name in positive:
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")


def training_device(parser, name=None):
    """The device to train on: the one named, checked as predict.py checks its --device, or by
    default cuda, then mps, then the CPU. parser.error says why a name will not do."""
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        return resolve_device(name)
    except DeviceNameError:
        parser.error(f"--device {name!r} is not a device name (try cpu, cuda or mps)")
    except PredictError:
        parser.error(f"--device {name} is not available on this machine")


def training_precision(parser, precision, device):
    """auto made bf16 where the device runs it natively, else fp32; parser.error for bf16 on a GPU
    without it."""
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "cuda":
        with torch.cuda.device(device):
            if not torch.cuda.is_bf16_supported():
                parser.error(f"--precision bf16: {torch.cuda.get_device_name()} has no bf16 support")
    return precision


def check_writable(parser, *folders):
    """Find unwritable outputs now, not after an hour of training: parser.error names the first
    folder that cannot be made or written to."""
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            parser.error(f"cannot write to {folder}: {e.strerror}")
