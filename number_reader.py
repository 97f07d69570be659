"""
Train the number reader: a small network that reads a whole row of handwritten digits at once,
for digits written so close that their strokes touch, which cutting them apart reads poorly.

    python number_reader.py                 # about 9 minutes on 2 CPU cores; saves number_reader.pt
    python number_reader.py --numbers 20000 --epochs 4   # quicker, reads touching digits less well

predict.py and app.py use number_reader.pt when it is there (python predict.py photo.jpg --number).
Without it they read numbers by cutting alone (segment.py), which is as good for digits with space
between them.

It learns from numbers it writes itself out of MNIST training digits: 1-7 digits of sizes +-15%,
strokes widened or thinned, on a drifting baseline with a common slant, half the gaps touching or
crossing (the nearest strokes row by row from 10% of the digit height into each other to 6%
apart), the others from overlapping boxes to wide spaces. It is a CRNN trained with CTC: the
convolutions of the digit CNN, two pooled rows to one column of features per two pixels of
width, a bidirectional LSTM along the row, and for each column the likelihood of each digit and of
"no digit here" (the blank). CTC sums over every way the digits can line up with the columns, so
nobody has to say where one digit ends and the next begins. The test figure it prints is on
numbers written the same way from MNIST test digits.
"""
import argparse
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from mnist_cnn_model import (DataError, StopRequest, atomic_save, autocast, keep_freed_memory, native_bf16,
                             pick_device, prepare_mnist, read_idx)
from preprocess import LINE_HEIGHT, LINE_PAD, fit_line

DEFAULT_WEIGHTS = "number_reader.pt"
BLANK = 10  # CTC's "no digit in this column" class, after the ten digits


