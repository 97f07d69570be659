"""
Train the classic MNIST CNN and save its weights.

    python mnist_cnn_model.py              # 10 epochs, 3-4 minutes on a 2-core laptop CPU
    python mnist_cnn_model.py --augment    # reads your own photos, drawings and numbers better, 4-5 minutes
    python mnist_cnn_model.py --limit 2000 --epochs 1   # a smoke test in seconds

The data set ships in data/MNIST/raw/ (checksummed), so no network is needed. The weights are
saved as a plain state_dict to mnist_cnn.pt; predict.py reads them.
"""
import argparse
import contextlib
import ctypes
import errno
import gzip
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

# Mean and standard deviation of the MNIST training pixels (in [0, 1]). Training and predict.py
# both normalise with these, so a digit is seen the same way at both ends.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class CNN(nn.Module):
    """Conv(1->32, 3x3) + ReLU, MaxPool 2x2, Conv(32->64, 3x3) + ReLU, MaxPool 2x2,
    Linear(64*7*7 -> 128) + ReLU, Linear(128 -> 10). Returns logits."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        # ReLU and max-pooling commute (both are monotonic), so pooling first gives the same
        # numbers and gradients while the ReLU touches a quarter of the values.
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


# ---------------------------------------------------------------------------------------------
# Data

# SHA-256 of the uncompressed IDX files (the bytes torchvision reads). They identify MNIST whether
# it came from the embedded copy or from a mirror, whose gzip wrappers differ byte-wise.
MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


class DataError(RuntimeError):
    """The data set is missing or damaged; the message says what to do."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unpack(gz_path, out_path, expected_sha):
    """Decompress gz_path to out_path, refusing content whose checksum is not MNIST's."""
    def write(tmp_path):
        try:
            with gzip.open(gz_path, "rb") as src, open(tmp_path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            ok = sha256_of(tmp_path) == expected_sha
        except (OSError, EOFError, zlib.error) as e:
            if getattr(e, "errno", None) in DISK_FULL:
                raise  # not the copy's fault
            ok = False
        if not ok:
            raise DataError(
                f"{gz_path} is corrupted or truncated (its content does not match the MNIST checksum); "
                f"restore it with 'git checkout -- {gz_path}', or delete it to download a fresh copy.")
    atomic_write(out_path, write)


def _download(raw_dir, name):
    """Fetch one missing file through torchvision, which tries each of its MNIST mirrors."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_and_extract_archive

    filename, md5 = next((f, m) for f, m in MNIST.resources if f.startswith(name))
    for mirror in MNIST.mirrors:
        try:
            download_and_extract_archive(mirror + filename, raw_dir, filename=filename, md5=md5)
            return
        except (OSError, RuntimeError):  # URLError is an OSError; a bad checksum a RuntimeError
            continue
    raise DataError(
        f"MNIST file {filename} is not in {raw_dir} and could not be downloaded (no network?); "
        f"copy the four MNIST .gz files into {raw_dir} (this repository ships them in data/MNIST/raw/)."
    )


def prepare_mnist(data_dir):
    """Make sure the four uncompressed MNIST files in data_dir/MNIST/raw are present and intact:
    verify what is there, unpack the embedded .gz copies, download only what is missing."""
    raw_dir = os.path.join(data_dir, "MNIST", "raw")
    os.makedirs(raw_dir, exist_ok=True)
    for name, expected_sha in MNIST_FILES.items():
        path = os.path.join(raw_dir, name)
        if os.path.exists(path) and sha256_of(path) == expected_sha:
            continue
        if not os.path.exists(path + ".gz"):
            _download(raw_dir, name)
        _unpack(path + ".gz", path, expected_sha)


def read_idx(path):
    """The array in an IDX file (MNIST's format) as a uint8 tensor: a 4-byte header whose last byte
    is the number of dimensions, then each dimension as a big-endian 32-bit integer, then the data."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(data, dtype=torch.uint8, offset=4 + 4 * ndim).view(shape)


def load_mnist(data_dir, train, device="cpu"):
    """The whole MNIST split as normalised tensors: images (N, 1, 28, 28) float32, labels (N,)."""
    prepare_mnist(data_dir)
    # Read directly rather than through torchvision's MNIST class: importing torchvision takes
    # longer than reading the files, and these are the same bytes (prepare_mnist checked them).
    prefix = os.path.join(data_dir, "MNIST", "raw", "train" if train else "t10k")
    images = read_idx(f"{prefix}-images-idx3-ubyte")
    labels = read_idx(f"{prefix}-labels-idx1-ubyte").long()
    # In place: the same arithmetic, without two more copies of the 188 MB training set.
    images = images.unsqueeze(1).float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD)
    return images.to(device), labels.to(device)


# ---------------------------------------------------------------------------------------------
# Training

def change_stroke_width(images, amount):
    """Each image's strokes widened (amount > 0) or narrowed (amount < 0): a blend towards its
    3x3 dilation, up to all of it at amount 1 (a pixel more on each side), or towards its 3x3
    erosion, up to half of it at amount -1 (a full erosion would wipe out MNIST's 2-pixel
    strokes). Markers are far bolder than MNIST's pens. At 28x28 a stroke has little to lose, so
    narrowing mostly makes it fainter; it still earns its place: without it (widening only),
    seed 1 made 23 errors instead of 14 on bench_predict's 3000 user-style images."""
    amount = amount.view(-1, 1, 1, 1)
    dilated = F.max_pool2d(images, 3, 1, 1)
    eroded = -F.max_pool2d(-images, 3, 1, 1)
    return torch.where(amount > 0, images + amount * (dilated - images),
                       images + 0.5 * amount * (images - eroded))


def augment_batch(images, generator):
    """Random small rotation, scale, shear and shift of each image, done for the whole batch at
    once with one affine resampling (cheap on a CPU, unlike per-sample PIL transforms), and a
    random change of stroke width."""
    n = images.shape[0]
    r = torch.rand(n, 6, generator=generator) * 2 - 1  # uniform in [-1, 1)
    angle, scale, shear = r[:, 0] * math.radians(12), 1 + 0.12 * r[:, 1], 0.2 * r[:, 2]
    shift = r[:, 3:5] * (2.5 / 14)  # up to 2.5 pixels; affine_grid works in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin + shear * cos, shift[:, 0]], 1),
        torch.stack([sin, cos + shear * sin, shift[:, 1]], 1),
    ], 1).to(images.device)
    images = change_stroke_width(images, r[:, 5].to(images.device))
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Pixels that come in from outside the image must be background, not zero (zero is grey
    # after normalisation), so resample the offset from the background value.
    background = -MNIST_MEAN / MNIST_STD
    return F.grid_sample(images - background, grid, align_corners=False) + background


# Each augmented batch gets this share of its size again as pieces of numbers that are not one
# digit, and as many digits cut with a sliver of their neighbour (see number_pieces). They are
# added, not swapped in: replacing a quarter of each batch with them misread 4 more of
# bench_predict's 3000 images (seed 1) than adding them, for about the same gain on numbers.
PIECES = 0.125


def _move(ink, scale, dx):
    """Each image of ink (background 0) scaled by scale[i] about its centre, then moved dx[i]
    pixels right: the source column c lands at 13.5 + scale * (c - 13.5) + dx."""
    theta = torch.zeros(len(ink), 2, 3, device=ink.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, 0, 2] = -dx / scale * (2 / 28)  # affine_grid works in [-1, 1] coordinates
    grid = F.affine_grid(theta, list(ink.shape), align_corners=False)
    return F.grid_sample(ink, grid, align_corners=False)


def _ink_columns(ink):
    """The first and last column of each image that holds ink."""
    inked = (ink[:, 0] > 0.3).any(1)
    column = torch.arange(28, device=ink.device).expand_as(inked)
    return (torch.where(inked, column, 28).min(1).values.float(),
            torch.where(inked, column, -1).max(1).values.float())


def _centred(ink):
    """Each image moved sideways so that its ink's centre of mass is on column 14, where
    preprocess.centre_in_28x28 puts what predict.py reads (and MNIST has its digits)."""
    mass = ink[:, 0].sum(1)
    centre = (mass * torch.arange(28., device=ink.device)).sum(1) / mass.sum(1).clamp_min(1e-6)
    return _move(ink, torch.ones_like(centre), 14 - centre)


def number_pieces(images, labels, generator):
    """(not_digits, still_digits) made from a batch of normalised images, like the pieces that
    predict.py's number reader (segment.py) tries when it cuts digits that touch, so that the
    model can learn to be unsure of the first and to still read the second:
    - not_digits: each image with another one touching or crossing it by up to 3 columns on its
      right, the pair shrunk to fit 20 pixels wide; or, for digits other than 1 whose ink spans
      at least 10 columns, the ink left or right of a cut 35-65% of the way across;
    - still_digits: each image with 2-6 columns of another's edge touching it on one side; or,
      where at least 4 columns of ink stay, with 1-3 columns of its own ink cut off one side.
    Each is moved sideways to centre its ink, but not rescaled as predict.py would rescale it:
    a close imitation (training on the very pieces segment.py cuts did no better)."""
    ink, other, u = _piece_draws(images, generator)
    return _not_digits(ink, other, u, labels), _still_digits(ink, other, u)


def _piece_draws(images, generator):
    """The ink of each image, the image paired with it, and its random numbers, drawn from
    generator alone and in one go, whichever pieces are then made of which images."""
    ink = images * MNIST_STD + MNIST_MEAN
    other = ink[torch.randperm(len(ink), generator=generator).to(ink.device)]
    return ink, other, torch.rand(len(ink), 9, generator=generator).to(ink.device)


def _as_image(per_image):  # one value per image, broadcast over its pixels
    return per_image.view(-1, 1, 1, 1)


def _not_digits(ink, other, u, labels):
    """number_pieces' not_digits, normalised, from _piece_draws."""
    left, right = _ink_columns(ink)
    o_left, o_right = _ink_columns(other)
    column = torch.arange(28., device=ink.device).view(1, 1, 1, 28)
    # Two digits taken as one: other's ink starts up to 3 columns before ink's ends.
    overlap = 3 * u[:, 0]
    offset = right + 1 - overlap - o_left  # other's column c sits at ink's column c + offset
    width = right + 1 - left + o_right + 1 - o_left - overlap
    scale = 20 / width.clamp_min(20)
    centre = left + width / 2 - 0.5
    pair = _centred(torch.maximum(_move(ink, scale, -scale * (centre - 13.5)),
                                  _move(other, scale, -scale * (centre - offset - 13.5))))
    cut = _as_image(left + (0.35 + 0.3 * u[:, 1]) * (right - left))
    half = _centred(torch.where(_as_image(u[:, 2] < 0.5), ink * (column <= cut), ink * (column > cut)))
    halve = (u[:, 3] < 0.5) & (right - left + 1 >= 10) & (labels.to(ink.device) != 1)
    return (torch.where(_as_image(halve), half, pair) - MNIST_MEAN) / MNIST_STD


def _still_digits(ink, other, u):
    """number_pieces' still_digits, normalised, from _piece_draws."""
    left, right = _ink_columns(ink)
    o_left, o_right = _ink_columns(other)
    column = torch.arange(28., device=ink.device).view(1, 1, 1, 28)
    on_right = _as_image(u[:, 5] < 0.5)
    band = _as_image(torch.floor(2 + 5 * u[:, 4]))  # whole columns: 2 to 6
    gap = 1 - 3 * u[:, 6]
    neighbour = torch.where(
        on_right,
        _move(other * (column < _as_image(o_left) + band), torch.ones_like(gap), right + 1 + gap - o_left),
        _move(other * (column > _as_image(o_right) - band), torch.ones_like(gap), left - 1 - gap - o_right))
    sliver = torch.floor(1 + 3 * u[:, 8])  # whole columns: 1 to 3
    clipped = torch.where(on_right, ink * (column <= _as_image(right - sliver)),
                          ink * (column >= _as_image(left + sliver)))
    # A thin 1 cut to a sliver is no 1 any more: those get a neighbour's edge instead.
    clip = (u[:, 7] >= 0.6) & (right - left + 1 - sliver >= 4)
    still_digits = _centred(torch.where(_as_image(clip), clipped, torch.maximum(ink, neighbour)))
    return (still_digits - MNIST_MEAN) / MNIST_STD


def with_number_pieces(images, labels, generator):
    """The batch followed by PIECES of its size in not_digits and as many still_digits made
    from its first images (see number_pieces), and the targets of all as probabilities: the
    digit's one-hot, and uniform for not_digits (the model should pick no digit there)."""
    k = int(PIECES * len(images))
    targets = F.one_hot(labels, 10).float()
    if k == 0:
        return images, targets
    # Each kind made only for the images that get it: the pieces cost a few ms a step.
    ink, other, u = _piece_draws(images[:2 * k], generator)
    return (torch.cat([images, _not_digits(ink[:k], other[:k], u[:k], labels[:k]),
                       _still_digits(ink[k:], other[k:], u[k:])]),
            torch.cat([targets, torch.full_like(targets[:k], 0.1), targets[k:2 * k]]))


def train_epoch(model, optimizer, images, labels, batch_size, generator, augment=False,
                progress=None, should_stop=lambda: False, scheduler=None, precision="fp32"):
    """One pass over the shuffled training set. Returns the mean loss, or None when should_stop()
    turned true (checked after every batch, a safe point to stop at). A loss that turns NaN or
    infinite ends the pass early, within 50 batches, and the returned loss is then not finite."""
    model.train()
    order = torch.randperm(len(images), generator=generator).to(images.device)
    total_loss = torch.zeros((), device=images.device)
    for start in range(0, len(images), batch_size):
        idx = order[start:start + batch_size]
        x = images[idx].contiguous(memory_format=torch.channels_last)
        if augment:
            x, targets = with_number_pieces(augment_batch(x, generator), labels[idx], generator)
            with autocast(images.device, precision):
                # KL divergence: cross-entropy less the targets' own entropy, so that a model
                # that meets every target exactly still reaches a loss of 0.
                loss = F.kl_div(F.log_softmax(model(x).float(), 1), targets, reduction="batchmean")
        else:
            with autocast(images.device, precision):
                loss = F.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # Accumulate on the device: reading loss.item() every batch would stall a GPU.
        total_loss += loss.detach() * len(idx)
        if progress is not None:
            progress.update(len(idx))
            if start // batch_size % 50 == 0:
                progress.set_postfix(loss=f"{loss.item():.4f}")
        # Once a loss is NaN or infinite, so is the running sum (losses are never negative), so
        # looking at it every 50 batches catches every one without a sync per batch.
        if start // batch_size % 50 == 49 and not torch.isfinite(total_loss):
            break
        if should_stop():
            return None
    return total_loss.item() / len(images)


@torch.no_grad()
def evaluate(model, images, labels, batch_size=256, precision="fp32"):
    """Mean loss, number correct and the predicted class of every image. (Batches of 256 keep a
    layer's activations in the CPU's cache: 40% faster than 1000 on a laptop CPU.)"""
    model.eval()
    total_loss, predictions = 0.0, []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].contiguous(memory_format=torch.channels_last)
        with autocast(images.device, precision):
            logits = model(x)
            total_loss += F.cross_entropy(logits, labels[start:start + batch_size], reduction="sum").item()
        predictions.append(logits.argmax(1))
    predictions = torch.cat(predictions)
    return total_loss / len(images), int((predictions == labels).sum()), predictions


