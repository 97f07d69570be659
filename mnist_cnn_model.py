"""
Train the classic MNIST CNN and save its weights.

    python mnist_cnn_model.py              # 10 epochs: reads photos and drawings, knows a non-digit
    python mnist_cnn_model.py --textbook   # the classic recipe: MNIST's pictures alone
    python mnist_cnn_model.py --limit 2000 --epochs 1   # a smoke test
    python mnist_cnn_model.py --resume runs/<timestamp>  # continue a run stopped with Ctrl-C

The data set ships in data/MNIST/raw/ (checksummed), so no network is needed. The weights are
saved as a plain state_dict to mnist_cnn.pt; predict.py reads them. Beside them, mnist_cnn.json
records the run and the temperature that calibrates the model's probabilities, fitted on training
digits held out of training. The run's metrics, checkpoint and figures go to runs/<timestamp>/.
"""
import argparse
import math
import os
import sys
import time
from typing import NamedTuple

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ModuleNotFoundError:  # the reading-only install (requirements-serve.txt) has no PyTorch
    sys.exit("Error: training needs PyTorch, which is not installed here: "
             "pip install -r requirements.txt (requirements-serve.txt only reads).")

# predict.py and app.py import this file for CNN alone, so the training machinery (training/,
# tqdm, matplotlib) is imported inside the functions below that need it.


class CNN(nn.Module):
    """Conv(1->32, 3x3) + ReLU, MaxPool 2x2, Conv(32->64, 3x3) + ReLU, MaxPool 2x2,
    Linear(64*7*7 -> 128) + ReLU, Linear(128 -> 10). Returns logits.

    temperature: what the logits are divided by before the softmax, so that the probabilities
    mean what they say; reading.models.load_model sets it from the weights' record."""

    temperature = 1.0

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


def train(model, optimizer, images, labels, batch_size, generator, augment=False, precision="fp32",
          scheduler=None, progress=None, should_stop=lambda: False, nondigits=None):
    """One epoch over the training set, shuffled by generator. Returns the mean loss, None when
    should_stop() turned true, or a loss that is not finite when training diverged. nondigits:
    pictures that are not digits (training/nondigits.py), a share of each batch trained towards
    the uniform answer."""
    from training.augment import augment_batch, with_nondigits, with_number_pieces
    from training.loop import autocast, run_epoch

    def loss_of(idx):
        x = images[idx].contiguous(memory_format=torch.channels_last)
        if augment or nondigits is not None:
            if augment:
                x, targets = with_number_pieces(augment_batch(x, generator), labels[idx], generator)
            else:
                targets = F.one_hot(labels[idx], 10).float()
            if nondigits is not None:
                x, targets = with_nondigits(x, targets, nondigits, generator)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(images.device, precision):
                # KL divergence: cross-entropy less the targets' own entropy, so that a model
                # that meets every target exactly still reaches a loss of 0.
                return F.kl_div(F.log_softmax(model(x).float(), 1), targets, reduction="batchmean")
        with autocast(images.device, precision):
            return F.cross_entropy(model(x), labels[idx])

    order = torch.randperm(len(images), generator=generator).to(images.device)
    return run_epoch(model, optimizer, scheduler, order.split(batch_size), loss_of, len(images),
                     progress, should_stop)


@torch.no_grad()
def test(model, images, labels, batch_size=256, precision="fp32"):
    """The Evaluation of the model on the test set: mean loss, number correct and the predicted
    class of every image. (Batches of 256 keep a layer's activations in the CPU's cache.)"""
    from training.cnn_run import Evaluation
    from training.loop import autocast

    model.eval()
    total_loss, predictions = 0.0, []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].contiguous(memory_format=torch.channels_last)
        with autocast(images.device, precision):
            logits = model(x)
            total_loss += F.cross_entropy(logits, labels[start:start + batch_size], reduction="sum").item()
        predictions.append(logits.argmax(1))
    predictions = torch.cat(predictions)
    return Evaluation(total_loss / len(images), int((predictions == labels).sum()), predictions)


TRAINING_DEFAULTS = dict(epochs=10, batch_size=64, lr=0.001, seed=1, data_dir="data",
                         weights="mnist_cnn.pt", limit=None, augment=True, nondigits=8000, validation=5000,
                         schedule="cosine", precision="auto")
# --textbook: the classic recipe, MNIST's 60000 training pictures as they are, and no calibration.
TEXTBOOK = dict(augment=False, nondigits=0, validation=0)


class Settings(NamedTuple):
    """What parse_args found: the run's config (TRAINING_DEFAULTS' keys), where it runs and writes,
    the checkpoint it resumes from (or None), and the accuracy it must reach (or None)."""
    config: dict
    device: torch.device
    run_dir: str
    checkpoint: dict
    min_accuracy: float


