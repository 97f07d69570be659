"""What the tests of the ONNX exports share: weights in a folder, export_onnx.py run on them, and
its check shortened to the first CHECKED_BATCHES batches of MNIST's test set."""
import shutil
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

import pytest

import export_onnx

# The tests check their exports on the first 1000 MNIST test digits; the script checks all 10000.
CHECKED_BATCHES = 2


def fewer_checked(monkeypatch):
    every = export_onnx.mnist_test_batches
    monkeypatch.setattr(export_onnx, "mnist_test_batches",
                        lambda: (b for i, b in zip(range(CHECKED_BATCHES), every())))


def weights_in(folder, small_model_weights):
    """folder with the small CNN's weights (cnn.pt) and an untrained number reader (reader.pt)."""
    import torch

    from reading.number_model import NumberReader
    shutil.copy(small_model_weights, folder / "cnn.pt")
    torch.manual_seed(0)
    torch.save(NumberReader().state_dict(), folder / "reader.pt")
    return folder


def export(folder):
    """export_onnx.py's exit status, standard output and standard error for the weights in folder."""
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = export_onnx.main(["--weights", str(folder / "cnn.pt"), "--reader", str(folder / "reader.pt")])
    return code, out.getvalue(), err.getvalue()


def exported_folder(folder, small_model_weights):
    """(folder with cnn.pt and reader.pt exported by export_onnx.py, what the export printed)."""
    weights_in(folder, small_model_weights)
    with pytest.MonkeyPatch.context() as monkeypatch:
        fewer_checked(monkeypatch)
        code, out, err = export(folder)
    assert code == 0, err
    return folder, out