# ---------------------------------------------------------------------------------------------
# Saving: every file is written to a temporary name and renamed into place, so a crash, a
# Ctrl-C or a full disk never leaves a truncated file where a good one was.

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def atomic_write(path, write):
    """Call write(temporary_path), then rename the result onto path. A full disk (or quota) raises
    OSError with its errno and path, the path of the file meant, not of the temporary one."""
    tmp_path = f"{path}.{os.getpid()}.tmp"  # per process, so that two runs never share one
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise OSError(e.errno, os.strerror(e.errno), os.fspath(path)) from e
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_save(obj, path):
    def write(tmp_path):
        # Through a Python file: given a path, torch.save reports a full disk as a RuntimeError
        # ("unexpected pos ..."), given a file it raises the OSError with ENOSPC.
        with open(tmp_path, "wb") as f:
            torch.save(obj, f)
    atomic_write(path, write)


def atomic_write_json(obj, path):
    def write(tmp_path):
        with open(tmp_path, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    atomic_write(path, write)


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
# The run folder: figures that show what happened

def save_png(fig, path):
    atomic_write(path, lambda tmp_path: fig.savefig(tmp_path, format="png", dpi=100))


def save_figures(run_dir, history, confusion, mistakes):
    """curves.png (loss and accuracy per epoch), confusion_matrix.png and mistakes.png (test digits
    the model got wrong, labelled true/predicted). mistakes: list of (image 28x28, true, pred)."""
    from matplotlib.figure import Figure  # imported here: only training needs it, and it is slow

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "o-", color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    save_png(fig, os.path.join(run_dir, "curves.png"))

    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    # Log colour scale: the diagonal holds ~1000 per class, the errors a handful.
    im = ax.imshow(confusion.numpy() + 1, cmap="Blues", norm="log")
    for true in range(10):
        for pred in range(10):
            count = int(confusion[true, pred])
            if count:
                ax.text(pred, true, count, ha="center", va="center", fontsize=8,
                        color="white" if true == pred else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title="Confusion matrix on the 10,000 test digits")
    fig.colorbar(im, ax=ax, label="count + 1")
    save_png(fig, os.path.join(run_dir, "confusion_matrix.png"))

    # The digits are pasted into one picture with their labels above them: one axes instead of
    # one per digit renders in 0.2 s instead of 1.6 s.
    cols = 8
    rows = max(1, math.ceil(len(mistakes) / cols))
    cell_w, cell_h = 32, 39  # a 28x28 digit, a white margin, and room for its label above it
    mosaic = torch.ones(rows * cell_h, cols * cell_w)
    fig = Figure(figsize=(cols * 1.2, rows * 1.4 + 0.4))
    ax = fig.add_axes((0, 0, 1, 1 - 0.5 / (rows * 1.4 + 0.4)))
    for k, (image, true, pred) in enumerate(mistakes):
        row, col = divmod(k, cols)
        top, left = row * cell_h + 10, col * cell_w + 2
        mosaic[top:top + 28, left:left + 28] = image
        ax.text(left + 14, top - 2, f"true {true} / pred {pred}", fontsize=8, ha="center")
    ax.imshow(mosaic.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    fig.suptitle(f"Misclassified test digits (first {len(mistakes)})")
    save_png(fig, os.path.join(run_dir, "mistakes.png"))


# ---------------------------------------------------------------------------------------------
# Command line

TRAINING_DEFAULTS = dict(epochs=10, batch_size=64, lr=0.001, seed=1, data_dir="data",
                         weights="mnist_cnn.pt", limit=None, augment=False, schedule="cosine",
                         precision="auto")


def parse_args(argv=None):
    d = TRAINING_DEFAULTS
    parser = argparse.ArgumentParser(description="Train the MNIST CNN and save its weights.")
    parser.add_argument("--epochs", type=int, help=f"number of epochs (default: {d['epochs']})")
    parser.add_argument("--batch-size", type=int, help=f"training batch size (default: {d['batch_size']})")
    parser.add_argument("--lr", type=float, help=f"Adam learning rate (default: {d['lr']})")
    parser.add_argument("--seed", type=int, help=f"random seed; the same seed repeats a CPU run exactly (default: {d['seed']})")
    parser.add_argument("--data-dir", help=f"folder holding MNIST/raw (default: {d['data_dir']})")
    parser.add_argument("--weights", help=f"where to save the trained state_dict (default: {d['weights']})")
    parser.add_argument("--limit", type=int, help="train on the first N training images only, for smoke tests (default: all 60000)")
    parser.add_argument("--augment", action="store_true", default=None,
                        help="randomly rotate, scale, shear and shift the training digits and widen or narrow their "
                             "strokes, and learn the pieces that cutting touching digits gives; reads your own "
                             "photos, drawings and numbers better (default: off)")
    parser.add_argument("--schedule", choices=["constant", "cosine"],
                        help="learning rate over the run: cosine decay from --lr to 0, or constant --lr "
                             f"as in the classic recipe (default: {d['schedule']})")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                        help="bf16 mixed precision (fp32 weights) or fp32 throughout; auto is bf16 where the "
                             "hardware runs it natively (a CPU with AMX or AVX512-BF16, an NVIDIA GPU from "
                             f"Ampere on), else fp32 (default: {d['precision']})")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    parser.add_argument("--run-dir", help="folder for metrics, figures and the checkpoint (default: runs/<timestamp>)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the interrupted run in RUN_DIR with the settings it started with")
    parser.add_argument("--min-accuracy", type=float, metavar="PERCENT",
                        help="exit with status 1 if the final test accuracy is below this (default: no check)")
    args = parser.parse_args(argv)

    checks = [("epochs", 1), ("batch_size", 1), ("limit", 1)]
    for name, low in checks:
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    try:
        device = pick_device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a device name (try cpu, cuda or mps)")
    if (device.type == "cuda" and not torch.cuda.is_available()) or \
            (device.type == "mps" and not torch.backends.mps.is_available()):
        parser.error(f"--device {args.device} is not available on this machine")

    if args.resume:
        given = [k for k in list(d) + ["run_dir"] if getattr(args, k) is not None]
        if given:
            parser.error(f"--resume continues a run with the settings it started with; "
                         f"drop --{given[0].replace('_', '-')}")
        checkpoint_path = os.path.join(args.resume, "checkpoint.pt")
        if not os.path.isfile(checkpoint_path):
            parser.error(f"--resume {args.resume}: no checkpoint.pt there to resume from")
        try:
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            config = {"precision": "fp32", **checkpoint["config"]}  # runs from before --precision were fp32
        except Exception:
            parser.error(f"--resume {args.resume}: checkpoint.pt is damaged or not a checkpoint of this script")
        run_dir = args.resume
    else:
        checkpoint = None
        config = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in d.items()}
        run_dir = args.run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
        if not args.run_dir and os.path.exists(run_dir):  # two runs started in the same second
            run_dir += f"-{os.getpid()}"

    if config["precision"] == "auto":
        config["precision"] = "bf16" if native_bf16(device) else "fp32"  # recorded, so --resume keeps it
    if config["precision"] == "bf16" and device.type == "cuda":
        with torch.cuda.device(device):
            if not torch.cuda.is_bf16_supported():
                parser.error(f"--precision bf16: {torch.cuda.get_device_name()} has no bf16 support")

    # Find unwritable outputs now, not after an hour of training.
    for folder in (os.path.dirname(os.path.abspath(config["weights"])), run_dir):
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            parser.error(f"cannot write to {folder}: {e.strerror}")
    return config, device, run_dir, checkpoint, args.min_accuracy


