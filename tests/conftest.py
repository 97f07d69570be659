import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the full 10-epoch training (minutes); skip with -m 'not slow'")


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def mnist_test_set():
    """The MNIST test split as normalised tensors (images, labels), from the embedded copy."""
    from mnist_cnn_model import load_mnist
    return load_mnist(os.path.join(ROOT, "data"), train=False)


@pytest.fixture(scope="session")
def mnist_train_set():
    from mnist_cnn_model import load_mnist
    return load_mnist(os.path.join(ROOT, "data"), train=True)
