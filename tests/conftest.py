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


@pytest.fixture(scope="session")
def train_weights(tmp_path_factory, mnist_train_set):
    """train_weights(count, augment=False): the path of weights trained for one epoch on the first
    count MNIST training images, seeded, so every run gets the same model."""
    import torch
    from mnist_cnn_model import CNN, train_epoch

    def train(count, augment=False):
        images, labels = mnist_train_set
        torch.manual_seed(0)
        model = CNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        train_epoch(model, optimizer, images[:count], labels[:count], 64,
                    torch.Generator().manual_seed(0), augment=augment)
        path = tmp_path_factory.mktemp("weights") / f"{count}{'-augment' if augment else ''}.pt"
        torch.save(model.state_dict(), path)
        return str(path)
    return train
