"""The training loop and its machinery, shared by mnist_cnn_model.py and number_reader.py: the
epoch, its progress bar, precision, memory, stopping on Ctrl-C.
"""
import contextlib
import ctypes
import os
import signal
import sys

import torch
from tqdm import tqdm


def run_epoch(model, optimizer, scheduler, batches, loss_of, count, progress=None, should_stop=lambda: False):
    """One pass of training: for each batch (indices of its items) a step on loss_of(batch), the
    mean loss over its items. Returns the mean loss per item of the count there are, or None when
    should_stop() turned true (checked after every batch, a safe point to stop at). A loss that
    turns NaN or infinite ends the pass early, within 50 batches, and the returned loss is then
    not finite."""
    model.train()
    total_loss = torch.zeros((), device=next(model.parameters()).device)
    for step, batch in enumerate(batches):
        loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # Accumulate on the device: reading loss.item() every batch would stall a GPU.
        total_loss += loss.detach() * len(batch)
        if progress is not None:
            progress.update(len(batch))
            if step % 50 == 0:
                progress.set_postfix(loss=f"{loss.item():.4f}")
        # Once a loss is NaN or infinite, so is the running sum (losses are never negative), so
        # looking at it every 50 batches catches every one without a sync per batch.
        if step % 50 == 49 and not torch.isfinite(total_loss):
            break
        if should_stop():
            return None
    return total_loss.item() / count


def progress_bar(total, desc, unit, unit_scale=False):
    """The bar an epoch updates: on a terminal only, and gone once the epoch is over."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=False, disable=None,
                dynamic_ncols=True)


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
    many of them back and the next step faults the pages in again, in kernel time. The numbers
    computed do not change."""
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
        return contextlib.nullcontext()  # not autocast(enabled=False): fp32 runs no autocast code at all
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
