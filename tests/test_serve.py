"""The reading-only install: in a venv built from requirements-serve.txt alone, with no PyTorch,
predict.py and app.py read pictures with the .onnx exports as PyTorch read them.

.ci/run runs these in that venv with SERVE_MODELS naming the folder that tests/serve_models.py
wrote in the main venv (the models, .pt and .onnx, the pictures, and expected.json: what PyTorch
read in them). Where torch is installed they are skipped; tests/test_onnx_reading.py covers the
same there, with torch blocked."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed: these tests are for the venv without it", allow_module_level=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def folder():
    """The folder tests/serve_models.py wrote; a missing one fails rather than skips, so that a CI
    run that forgot it cannot pass by testing nothing."""
    found = os.environ.get("SERVE_MODELS")
    if not found or not os.path.isfile(os.path.join(found, "expected.json")):
        pytest.fail("SERVE_MODELS must name the folder `python tests/serve_models.py FOLDER` wrote")
    return found


@pytest.fixture(scope="module")
def expected(folder):
    with open(os.path.join(folder, "expected.json")) as f:
        return json.load(f)


def assert_close(a, b):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= TOLERANCE


def test_predict_reads_as_pytorch_did(folder, expected):
    import predict
    model = predict.load_model(os.path.join(folder, "cnn.onnx"))
    reader = predict.load_reader(os.path.join(folder, "reader.onnx"))
    for name, was in expected.items():
        path = os.path.join(folder, name)
        digit = predict.read_digit(model, path)
        assert digit.digit == was["digit"], name
        assert_close(digit.probabilities, was["probabilities"])
        number = predict.predict_number_reading(model, path, reader)
        assert [(d.digit, list(d.box)) for d in number.digits] == [(d["digit"], d["box"]) for d in was["number"]]
        assert [list(m.box) for m in number.left_out] == was["left_out"], name
        for d, e in zip(number.digits, was["number"]):
            assert_close(d.probabilities, e["probabilities"])
    assert "torch" not in sys.modules


def run_predict(folder, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "predict.py"), *args], capture_output=True, text=True,
                          cwd=folder, timeout=300, check=False)


def test_the_command_line_reads_a_photo_a_number_and_a_drawing(folder, expected):
    got = run_predict(folder, "--weights", "cnn.onnx", "digit.jpg", "drawing.png", "seven.png")
    assert "Traceback" not in got.stderr
    lines = got.stdout.splitlines()
    for line, name in zip(lines, ("digit.jpg", "drawing.png", "seven.png")):
        was = expected[name]
        assert line.startswith(f"{name}: {was['digit']} (" if was["digit"] is not None else f"{name}: not a digit")
    assert len(lines) == 3
    got = run_predict(folder, "--weights", "cnn.onnx", "--number", "--reader", "reader.onnx", "number.jpg",
                      "touching.png")
    assert got.returncode == 0, got.stderr
    numbers = [line.split(": ")[1].split(" ")[0] for line in got.stdout.splitlines()]
    assert numbers == ["".join(str(d["digit"]) for d in expected[name]["number"])
                       for name in ("number.jpg", "touching.png")]


def test_show_writes_its_figure_or_says_why_not(folder):
    got = run_predict(folder, "--weights", "cnn.onnx", "--show", "digit.jpg")
    if importlib.util.find_spec("matplotlib") is None:
        assert got.returncode == 1 and "pip install matplotlib" in got.stderr and "Traceback" not in got.stderr
    else:
        assert got.returncode == 0 and os.path.isfile(os.path.join(folder, "predictions", "digit.png")), got.stderr


def test_pytorch_weights_are_one_sentence(folder):
    got = run_predict(folder, "--weights", "cnn.pt", "digit.jpg")
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert "PyTorch is not installed here" in got.stderr


def test_the_app_serves_the_export(folder, expected):
    """app.py as a process, with its worker processes, each opening the ONNX models itself."""
    import httpx
    from app_support import start_server, stop_server
    process, url = start_server(os.path.join(folder, "cnn.onnx"), "--reader", "reader.onnx", "--workers", "2")
    try:
        with open(os.path.join(folder, "touching.png"), "rb") as f:
            answer = httpx.post(url + "api/predict", content=f.read(), timeout=60).json()
    finally:
        code, err = stop_server(process)
    assert code == 0 and "Traceback" not in err, err
    assert answer["number"] == "".join(str(d["digit"]) for d in expected["touching.png"]["number"])
    assert_close(answer["probabilities"], expected["touching.png"]["probabilities"])


@pytest.mark.parametrize("script", ["export_onnx.py", "mnist_cnn_model.py", "number_reader.py"])
def test_the_scripts_that_need_pytorch_say_so_in_one_sentence(folder, script):
    got = subprocess.run([sys.executable, os.path.join(REPO, script)], capture_output=True, text=True,
                         cwd=folder, timeout=120, check=False)
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert got.stderr.strip() == got.stderr.strip().splitlines()[0] and "needs PyTorch" in got.stderr
