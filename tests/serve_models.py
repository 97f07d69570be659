"""The models that the reading-only venv's tests read, made where PyTorch is installed.

    python tests/serve_models.py FOLDER

.ci/run runs this in its main venv, then tests/test_serve.py in a venv built from
requirements-serve.txt alone, with SERVE_MODELS=FOLDER. FOLDER gets the small CNN that conftest.py
trains for the other tests (3000 MNIST digits, seconds) and a seeded, untrained number reader, each
as PyTorch weights and exported by export_onnx.py, plus pictures to read and expected.json: what
PyTorch reads in them, which ONNX Runtime must read the same in the venv without PyTorch.
"""
import json
import os
import shutil
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The pictures the expectations are for: the samples, a 7 drawn with a pen, and a number of MNIST
# test digits that touch (which the number reader reads whole, and the cuts must cut).
SAMPLES = ("digit.jpg", "number.jpg", "drawing.png")
DRAWN = ("seven.png", "touching.png")


def train_cnn(images, labels, count, augment, path):
    """A CNN trained for one epoch on the first count of images, seeded (so every run gets the
    same weights), saved to path."""
    from mnist_cnn_model import CNN, train
    torch.manual_seed(0)
    model = CNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, optimizer, images[:count], labels[:count], 64, torch.Generator().manual_seed(0), augment=augment)
    torch.save(model.state_dict(), path)
    return str(path)


def untrained_reader(path):
    """A number reader with seeded random weights: enough to check that both runtimes read it alike."""
    from reading.number_model import NumberReader
    torch.manual_seed(0)
    torch.save(NumberReader().state_dict(), path)
    return str(path)


def pictures(folder):
    """The pictures to read, copied or drawn into folder: their file names."""
    import drawing

    from training.mnist_data import load_digits
    images, labels = load_digits(os.path.join(ROOT, "data"), train=False)
    for name in SAMPLES:
        shutil.copy(os.path.join(ROOT, "samples", name), os.path.join(folder, name))
    drawing.draw_seven().save(os.path.join(folder, "seven.png"))
    picks = [int((labels == d).nonzero()[0][0]) for d in (0, 3, 4)]
    drawing.touching_number(images, picks).save(os.path.join(folder, "touching.png"))
    return [*SAMPLES, *DRAWN]


def readings(model, reader, path):
    """What predict reads in the picture at path: as one digit, and as a number with the reader."""
    import predict
    digit = predict.read_digit(model, path)
    number = predict.predict_number_reading(model, path, reader)
    return {"digit": digit.digit, "probabilities": digit.probabilities,
            "number": [{"digit": d.digit, "probabilities": d.probabilities, "box": list(d.box)}
                       for d in number.digits],
            "left_out": [list(m.box) for m in number.left_out]}


def main(folder):
    import pytest
    from onnx_support import fewer_checked

    import export_onnx
    import predict
    from training.mnist_data import load_mnist
    os.makedirs(folder, exist_ok=True)
    images, labels = load_mnist(os.path.join(ROOT, "data"), train=True)
    cnn = train_cnn(images, labels, 3000, False, os.path.join(folder, "cnn.pt"))
    reader = untrained_reader(os.path.join(folder, "reader.pt"))
    # Checked on the first 1000 MNIST test digits, as the tests' exports are: the untrained reader's
    # columns are near ties, a few of which fall either way across the whole test set.
    with pytest.MonkeyPatch.context() as monkeypatch:
        fewer_checked(monkeypatch)
        export_onnx.export_digit_model(cnn)
        export_onnx.export_number_reader(reader)
    model, number_reader = predict.load_model(cnn), predict.load_reader(reader)
    expected = {name: readings(model, number_reader, os.path.join(folder, name)) for name in pictures(folder)}
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"Models, pictures and PyTorch's readings of them written to {folder}.")


if __name__ == "__main__":
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/serve_models.py FOLDER")
    main(sys.argv[1])
