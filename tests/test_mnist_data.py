"""Tests of the MNIST files (training/mnist_data.py): the embedded copy, its checksums, the
download, and reading them."""
import errno
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import threading

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST
from train_support import RAW_GZ

import mnist_cnn_model as m
import reading.digit_input
import reading.models
import training.mnist_data


def test_embedded_data_is_mnist(mnist_train_set, mnist_test_set):
    (train_x, train_y), (test_x, test_y) = mnist_train_set, mnist_test_set
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    # Facts published with MNIST, independent of our code: first labels and class counts.
    assert train_y[:5].tolist() == [5, 0, 4, 1, 9] and test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Normalised with the training set's own statistics: mean 0, std 1.
    assert abs(train_x.mean().item()) < 1e-3 and abs(train_x.std().item() - 1) < 1e-3


def test_our_idx_reader_gives_torchvision_s_mnist_exactly(repo_root):
    for train in (True, False):
        ours = training.mnist_data.load_mnist(os.path.join(repo_root, "data"), train=train)
        theirs = MNIST(os.path.join(repo_root, "data"), train=train, download=False)
        assert torch.equal(ours[1], theirs.targets) and ours[1].dtype == theirs.targets.dtype
        assert torch.equal(ours[0], (theirs.data.unsqueeze(1).float() / 255 - reading.digit_input.MNIST_MEAN)
                           / reading.digit_input.MNIST_STD)
        images, labels = training.mnist_data.load_digits(os.path.join(repo_root, "data"), train=train)
        assert images.dtype == np.uint8 and np.array_equal(images, theirs.data.numpy())
        assert np.array_equal(labels, theirs.targets.numpy())


def copy_embedded(dest):
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in training.mnist_data.MNIST_FILES:
        shutil.copy(os.path.join(RAW_GZ, name + ".gz"), raw)
    return raw


def test_embedded_copy_is_unpacked_and_verified(tmp_path):
    raw = copy_embedded(tmp_path)
    training.mnist_data.prepare_mnist(str(tmp_path))
    for name, sha in training.mnist_data.MNIST_FILES.items():
        with gzip.open(raw / (name + ".gz"), "rb") as f:
            assert (raw / name).read_bytes() == f.read()
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == sha


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_corrupted_copy_is_refused_with_a_clear_message(tmp_path, damage):
    raw = copy_embedded(tmp_path)
    victim = raw / "t10k-images-idx3-ubyte.gz"
    data = bytearray(victim.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))
    with pytest.raises(training.mnist_data.DataError, match="t10k-images-idx3-ubyte.gz is corrupted"):
        training.mnist_data.prepare_mnist(str(tmp_path))
    assert not (raw / "t10k-images-idx3-ubyte").exists()
    assert not list(raw.glob("*.tmp"))


def test_a_full_disk_while_unpacking_is_not_called_corruption(tmp_path, disk_full_at):
    raw = copy_embedded(tmp_path)
    disk_full_at("t10k-images-idx3-ubyte")
    with pytest.raises(OSError) as error:
        training.mnist_data.prepare_mnist(str(tmp_path))
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(raw / "t10k-images-idx3-ubyte")
    assert not list(raw.glob("*.tmp")) and not (raw / "t10k-images-idx3-ubyte").exists()


def test_a_damaged_unpacked_file_is_replaced_from_the_embedded_copy(tmp_path):
    raw = copy_embedded(tmp_path)
    training.mnist_data.prepare_mnist(str(tmp_path))
    (raw / "train-labels-idx1-ubyte").write_bytes(b"garbage")
    training.mnist_data.prepare_mnist(str(tmp_path))
    expected = training.mnist_data.MNIST_FILES["train-labels-idx1-ubyte"]
    assert reading.models.sha256_of(raw / "train-labels-idx1-ubyte") == expected


@pytest.fixture
def local_mirror(monkeypatch):
    """An HTTP server on loopback serving the embedded .gz files as torchvision's only mirror."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=RAW_GZ)
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    md5 = {f: hashlib.md5(open(os.path.join(RAW_GZ, f), "rb").read()).hexdigest() for f, _ in MNIST.resources}
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    monkeypatch.setattr(MNIST, "resources", [(f, md5[f]) for f, _ in MNIST.resources])
    yield server
    server.shutdown()


def test_missing_data_is_downloaded_through_torchvision(tmp_path, local_mirror):
    training.mnist_data.prepare_mnist(str(tmp_path))
    for name, sha in training.mnist_data.MNIST_FILES.items():
        assert reading.models.sha256_of(tmp_path / "MNIST" / "raw" / name) == sha


def test_no_data_and_no_network_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # the discard port: nothing listens
    with pytest.raises(SystemExit) as exit_info:
        m.main(["--data-dir", str(tmp_path / "nodata"), "--run-dir", str(tmp_path / "run"),
                "--weights", str(tmp_path / "w.pt")])
    message = str(exit_info.value.code)
    assert message.startswith("Error: MNIST file") and "could not be downloaded" in message
    assert "\n" not in message and not (tmp_path / "w.pt").exists()
