import builtins
import errno
import io
import os
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
from train_support import restore_signal_handlers

# Nothing here imports torch until a fixture needs it: the reading-only venv (requirements-serve.txt,
# no torch) runs some of these tests too (tests/test_serve.py).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def mnist_test_set():
    """The MNIST test split as normalised tensors (images, labels), from the embedded copy."""
    from training.mnist_data import load_mnist
    return load_mnist(os.path.join(ROOT, "data"), train=False)


@pytest.fixture(scope="session")
def mnist_train_set():
    from training.mnist_data import load_mnist
    return load_mnist(os.path.join(ROOT, "data"), train=True)


@pytest.fixture(scope="session")
def mnist_test():
    """The MNIST test digits as stored (uint8, N x 28 x 28, white on black) and their labels."""
    from training.mnist_data import load_digits
    images, labels = load_digits(os.path.join(ROOT, "data"), train=False)
    return images, labels.astype(np.int64)


@pytest.fixture(scope="session")
def train_weights(tmp_path_factory, mnist_train_set):
    """train_weights(count, augment=False): the path of weights trained for one epoch on the first
    count MNIST training images, seeded, so every run gets the same model."""
    from serve_models import train_cnn

    def trained(count, augment=False):
        images, labels = mnist_train_set
        path = tmp_path_factory.mktemp("weights") / f"{count}{'-augment' if augment else ''}.pt"
        return train_cnn(images, labels, count, augment, path)
    return trained


@pytest.fixture(scope="session")
def default_training(tmp_path_factory):
    """`python mnist_cnn_model.py` with its default recipe, run once for the whole session (minutes):
    the finished process (its stdout holds the test accuracy) and the path of the weights it saved."""
    folder = tmp_path_factory.mktemp("default")
    weights = folder / "mnist_cnn.pt"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "mnist_cnn_model.py"), "--weights", str(weights),
                          "--run-dir", str(folder / "run"), "--min-accuracy", "99.0", "--device", "cpu"],
                         capture_output=True, text=True, cwd=ROOT, timeout=1800)
    return DefaultTraining(out, str(weights))


class DefaultTraining(NamedTuple):
    out: subprocess.CompletedProcess
    weights: str


@pytest.fixture(scope="session")
def default_model(default_training):
    """The CNN as the default recipe trains it (see default_training), loaded as predict.py loads it."""
    from predict import load_model
    assert default_training.out.returncode == 0, default_training.out.stderr
    return load_model(default_training.weights)


@pytest.fixture(scope="session")
def small_model_weights(train_weights):
    """A CNN that really reads digits (about 90% on MNIST), trained in seconds, saved to a file."""
    return train_weights(3000)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, small_model_weights):
    """A folder with the small CNN (cnn.pt) and an untrained number reader (reader.pt) exported
    by export_onnx.py (cnn.onnx, reader.onnx), and what the export printed."""
    from onnx_support import exported_folder
    return exported_folder(tmp_path_factory.mktemp("exported"), small_model_weights)


@pytest.fixture(scope="session")
def small_model(small_model_weights):
    from predict import load_model
    return load_model(small_model_weights)


class NearlyFullDisk(io.FileIO):
    """A file on a disk with `room` bytes left: the write that reaches the end fails with ENOSPC
    after writing what fits, as on a real full disk."""
    room = 1000

    def write(self, data):
        n = min(len(data), self.room)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return super().write(bytes(data[:n]))


@pytest.fixture
def disk_full_at(monkeypatch):
    """disk_full_at(name, nth): the nth time a file called name is written (through its temporary
    name), the disk is nearly full. Every writer of the run (torch.save, json, matplotlib) opens
    its files with builtins.open."""
    real_open = builtins.open

    def install(name, nth=1):
        seen = []

        def fake_open(file, mode="r", *args, **kwargs):
            base = os.path.basename(file) if isinstance(file, (str, os.PathLike)) else ""
            if "w" in mode and base.startswith(name + ".") and base.endswith(".tmp"):
                seen.append(base)
                if len(seen) == nth:
                    buffered = io.BufferedWriter(NearlyFullDisk(file, "w"))
                    return buffered if "b" in mode else io.TextIOWrapper(buffered, encoding=kwargs.get("encoding"))
            return real_open(file, mode, *args, **kwargs)
        monkeypatch.setattr(builtins, "open", fake_open)
        return seen
    yield install
    restore_signal_handlers()