def main(argv=None):
    config, device, run_dir, checkpoint, min_accuracy = parse_args(argv)
    try:
        train(config, device, run_dir, checkpoint, min_accuracy)
    except OSError as e:
        if e.errno not in DISK_FULL or not e.filename:  # only atomic_write's say which file
            raise
        exit_disk_full(e, run_dir)


def train(config, device, run_dir, checkpoint, min_accuracy):
    keep_freed_memory()
    try:
        train_images, train_labels = load_mnist(config["data_dir"], train=True, device=device)
        test_images, test_labels = load_mnist(config["data_dir"], train=False, device=device)
    except DataError as e:
        sys.exit(f"Error: {e}")
    if config["limit"]:
        train_images, train_labels = train_images[:config["limit"]], train_labels[:config["limit"]]

    torch.manual_seed(config["seed"])
    model = CNN().to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], fused=device.type in ("cpu", "cuda"))
    # Shuffling and augmentation draw from this generator alone, so saving its state in the
    # checkpoint is enough for a resumed run to continue exactly as an uninterrupted one.
    generator = torch.Generator().manual_seed(config["seed"])
    steps = config["epochs"] * math.ceil(len(train_images) / config["batch_size"])
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
                 if config["schedule"] == "cosine" else None)
    history, elapsed = [], 0.0
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        history, elapsed = checkpoint["history"], checkpoint["elapsed"]
        print(f"Resuming {run_dir} after epoch {len(history)} of {config['epochs']}")
    precision = config["precision"]
    print(f"Training on {device} in {'bf16 mixed precision' if precision == 'bf16' else 'fp32'}", flush=True)

    def save_checkpoint():
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state(), "config": config,
                     "scheduler": scheduler.state_dict() if scheduler else None,
                     "history": history, "elapsed": elapsed}, checkpoint_path)

    def metrics(**final):
        return {"config": config, "device": str(device), "precision": precision, "epochs": history,
                "train_seconds": round(elapsed, 1), "data_sha256": MNIST_FILES,
                "versions": {"python": platform.python_version(), "torch": torch.__version__,
                             "torchvision": importlib.metadata.version("torchvision")},
                "finished": bool(final), **final}

    if checkpoint is None:
        save_checkpoint()  # even a run stopped in its first epoch can be resumed
    stop = StopRequest()
    stop.install()
    n_test = len(test_labels)
    predictions = None
    for epoch in range(len(history) + 1, config["epochs"] + 1):
        start = time.perf_counter()
        with tqdm(total=len(train_images), desc=f"Epoch {epoch}/{config['epochs']}", unit="img",
                  unit_scale=True, leave=False, disable=None, dynamic_ncols=True) as progress:
            train_loss = train_epoch(model, optimizer, train_images, train_labels, config["batch_size"],
                                     generator, config["augment"], progress, stop, scheduler, precision)
        if train_loss is None:
            exit_interrupted(run_dir, epoch - 1, stop.signal)
        # The last step can leave NaN weights behind a finite loss: look at both, so that neither
        # the checkpoint nor the weights file ever holds a diverged model.
        if not (math.isfinite(train_loss) and all(p.isfinite().all() for p in model.parameters())):
            exit_diverged(run_dir, epoch, config["lr"])
        test_loss, correct, predictions = evaluate(model, test_images, test_labels, precision=precision)
        seconds = time.perf_counter() - start
        elapsed += seconds
        history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss,
                        "test_accuracy": 100 * correct / n_test, "seconds": round(seconds, 2)})
        print(f"Epoch {epoch}/{config['epochs']}: loss {train_loss:.4f}, test loss {test_loss:.4f}, "
              f"test accuracy {100 * correct / n_test:.2f}%, {seconds:.1f}s (elapsed {elapsed:.0f}s)", flush=True)
        save_checkpoint()
        atomic_write_json(metrics(), os.path.join(run_dir, "metrics.json"))
        if stop():
            exit_interrupted(run_dir, epoch, stop.signal)

    if predictions is None:  # resumed a run whose epochs were all done
        _, correct, predictions = evaluate(model, test_images, test_labels, precision=precision)
    test_labels, predictions = test_labels.cpu(), predictions.cpu()
    confusion = torch.bincount(test_labels * 10 + predictions, minlength=100).reshape(10, 10)
    per_class = {str(d): round(100 * confusion[d, d].item() / confusion[d].sum().item(), 2) for d in range(10)}
    accuracy = 100 * correct / n_test
    wrong = (predictions != test_labels).nonzero().flatten()[:48].tolist()
    mistakes = [(test_images[i, 0].cpu() * MNIST_STD + MNIST_MEAN, int(test_labels[i]), int(predictions[i]))
                for i in wrong]
    save_figures(run_dir, history, confusion, mistakes)
    final = {"test_accuracy": accuracy, "correct": correct, "total": n_test,
             "per_class_accuracy": per_class, "confusion_matrix": confusion.tolist()}
    atomic_write_json(metrics(**final), os.path.join(run_dir, "metrics.json"))

    weights = config["weights"]
    # Saved from the CPU so that a plain torch.load(path) works on any machine.
    atomic_save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    # The weights file stays a plain state_dict; what produced it is recorded beside it.
    atomic_write_json({"config": config, "test_accuracy": accuracy, "per_class_accuracy": per_class,
                       "torch": torch.__version__, "device": str(device), "precision": precision,
                       "data_sha256": MNIST_FILES, "weights_sha256": sha256_of(weights),
                       "run_dir": run_dir, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                      metadata_path(weights))
    print(f"Saved weights to {weights}; curves, confusion matrix and mistakes in {run_dir}/")
    print(f"Test accuracy: {accuracy:.2f}% ({correct}/{n_test})")
    if min_accuracy is not None and accuracy < min_accuracy:
        sys.exit(f"Error: test accuracy {accuracy:.2f}% is below the required {min_accuracy}%.")


def metadata_path(weights):
    path = os.path.splitext(weights)[0] + ".json"
    return path if path != weights else path + ".json"


def exit_interrupted(run_dir, epochs_done, signum):
    print(f"{signal.Signals(signum).name}: stopped. The checkpoint after epoch {epochs_done} is in "
          f"{run_dir}/checkpoint.pt; continue with: python mnist_cnn_model.py --resume {run_dir}",
          file=sys.stderr)
    sys.exit(128 + signum)  # the shell's convention for "killed by this signal"


def exit_diverged(run_dir, epoch, lr):
    sys.exit(f"Error: training diverged in epoch {epoch} (the loss became NaN or infinite), so no weights "
             f"were written and {run_dir}/checkpoint.pt still holds the run as it was before epoch {epoch}; "
             f"start again with a lower --lr than {lr:g}.")


def exit_disk_full(error, run_dir):
    """error: the OSError (ENOSPC or EDQUOT) that atomic_write raised, naming the file it meant."""
    folder = os.path.dirname(error.filename) or "."
    if os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
        then = f"continue with: python mnist_cnn_model.py --resume {run_dir}"
    else:  # nothing to resume yet: failed while writing the first checkpoint or unpacking the data
        then = "run the same command again"
    sys.exit(f"Error: {error.strerror[0].lower()}{error.strerror[1:]} in {folder}/ while saving "
             f"{os.path.basename(error.filename)} (the files already there are intact); free some space, "
             f"then {then}.")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to keep yet
        sys.exit("Interrupted before training started.")
