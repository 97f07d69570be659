"""
Train the number reader: a small network that reads a whole row of handwritten digits at once,
for digits written so close that their strokes touch, which cutting them apart reads poorly.

    python number_reader.py                 # saves number_reader.pt
    python number_reader.py --numbers 20000 --epochs 4   # quicker, reads touching digits less well

predict.py and app.py use number_reader.pt when it is there (python predict.py photo.jpg --number).
Without it they read numbers by cutting alone (reading/segment.py), which is as good for digits with space
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
import time

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ModuleNotFoundError:  # the reading-only install (requirements-serve.txt) has no PyTorch
    sys.exit("Error: training needs PyTorch, which is not installed here: "
             "pip install -r requirements.txt (requirements-serve.txt only reads).")

from reading.ctc import BLANK, decode
from reading.models import DEFAULT_READER
from reading.number_model import NumberReader, batch_lines
from training.arguments import check_numbers, check_writable, training_device, training_precision
from training.loop import StopRequest, autocast, keep_freed_memory, progress_bar, run_epoch
from training.mnist_data import DataError, load_digits
from training.run_files import atomic_save
from training.synthetic_numbers import synthetic_numbers_parallel


def batches_by_width(lines, batch_size, rng):
    """Index arrays of batch_size lines of similar width (little padding), in random order."""
    order = np.argsort([line.shape[1] for line in lines], kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(chunks)
    return chunks


def train(model, optimizer, scheduler, lines, digits, batch_size, rng, device, precision,
          progress=None, should_stop=lambda: False):
    """One pass over the lines. Returns the mean CTC loss per line, None when should_stop()
    turned true, or a loss that is not finite when training diverged."""
    def loss_of(idx):
        x, columns = batch_lines([lines[i] for i in idx])
        targets = torch.tensor([d for i in idx for d in digits[i]])
        lengths = torch.tensor([len(digits[i]) for i in idx])
        with autocast(device, precision):
            log_probs = model(x.to(device, memory_format=torch.channels_last))
        return F.ctc_loss(log_probs.float().transpose(0, 1), targets, columns, lengths, blank=BLANK,
                          zero_infinity=True)

    return run_epoch(model, optimizer, scheduler, batches_by_width(lines, batch_size, rng), loss_of,
                     len(lines), progress, should_stop)


@torch.no_grad()
def test(model, lines, digits, device, precision="fp32"):
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
    parser.add_argument("--weights", default=DEFAULT_READER,
                        help=f"where to save the trained state_dict (default: {DEFAULT_READER})")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="as in mnist_cnn_model.py: bf16 where the hardware runs it natively (default: auto)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    args = parser.parse_args(argv)
    check_numbers(parser, args, at_least_one=("numbers", "epochs", "batch_size", "test_numbers"), positive=("lr",))
    args.device = training_device(parser, args.device)
    args.precision = training_precision(parser, args.precision, args.device)
    check_writable(parser, os.path.dirname(os.path.abspath(args.weights)))
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
    # Channels-last, as the CNN trains: oneDNN's pooling and convolutions run faster that way than
    # in PyTorch's default layout.
    model = NumberReader().to(args.device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.epochs * math.ceil(len(lines) / args.batch_size))
    rng = np.random.default_rng(args.seed)
    stop = StopRequest()
    stop.install()
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        with progress_bar(len(lines), f"Epoch {epoch}/{args.epochs}", "number") as bar:
            loss = train(model, optimizer, scheduler, lines, digits, args.batch_size, rng,
                         args.device, args.precision, bar, stop)
        if loss is None:
            sys.exit(f"Stopped in epoch {epoch}; {args.weights} was not written (start again to train).")
        if not math.isfinite(loss):
            sys.exit(f"Error: training diverged in epoch {epoch} (the loss became NaN or infinite); "
                     f"{args.weights} was not written; start again with a lower --lr than {args.lr:g}.")
        accuracy = test(model, test_lines, test_digits, args.device, args.precision)
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
