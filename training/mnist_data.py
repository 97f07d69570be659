"""The MNIST files: checksums, the embedded copy, download, IDX reading.
"""
import gzip
import os
import shutil
import zlib

import torch

from reading.digit_input import MNIST_MEAN, MNIST_STD
from reading.models import sha256_of
from training.run_files import DISK_FULL, atomic_write

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


def load_digits(data_dir, train):
    """The MNIST split as stored: images (uint8 N x 28 x 28) and labels (uint8 N) as NumPy arrays."""
    prepare_mnist(data_dir)
    # Read directly rather than through torchvision's MNIST class: importing torchvision takes
    # longer than reading the files, and these are the same bytes (prepare_mnist checked them).
    prefix = os.path.join(data_dir, "MNIST", "raw", "train" if train else "t10k")
    return (read_idx(f"{prefix}-images-idx3-ubyte").numpy(),
            read_idx(f"{prefix}-labels-idx1-ubyte").numpy())


def load_mnist(data_dir, train, device="cpu"):
    """The MNIST split as the CNN learns from it: images (N, 1, 28, 28) float32, normalised, and
    labels (N,) int64."""
    images, labels = (torch.from_numpy(a) for a in load_digits(data_dir, train))
    # In place: the same arithmetic, without two more copies of the 188 MB training set.
    images = images.unsqueeze(1).float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD)
    return images.to(device), labels.long().to(device)