class NumberReader(nn.Module):
    """A row of digits (N x 1 x 28 x W, ink 1 on 0) -> log-probabilities of the ten digits and
    the blank for each column of 2 pixels (N x W/2 x 11)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.column = nn.Linear(64 * 7, 128)
        self.along = nn.LSTM(128, 64, bidirectional=True, batch_first=True)
        self.out = nn.Linear(128, 11)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        # Height halves again but width does not: a digit 20 pixels tall keeps about 10 columns,
        # room for CTC to put a blank between two equal digits ("77").
        x = F.max_pool2d(F.relu(self.conv2(x)), (2, 1))
        x = F.relu(self.conv3(x))
        n, c, h, w = x.shape
        x = F.relu(self.column(x.permute(0, 3, 1, 2).reshape(n, w, c * h)))
        x, _ = self.along(x)
        return F.log_softmax(self.out(x).float(), dim=-1)


def batch_lines(lines):
    """A list of 28 x W line arrays -> (N x 1 x 28 x W_max tensor padded with background, the
    number of columns of each line)."""
    width = max(line.shape[1] for line in lines)
    width += width % 2
    batch = torch.zeros(len(lines), 1, LINE_HEIGHT + 2 * LINE_PAD, width)
    for i, line in enumerate(lines):
        batch[i, 0, :, :line.shape[1]] = torch.from_numpy(np.asarray(line, np.float32))
    return batch, torch.tensor([line.shape[1] // 2 for line in lines])


def decode(log_probs):
    """Greedy CTC decoding of one line's log-probabilities (T x 11): the digits, and for each the
    column where it is likeliest. Each run of one class is one symbol, blanks are dropped, so
    "7 7 _ 7" is 77."""
    best = log_probs.argmax(-1).tolist()
    digits, columns = [], []
    previous = BLANK
    for t, c in enumerate(best):
        if c != BLANK and c != previous:
            digits.append(c)
            columns.append(t)
        elif c != BLANK and log_probs[t, c] > log_probs[columns[-1], c]:
            columns[-1] = t
        previous = c
    return digits, columns


def log_likelihood(log_probs, digits):
    """log P(digits | line) under CTC: summed over every alignment of the digits to the columns.
    -inf when the digits cannot fit (more columns are needed than the line has)."""
    if not digits:
        return float(log_probs[:, BLANK].sum())
    loss = F.ctc_loss(log_probs[:, None].float(), torch.tensor([digits]), torch.tensor([len(log_probs)]),
                      torch.tensor([len(digits)]), blank=BLANK, reduction="sum")
    return -float(loss)


# ---------------------------------------------------------------------------------------------
# Numbers to learn from, written from MNIST digits

def digit_ink(image, height, rng):
    """One MNIST digit (uint8 28x28) as ink levels in [0, 1], cropped to its ink, scaled to
    height rows, its width by up to 15% either way, its strokes sometimes widened or thinned."""
    ink = image.astype(np.float32) / 255
    rows, cols = np.flatnonzero(ink.max(1) > 0.1), np.flatnonzero(ink.max(0) > 0.1)
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    width = max(2, round(ink.shape[1] * height / ink.shape[0] * rng.uniform(0.85, 1.15)))
    ink = np.clip(_resize(ink, width, height), 0, 1)
    pen = rng.random()
    if pen < 0.25:
        ink = ndimage.grey_dilation(ink, size=(int(rng.integers(2, 5)),) * 2)
    elif pen < 0.4:
        ink = ndimage.grey_erosion(ink, size=(2, 2))
    return ink


def _resize(array, width, height):
    return np.asarray(Image.fromarray(array, "F").resize((width, height), Image.Resampling.BILINEAR))


def write_number(inks, rng):
    """The digits' ink side by side, on a baseline that drifts and jitters, each gap either
    touching (the nearest strokes, row by row, from 10% of the height into each other to 6%
    apart) or between ink boxes (from 15% overlap to 70% of the height apart); then the whole
    row sheared by a common slant of up to 17 degrees. Ink levels in [0, 1]."""
    n = len(inks)
    height = max(ink.shape[0] for ink in inks)
    drift = rng.uniform(-0.15, 0.15) * height
    canvas = np.zeros((5 * height, sum(ink.shape[1] for ink in inks) + 2 * height + int(0.8 * height * n)),
                      np.float32)
    right = height  # where the ink box of the digits so far ends
    for k, ink in enumerate(inks):
        solid = ink > 0.5
        base = 3 * height + drift * k / max(n - 1, 1) + rng.normal(0, 0.04) * height
        top = int(round(base - ink.shape[0]))
        left = right
        if k > 0 and rng.random() < 0.5:
            so_far = canvas[top:top + ink.shape[0]] > 0.5
            both = solid.any(1) & so_far.any(1)
            gap = rng.uniform(-0.1, 0.06) * height
            if both.any():
                last = so_far.shape[1] - 1 - np.argmax(so_far[:, ::-1], axis=1)
                first = np.argmax(solid, axis=1)
                left = int(round(gap + (last[both] - first[both]).max())) + 1
            else:
                left = int(round(right + gap))
        elif k > 0:
            left = int(round(right + rng.uniform(-0.15, 0.7) * height))
        left = max(left, 0)
        region = canvas[top:top + ink.shape[0], left:left + ink.shape[1]]
        np.maximum(region, ink[:region.shape[0], :region.shape[1]], out=region)
        right = max(right, left + ink.shape[1])
    slant = rng.uniform(-0.3, 0.3)
    img = Image.fromarray(canvas, "F")
    sheared = img.transform(img.size, Image.Transform.AFFINE, (1, slant, -slant * canvas.shape[0] / 2, 0, 1, 0),
                            Image.Resampling.BILINEAR)
    return np.clip(np.asarray(sheared), 0, 1)


def synthetic_numbers(images, labels, count, seed):
    """count numbers of 1-7 digits drawn from images (uint8 N x 28 x 28) with their labels, as
    (lines: 28 x W float16 arrays, digits: lists of ints). The same seed gives the same numbers."""
    rng = np.random.default_rng(seed)
    lines, digits = [], []
    for _ in range(count):
        picked = rng.choice(len(images), int(rng.integers(1, 8)))
        height = 40 * rng.uniform(0.8, 1.2)
        inks = [digit_ink(images[i], int(height * rng.uniform(0.85, 1.15)), rng) for i in picked]
        ink = write_number(inks, rng)
        if rng.random() < 0.5:  # pen-sharp edges, as a photo of ink has, besides MNIST's soft ones
            ink = np.clip((ink - 0.5) * rng.uniform(2, 6) + 0.5, 0, 1)
        lines.append(fit_line(ink).astype(np.float16))
        digits.append([int(labels[i]) for i in picked])
    return lines, digits


CHUNK = 2000
# Each worker process's copy of the MNIST digits, set once by _share when it starts: passed with
# every chunk instead, the 47 MB of training images would be pickled 40 times.
_digits = None


def _share(images, labels):
    global _digits
    _digits = images, labels


def _write_chunk(count, seed):
    return synthetic_numbers(*_digits, count, seed)


def synthetic_numbers_parallel(images, labels, count, seed, workers):
    """synthetic_numbers in chunks of CHUNK, each with its own seed, spread over worker processes:
    the same numbers whatever the number of workers."""
    counts = [min(CHUNK, count - start) for start in range(0, count, CHUNK)]
    seeds = [(seed, k) for k in range(len(counts))]
    lines, digits = [], []
    with ProcessPoolExecutor(workers, initializer=_share, initargs=(images, labels)) as pool:
        for chunk_lines, chunk_digits in pool.map(_write_chunk, counts, seeds):
            lines += chunk_lines
            digits += chunk_digits
    return lines, digits


def load_digits(data_dir, train):
    """MNIST images (uint8 N x 28 x 28) and labels as NumPy arrays."""
    prepare_mnist(data_dir)
    prefix = os.path.join(data_dir, "MNIST", "raw", "train" if train else "t10k")
    return (read_idx(f"{prefix}-images-idx3-ubyte").numpy(),
            read_idx(f"{prefix}-labels-idx1-ubyte").numpy())


# ---------------------------------------------------------------------------------------------
# Training

def batches_by_width(lines, batch_size, rng):
    """Index arrays of batch_size lines of similar width (little padding), in random order."""
    order = np.argsort([line.shape[1] for line in lines], kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(chunks)
    return chunks


def train_epoch(model, optimizer, scheduler, lines, digits, batch_size, rng, device, precision,
                progress=None, should_stop=lambda: False):
    """One pass over the lines. Returns the mean CTC loss per line, or None when should_stop()
    turned true (checked after every batch)."""
    model.train()
    total = 0.0
    for idx in batches_by_width(lines, batch_size, rng):
        x, columns = batch_lines([lines[i] for i in idx])
        targets = torch.tensor([d for i in idx for d in digits[i]])
        lengths = torch.tensor([len(digits[i]) for i in idx])
        with autocast(device, precision):
            log_probs = model(x.to(device, memory_format=torch.channels_last))
        loss = F.ctc_loss(log_probs.float().transpose(0, 1), targets, columns, lengths, blank=BLANK,
                          zero_infinity=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
        if progress is not None:
            progress.update(len(idx))
        if should_stop():
            return None
    return total / len(lines)


@torch.no_grad()
def evaluate(model, lines, digits, device, precision="fp32"):
    """The fraction of lines read exactly right (every digit, none missing or extra)."""
    model.eval()
    right = 0
    for idx in batches_by_width(lines, 256, np.random.default_rng(0)):
        x, columns = batch_lines([lines[i] for i in idx])
        with autocast(device, precision):
            log_probs = model(x.to(device)).float().cpu()
        right += sum(decode(lp[:n])[0] == digits[i] for lp, n, i in zip(log_probs, columns, idx))
    return right / len(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train the number reader (touching digits) and save its weights.")
    parser.add_argument("--numbers", type=int, default=80000,
                        help="numbers written from MNIST training digits to learn from (default: 80000)")
    parser.add_argument("--epochs", type=int, default=8, help="passes over them (default: 8)")
    parser.add_argument("--batch-size", type=int, default=64, help="lines per step (default: 64)")
    parser.add_argument("--lr", type=float, default=3e-3,
                        help="peak Adam learning rate of the one-cycle schedule (default: 0.003)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--test-numbers", type=int, default=2000,
                        help="numbers written from MNIST test digits to measure on (default: 2000)")
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw (default: data)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help=f"where to save the trained state_dict (default: {DEFAULT_WEIGHTS})")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="as in mnist_cnn_model.py: bf16 where the hardware runs it natively (default: auto)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    args = parser.parse_args(argv)
    for name in ("numbers", "epochs", "batch_size", "test_numbers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    try:
        args.device = pick_device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a device name (try cpu, cuda or mps)")
    if (args.device.type == "cuda" and not torch.cuda.is_available()) or \
            (args.device.type == "mps" and not torch.backends.mps.is_available()):
        parser.error(f"--device {args.device} is not available on this machine")
    if args.precision == "auto":
        args.precision = "bf16" if native_bf16(args.device) else "fp32"
    folder = os.path.dirname(os.path.abspath(args.weights))
    try:  # find an unwritable folder now, not after the training
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        parser.error(f"cannot write to {folder}: {e.strerror}")
    return args


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    started = time.perf_counter()
    try:
        images, labels = load_digits(args.data_dir, train=True)
        test_images, test_labels = load_digits(args.data_dir, train=False)
    except DataError as e:
        sys.exit(f"Error: {e}")
    workers = min(os.cpu_count() or 1, 8)
    lines, digits = synthetic_numbers_parallel(images, labels, args.numbers, args.seed, workers)
    # Another seed from the training numbers', and digits the training never saw.
    test_lines, test_digits = synthetic_numbers_parallel(test_images, test_labels, args.test_numbers,
                                                         args.seed + 1_000_003, workers)
    print(f"Wrote {len(lines)} numbers to learn from in {time.perf_counter() - started:.0f}s; training on "
          f"{args.device} in {'bf16 mixed precision' if args.precision == 'bf16' else 'fp32'}", flush=True)

    torch.manual_seed(args.seed)
    # Channels-last, as the CNN trains: oneDNN's pooling and convolutions run 25-40% faster a step
    # that way than in PyTorch's default layout (measured on 2 Xeon cores in bf16).
    model = NumberReader().to(args.device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.epochs * math.ceil(len(lines) / args.batch_size))
    rng = np.random.default_rng(args.seed)
    stop = StopRequest()
    stop.install()
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        with tqdm(total=len(lines), desc=f"Epoch {epoch}/{args.epochs}", unit="number", leave=False,
                  disable=None, dynamic_ncols=True) as progress:
            loss = train_epoch(model, optimizer, scheduler, lines, digits, args.batch_size, rng,
                               args.device, args.precision, progress, stop)
        if loss is None:
            sys.exit(f"Stopped in epoch {epoch}; {args.weights} was not written (start again to train).")
        if not math.isfinite(loss):
            sys.exit(f"Error: training diverged in epoch {epoch} (the loss became NaN or infinite); "
                     f"{args.weights} was not written; start again with a lower --lr than {args.lr:g}.")
        accuracy = evaluate(model, test_lines, test_digits, args.device, args.precision)
        print(f"Epoch {epoch}/{args.epochs}: loss {loss:.4f}, test numbers read right {100 * accuracy:.1f}%, "
              f"{time.perf_counter() - start:.0f}s", flush=True)
    try:
        atomic_save({k: v.cpu() for k, v in model.state_dict().items()}, args.weights)
    except OSError as e:  # atomic_save leaves no half-written file behind
        sys.exit(f"Error: could not save {args.weights}: {e.strerror}; nothing was written there. "
                 f"Free some space (or pick another --weights) and train again.")
    print(f"Saved the number reader to {args.weights} ({(time.perf_counter() - started) / 60:.1f} minutes in all)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C while writing the numbers: nothing to keep yet
        sys.exit("Interrupted before training started.")