def parse_args(argv=None):
    from training.arguments import check_numbers, check_writable, training_device, training_precision
    from training.cnn_run import new_run_dir, resumed_run

    d = TRAINING_DEFAULTS
    parser = argparse.ArgumentParser(description="Train the MNIST CNN and save its weights.")
    parser.add_argument("--epochs", type=int, help=f"number of epochs (default: {d['epochs']})")
    parser.add_argument("--batch-size", type=int, help=f"training batch size (default: {d['batch_size']})")
    parser.add_argument("--lr", type=float, help=f"Adam learning rate (default: {d['lr']})")
    parser.add_argument("--seed", type=int, help=f"random seed; the same seed repeats a CPU run exactly (default: {d['seed']})")
    parser.add_argument("--data-dir", help=f"folder holding MNIST/raw (default: {d['data_dir']})")
    parser.add_argument("--weights", help=f"where to save the trained state_dict (default: {d['weights']})")
    parser.add_argument("--limit", type=int, help="train on the first N training images only, for smoke tests (default: all 60000)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="randomly rotate, scale, shear and shift the training digits and widen or narrow their "
                             "strokes, and learn the pieces that cutting touching digits gives; reads your own "
                             "photos, drawings and numbers better (default: on)")
    parser.add_argument("--nondigits", type=int, metavar="N",
                        help="draw up to N pictures that are not digits (letters, scribbles, shapes, blobs, "
                             "dashes; no more than an epoch uses) and add a quarter of each batch's size of them, "
                             "trained towards no digit, 0 for none "
                             f"(default: {d['nondigits']})")
    parser.add_argument("--validation", type=int, metavar="N",
                        help="hold the last N training pictures out of training to calibrate the probabilities "
                             f"on, 0 for no calibration (default: {d['validation']})")
    parser.add_argument("--textbook", action="store_true", default=None,
                        help="the classic recipe: all 60000 training pictures as they are, no non-digits, no "
                             "calibration (--no-augment --nondigits 0 --validation 0); other flags still apply")
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

    check_numbers(parser, args, at_least_one=("epochs", "batch_size", "limit"), positive=("lr",),
                  at_least_zero=("nondigits", "validation"))
    device = training_device(parser, args.device)
    if args.resume:
        checkpoint, config = resumed_run(parser, args, [*d, "run_dir", "textbook"])
        run_dir = args.resume
    else:
        checkpoint, run_dir = None, new_run_dir(args.run_dir)
        defaults = {**d, **TEXTBOOK} if args.textbook else d
        config = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in defaults.items()}
    config["precision"] = training_precision(parser, config["precision"], device)  # recorded, so --resume keeps it
    check_writable(parser, os.path.dirname(os.path.abspath(config["weights"])), run_dir)
    return Settings(config, device, run_dir, checkpoint, args.min_accuracy)


def main(argv=None):
    from training.cnn_run import Run, exit_diverged, exit_interrupted, exit_on_full_disk, load_data, nondigits_of
    from training.loop import StopRequest, keep_freed_memory, progress_bar

    settings = parse_args(argv)
    config, device, run_dir = settings.config, settings.device, settings.run_dir
    keep_freed_memory()
    with exit_on_full_disk(run_dir):
        (train_images, train_labels), validation, (test_images, test_labels) = load_data(config, device)
        torch.manual_seed(config["seed"])
        model = CNN().to(device, memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], fused=device.type in ("cpu", "cuda"))
        # Shuffling and augmentation draw from this generator alone, so saving its state in the
        # checkpoint is enough for a resumed run to continue exactly as an uninterrupted one.
        generator = torch.Generator().manual_seed(config["seed"])
        steps = config["epochs"] * math.ceil(len(train_images) / config["batch_size"])
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
                     if config["schedule"] == "cosine" else None)
        run = Run(config, device, run_dir, model, optimizer, generator, scheduler)
        run.start(settings.checkpoint)
        nondigits = nondigits_of(config, len(train_images), device)
        stop = StopRequest()
        stop.install()
        evaluation = None
        for epoch in range(len(run.history) + 1, config["epochs"] + 1):
            start = time.perf_counter()
            with progress_bar(len(train_images), f"Epoch {epoch}/{config['epochs']}", "img", unit_scale=True) as bar:
                loss = train(model, optimizer, train_images, train_labels, config["batch_size"], generator,
                             config["augment"], config["precision"], scheduler, bar, stop, nondigits)
            if loss is None:
                exit_interrupted(run_dir, epoch - 1, stop.signal)
            # The last step can leave NaN weights behind a finite loss: look at both, so that neither
            # the checkpoint nor the weights file ever holds a diverged model.
            if not (math.isfinite(loss) and all(p.isfinite().all() for p in model.parameters())):
                exit_diverged(run_dir, epoch, config["lr"])
            evaluation = test(model, test_images, test_labels, precision=config["precision"])
            run.end_epoch(epoch, loss, evaluation, time.perf_counter() - start)
            if stop():
                exit_interrupted(run_dir, epoch, stop.signal)
        if evaluation is None:  # resumed a run whose epochs were all done
            evaluation = test(model, test_images, test_labels, precision=config["precision"])
        accuracy = run.finish(test_images, test_labels, evaluation, validation)
    if settings.min_accuracy is not None and accuracy < settings.min_accuracy:
        sys.exit(f"Error: test accuracy {accuracy:.2f}% is below the required {settings.min_accuracy}%.")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to keep yet
        sys.exit("Interrupted before training started.")
