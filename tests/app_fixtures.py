"""The fixtures of the tests of app.py. Each test file loads this module as a pytest plugin
(pytest_plugins = ["app_fixtures"]): a plugin is loaded once, so the model below is trained once
per session for all of them, where a fixture imported into each file would be trained for each.

The model must read drawn digits as a user draws them, which the 3000-image model of the
other tests does not (it reads a drawn 4 as a 6): a CNN is trained for one epoch on 20000
MNIST images with --augment's random distortions and pieces of numbers.
"""
import pytest
from app_support import start_server, stop_server


@pytest.fixture(scope="session")
def drawing_weights(train_weights):
    """CNN weights that read digits drawn on the pad: one augmented epoch on 20000 MNIST
    training images."""
    return train_weights(20000, augment=True)


@pytest.fixture(scope="module")
def server(drawing_weights):
    """The address of app.py serving with its default worker processes."""
    process, url = start_server(drawing_weights)
    yield url
    stop_server(process)
