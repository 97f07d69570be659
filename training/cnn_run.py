"""A training run of the CNN (mnist_cnn_model.py): where it starts from, its checkpoint and
metrics after each epoch, its files at the end, and the sentences it stops with.
"""
import contextlib
import importlib.metadata
import math
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from reading.models import metadata_path, sha256_of
from training.augment import NONDIGITS
from training.calibration import fit_temperature, logits_of
from training.figures import Mistake, save_figures
from training.mnist_data import MNIST_FILES, DataError, load_mnist
from training.nondigits import nondigit_bank
from training.run_files import DISK_FULL, atomic_save, atomic_write_json


class Evaluation(NamedTuple):
    """The model on the test set: mean loss, how many it got right, its answer for each image."""
    loss: float
    correct: int
    predictions: torch.Tensor


def resumed_run(parser, args, settings_names):
    """The checkpoint and the settings of the run that args.resume names; parser.error when any
    of settings_names was given too, or when there is no good checkpoint there."""
    given = [k for k in settings_names if getattr(args, k) is not None]
    if given:
        parser.error(f"--resume continues a run with the settings it started with; "
                     f"drop --{given[0].replace('_', '-')}")
    checkpoint_path = os.path.join(args.resume, "checkpoint.pt")
    if not os.path.isfile(checkpoint_path):
        parser.error(f"--resume {args.resume}: no checkpoint.pt there to resume from")
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        # A checkpoint without these settings was made before they existed, without them.
        config = {"precision": "fp32", "nondigits": 0, "validation": 0, **checkpoint["config"]}
    except Exception:
        parser.error(f"--resume {args.resume}: checkpoint.pt is damaged or not a checkpoint of this script")
    return checkpoint, config


def new_run_dir(run_dir=None):
    """run_dir, or by default runs/<timestamp>."""
    if run_dir:
        return run_dir
    run_dir = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(run_dir):  # two runs started in the same second
        run_dir += f"-{os.getpid()}"
    return run_dir


def load_data(config, device):
    """((train images, labels), (validation images, labels), (test images, labels)) on device:
    the last config["validation"] training pictures held out of training to calibrate on, the
    rest cut to config["limit"]; exits with one sentence when the data set is missing or damaged."""
    try:
        train_images, train_labels = load_mnist(config["data_dir"], train=True, device=device)
        test_set = load_mnist(config["data_dir"], train=False, device=device)
    except DataError as e:
        sys.exit(f"Error: {e}")
    kept = len(train_images) - config["validation"]
    validation = train_images[kept:], train_labels[kept:]
    train_images, train_labels = train_images[:kept], train_labels[:kept]
    if config["limit"]:
        train_images, train_labels = train_images[:config["limit"]], train_labels[:config["limit"]]
    return (train_images, train_labels), validation, test_set


def nondigits_of(config, count, device):
    """The run's pictures that are not digits (training/nondigits.py) on device, drawn from its
    seed, or None when it trains on none: config["nondigits"] of them, or fewer when an epoch of
    count training digits uses fewer (each is distorted anew every time it is used)."""
    if not config["nondigits"]:
        return None
    start = time.perf_counter()
    bank = nondigit_bank(min(config["nondigits"], math.ceil(NONDIGITS * count)), config["seed"])
    print(f"Drew {len(bank)} pictures that are not digits in {time.perf_counter() - start:.0f}s", flush=True)
    return bank.to(device)


