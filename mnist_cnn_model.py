"""
Train the classic MNIST CNN and save its weights.

    python mnist_cnn_model.py              # 10 epochs, 3-4 minutes on a 2-core laptop CPU
    python mnist_cnn_model.py --augment    # reads your own photos, drawings and numbers better, 4-5 minutes
    python mnist_cnn_model.py --limit 2000 --epochs 1   # a smoke test in seconds

The data set ships in data/MNIST/raw/ (checksummed), so no network is needed. The weights are
saved as a plain state_dict to mnist_cnn.pt; predict.py reads them.
"""
import argparse
import importlib.metadata
import math
import os
import platform
import signal
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from reading.digit_input import MNIST_MEAN, MNIST_STD
from reading.models import metadata_path, sha256_of
from training.augment import augment_batch, with_number_pieces
from training.figures import save_figures
from training.loop import StopRequest, autocast, keep_freed_memory, native_bf16, pick_device
from training.mnist_data import MNIST_FILES, DataError, load_mnist
from training.run_files import DISK_FULL, atomic_save, atomic_write_json


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
