"""The training loop's machinery, shared by mnist_cnn_model.py and number_reader.py: precision,
memory, stopping on Ctrl-C.
"""
import contextlib
import ctypes
import os
import signal
import sys

import torch


def pick_device(name=None):
    if name is None:
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    return torch.device(name)


def native_bf16(device):
    """Whether the device runs bf16 natively: a CUDA GPU with bf16 units, or a CPU with AMX or
    AVX512-BF16, for which oneDNN has bf16 kernels. Elsewhere bf16 is emulated: on an AVX2 CPU the
    convolutions fall back to PyTorch's reference kernel (_slow_conv2d), many times slower than
    fp32's oneDNN kernels."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    if hasattr(torch.cpu, "get_capabilities"):  # what PyTorch itself detected, where it tells
        flags = {name for name, value in torch.cpu.get_capabilities().items() if value is True}
    elif os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    else:
        flags = set()
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def keep_freed_memory():
    """Ask glibc's malloc to reuse freed memory instead of returning it to the system. A training
    step frees and reallocates megabyte-sized activations and gradients; by default glibc hands
    many of them back and the next step faults the pages in again: 1 to 4 ms of kernel time per
    step on the 2-core CPU here, none with this. The numbers computed do not change."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc (macOS, Windows, musl): nothing to tune
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum; the data set is larger and is mmapped
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


def autocast(device, precision):
    """The context for the forward pass and the loss. bf16 mixed precision: the convolutions and
    matrix products run in bf16 while the weights, their gradients and Adam's state stay fp32; bf16
    has fp32's exponent range, so the gradients need no loss scaling."""
    if precision == "fp32":
        return contextlib.nullcontext()  # not autocast(enabled=False): fp32 runs stay as they were
    return torch.autocast(device.type, dtype=torch.bfloat16)


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request to stop at the next safe point;
    a second one exits at once (checkpoints are written atomically, so that loses nothing)."""

    def __init__(self):
        self.signal = None

    def __call__(self):
        return self.signal is not None

    def handle(self, signum, frame):
        if self.signal is not None:
            print("\nStopped at once.", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signal = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this batch "
              "(press Ctrl-C again to stop at once).", file=sys.stderr, flush=True)

    def install(self):
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)


# ---------------------------------------------------------------------------------------------