@dataclass
class Run:
    """What the checkpoint holds (the model, the optimizer, the generator that shuffles and
    augments, the schedule, the epochs so far), and the files the run writes in run_dir."""
    config: dict
    device: torch.device
    run_dir: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    scheduler: object
    history: list = field(default_factory=list)
    elapsed: float = 0.0

    def start(self, checkpoint):
        """Continue from checkpoint, or save the first one: even a run stopped in its first epoch
        can be resumed."""
        if checkpoint is not None:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.generator.set_state(checkpoint["generator"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.history, self.elapsed = checkpoint["history"], checkpoint["elapsed"]
            print(f"Resuming {self.run_dir} after epoch {len(self.history)} of {self.config['epochs']}")
        bf16 = self.config["precision"] == "bf16"
        print(f"Training on {self.device} in {'bf16 mixed precision' if bf16 else 'fp32'}", flush=True)
        if checkpoint is None:
            self.save_checkpoint()

    def save_checkpoint(self):
        atomic_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "generator": self.generator.get_state(), "config": self.config,
                     "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                     "history": self.history, "elapsed": self.elapsed},
                    os.path.join(self.run_dir, "checkpoint.pt"))

    def write_metrics(self, **final):
        atomic_write_json(
            {"config": self.config, "device": str(self.device), "precision": self.config["precision"],
             "epochs": self.history, "train_seconds": round(self.elapsed, 1), "data_sha256": MNIST_FILES,
             "versions": {"python": platform.python_version(), "torch": torch.__version__,
                          "torchvision": importlib.metadata.version("torchvision")},
             "finished": bool(final), **final},
            os.path.join(self.run_dir, "metrics.json"))

    def end_epoch(self, epoch, train_loss, evaluation, seconds):
        """Record the epoch, print it, and save the checkpoint and metrics after it."""
        self.elapsed += seconds
        accuracy = 100 * evaluation.correct / len(evaluation.predictions)
        self.history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": evaluation.loss,
                             "test_accuracy": accuracy, "seconds": round(seconds, 2)})
        print(f"Epoch {epoch}/{self.config['epochs']}: loss {train_loss:.4f}, test loss {evaluation.loss:.4f}, "
              f"test accuracy {accuracy:.2f}%, {seconds:.1f}s (elapsed {self.elapsed:.0f}s)", flush=True)
        self.save_checkpoint()
        self.write_metrics()

    def calibrate(self, validation):
        """The temperature that calibrates the model's probabilities on the held-out validation
        pictures (see training/calibration.py), or None when there are none."""
        images, labels = validation
        if len(images) == 0:
            return None
        temperature = fit_temperature(logits_of(self.model, images, precision=self.config["precision"]), labels)
        print(f"Calibrated on {len(images)} held-out training digits: temperature {temperature:.3f}", flush=True)
        return temperature

    def finish(self, test_images, test_labels, evaluation, validation):
        """The calibration, the figures, the final metrics, the weights and the record beside
        them; returns the test accuracy in percent."""
        temperature = self.calibrate(validation)
        labels, predictions = test_labels.cpu(), evaluation.predictions.cpu()
        confusion = torch.bincount(labels * 10 + predictions, minlength=100).reshape(10, 10)
        per_class = {str(d): round(100 * confusion[d, d].item() / confusion[d].sum().item(), 2) for d in range(10)}
        n_test, correct = len(labels), evaluation.correct
        accuracy = 100 * correct / n_test
        wrong = (predictions != labels).nonzero().flatten()[:48].tolist()
        save_figures(self.run_dir, self.history, confusion,
                     [Mistake(test_images[i, 0].cpu(), int(labels[i]), int(predictions[i])) for i in wrong])
        self.write_metrics(test_accuracy=accuracy, correct=correct, total=n_test, per_class_accuracy=per_class,
                           confusion_matrix=confusion.tolist(), temperature=temperature)
        self.save_weights(accuracy, per_class, temperature)
        print(f"Saved weights to {self.config['weights']}; curves, confusion matrix and mistakes in {self.run_dir}/")
        print(f"Test accuracy: {accuracy:.2f}% ({correct}/{n_test})")
        return accuracy

    def save_weights(self, accuracy, per_class, temperature):
        weights = self.config["weights"]
        # Saved from the CPU so that a plain torch.load(path) works on any machine.
        atomic_save({k: v.cpu() for k, v in self.model.state_dict().items()}, weights)
        # The weights file stays a plain state_dict; what produced it is recorded beside it.
        atomic_write_json({"config": self.config, "test_accuracy": accuracy, "per_class_accuracy": per_class,
                           "torch": torch.__version__, "device": str(self.device),
                           "precision": self.config["precision"], "data_sha256": MNIST_FILES,
                           "weights_sha256": sha256_of(weights), "run_dir": self.run_dir,
                           **({} if temperature is None else {"temperature": temperature}),
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                          metadata_path(weights))


def exit_interrupted(run_dir, epochs_done, signum):
    print(f"{signal.Signals(signum).name}: stopped. The checkpoint after epoch {epochs_done} is in "
          f"{run_dir}/checkpoint.pt; continue with: python mnist_cnn_model.py --resume {run_dir}",
          file=sys.stderr)
    sys.exit(128 + signum)  # the shell's convention for "killed by this signal"


def exit_diverged(run_dir, epoch, lr):
    sys.exit(f"Error: training diverged in epoch {epoch} (the loss became NaN or infinite), so no weights "
             f"were written and {run_dir}/checkpoint.pt still holds the run as it was before epoch {epoch}; "
             f"start again with a lower --lr than {lr:g}.")


@contextlib.contextmanager
def exit_on_full_disk(run_dir):
    """A full disk (or quota) while the run writes a file: one sentence that says what to do."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL or not error.filename:  # only atomic_write's say which file
            raise
        folder = os.path.dirname(error.filename) or "."
        if os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
            then = f"continue with: python mnist_cnn_model.py --resume {run_dir}"
        else:  # nothing to resume yet: failed while writing the first checkpoint or unpacking the data
            then = "run the same command again"
        sys.exit(f"Error: {error.strerror[0].lower()}{error.strerror[1:]} in {folder}/ while saving "
                 f"{os.path.basename(error.filename)} (the files already there are intact); free some space, "
                 f"then {then}.")
