"""Reading with the .onnx exports where PyTorch is installed: predict's functions, predict.py and
app.py read with cnn.onnx and reader.onnx what they read with cnn.pt and reader.pt (the same
digits, boxes and marks, probabilities within 1e-4), and with torch made unimportable (as where it
is not installed) they still do, while PyTorch weights get one sentence. tests/test_serve.py runs
in a venv that has no torch at all."""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from app_support import canvas_png, start_server, stop_server
from drawing import draw_seven, save, touching_number
from PIL import Image, ImageDraw

import app
import predict
from reading.errors import PredictError
from reading.ink import read_ink
from reading.runtime import OnnxDigits, OnnxReader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4
NO_MATPLOTLIB = ("error: --show draws its figures with matplotlib, which is not installed here: pip install "
                 "matplotlib, or leave out --show.")


@pytest.fixture(scope="module")
def models(exported):
    """{"pt": (CNN, reader), "onnx": (OnnxDigits, OnnxReader)}: the same two models, loaded both ways."""
    folder, _ = exported
    return {kind: (predict.load_model(folder / f"cnn.{kind}"), predict.load_reader(folder / f"reader.{kind}"))
            for kind in ("pt", "onnx")}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, mnist_test):
    """Pictures of every kind a user sends: the samples (a photo of a digit, of a number, a
    drawing), a pen-drawn 7, digits that touch, and a picture that is no digit."""
    folder = tmp_path_factory.mktemp("pictures")
    images, labels = mnist_test
    scribble = Image.new("L", (300, 200), 255)
    ImageDraw.Draw(scribble).line([(20, 100), (60, 20), (100, 180), (140, 20), (180, 180), (220, 30), (280, 150)],
                                  fill=0, width=6)
    touching = touching_number(images, [int(np.flatnonzero(labels == d)[0]) for d in (0, 3, 4)])
    return [os.path.join(REPO, "samples", name) for name in ("digit.jpg", "number.jpg", "drawing.png")] + [
        save(draw_seven(), folder / "seven.png"), save(touching, folder / "touching.png"),
        save(scribble, folder / "scribble.png")]


def assert_close(a, b):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= TOLERANCE


def test_models_load_as_their_kind(models):
    cnn, reader = models["onnx"]
    assert isinstance(cnn, OnnxDigits) and isinstance(reader, OnnxReader)
    assert type(models["pt"][0]).__name__ == "CNN"  # .pt weights load as the torch module, as always


def test_onnx_reads_every_picture_as_pytorch_does(models, pictures):
    (cnn, reader), (onnx_cnn, onnx_reader) = models["pt"], models["onnx"]
    for path in pictures:
        expected, got = predict.read_digit(cnn, path), predict.read_digit(onnx_cnn, path)
        assert (got.digit, got.reason is None) == (expected.digit, expected.reason is None), path
        assert_close(got.probabilities, expected.probabilities)
        for with_reader in (False, True):
            expected = predict.read_number(cnn, read_ink(path), reader if with_reader else None)
            got = predict.read_number(onnx_cnn, read_ink(path), onnx_reader if with_reader else None)
            assert [(d.digit, d.box) for d in got.digits] == [(d.digit, d.box) for d in expected.digits], path
            assert [m.box for m in got.left_out] == [m.box for m in expected.left_out], path
            for d, e in zip(got.digits, expected.digits):
                assert_close(d.probabilities, e.probabilities)
                assert np.array_equal(d.image, e.image)  # the same input, made without torch


def test_the_apps_answers_agree(models, pictures):
    (cnn, reader), (onnx_cnn, onnx_reader) = models["pt"], models["onnx"]
    for path in pictures:
        with open(path, "rb") as f:
            data = f.read()
        expected, got = app.read_picture(cnn, data, reader), app.read_picture(onnx_cnn, data, onnx_reader)
        assert (got["number"], got["digit"], got["left_out"]) == (expected["number"], expected["digit"],
                                                                  expected["left_out"])
        assert [d["seen"] for d in got["digits"]] == [d["seen"] for d in expected["digits"]]
        assert_close(got["probabilities"], expected["probabilities"])


def test_onnx_models_pickle_as_their_file(models, pictures):
    """app.py hands its models to its worker processes pickled; a session cannot be, the file can."""
    cnn, reader = models["onnx"]
    again = pickle.loads(pickle.dumps((cnn, reader)))
    assert again[0].path == cnn.path and again[1].path == reader.path
    batch = np.stack([predict.preprocess_image(pictures[0])])
    assert np.array_equal(again[0].probabilities(batch), cnn.probabilities(batch))


def test_onnx_runs_on_the_cpu_only(exported):
    folder, _ = exported
    with pytest.raises(PredictError, match="read on the CPU by ONNX Runtime"):
        predict.load_model(folder / "cnn.onnx", "cuda")


# ---------------------------------------------------------------------------------------------
# Without torch: a sitecustomize that makes it unimportable, in this process's children and in
# theirs (app.py's worker processes are spawned afresh, and run it too).

BLOCKER = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)

sys.meta_path.insert(0, Blocked())
"""


def without(tmp_path, *names):
    """An environment for a child process in which the named top-level modules cannot be imported."""
    folder = tmp_path / "blocker"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER.format(names=set(names)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), REPO])}


def run_predict(args, cwd, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "predict.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300, check=False)


def test_predict_py_reads_with_the_exports_without_torch(exported, pictures, tmp_path):
    folder, _ = exported
    env = without(tmp_path, "torch")
    singles = [pictures[0], pictures[2], pictures[3], pictures[5]]
    for args in ([*singles], [*singles, "--top-k", "3"], ["--number", pictures[1], pictures[4]],
                 ["--number", "--reader", "{folder}/reader.{kind}", pictures[1], pictures[4]]):
        expected = run_predict([a.format(folder=folder, kind="pt") for a in args] + ["--weights", folder / "cnn.pt"],
                               tmp_path)
        got = run_predict([a.format(folder=folder, kind="onnx") for a in args] + ["--weights", folder / "cnn.onnx"],
                          tmp_path, env)
        assert (got.returncode, got.stdout) == (expected.returncode, expected.stdout), got.stderr
        assert "Traceback" not in got.stderr
    # The number reader beside .onnx weights is number_reader.onnx, read when it is there.
    got = run_predict(["--weights", folder / "cnn.onnx", "--number", pictures[4]], tmp_path, env)
    assert "no number_reader.onnx" in got.stderr and "python export_onnx.py" in got.stderr
    (tmp_path / "number_reader.onnx").write_bytes((folder / "reader.onnx").read_bytes())
    got = run_predict(["--weights", folder / "cnn.onnx", "--number", pictures[4]], tmp_path, env)
    assert got.returncode == 0 and "note:" not in got.stderr


def test_show_draws_its_figures_without_torch(exported, pictures, tmp_path):
    folder, _ = exported
    got = run_predict(["--weights", folder / "cnn.onnx", "--show", pictures[0]], tmp_path, without(tmp_path, "torch"))
    assert got.returncode == 0, got.stderr
    assert Image.open(tmp_path / "predictions" / "digit.png").size[0] > 500
    got = run_predict(["--weights", folder / "cnn.onnx", "--number", "--show", pictures[1]], tmp_path,
                      without(tmp_path, "torch"))
    assert got.returncode == 0 and (tmp_path / "predictions" / "number.png").exists(), got.stderr


def test_without_torch_pytorch_weights_and_plots_get_one_sentence(exported, pictures, tmp_path):
    folder, _ = exported
    for weights in ([], ["--weights", folder / "cnn.pt"]):
        got = run_predict([*weights, pictures[0]], tmp_path, without(tmp_path, "torch"))
        assert got.returncode == 1 and "Traceback" not in got.stderr
        assert "PyTorch is not installed here" in got.stderr and "python export_onnx.py" in got.stderr
    got = run_predict(["--weights", folder / "cnn.onnx", "--show", pictures[0]], tmp_path,
                      without(tmp_path, "torch", "matplotlib"))
    assert got.returncode == 1 and got.stderr.strip().splitlines() == [NO_MATPLOTLIB]


def test_app_serves_the_exports_without_torch(exported, tmp_path, models):
    """app.py with its worker processes (which unpickle the ONNX models and open them again)."""
    import httpx
    folder, _ = exported
    process, url = start_server(str(folder / "cnn.onnx"), "--reader", folder / "reader.onnx", "--workers", "2",
                                env=without(tmp_path, "torch"))
    try:
        body = canvas_png("42")
        answer = httpx.post(url + "api/predict", content=body, timeout=60).json()
    finally:
        code, err = stop_server(process)
    assert code == 0 and "Traceback" not in err, err
    expected = app.read_picture(models["pt"][0], body, models["pt"][1])
    assert answer["number"] == expected["number"] and answer["digit"] == expected["digit"]
    assert_close(answer["probabilities"], expected["probabilities"])


def test_importing_and_reading_imports_no_torch(exported, pictures):
    """In-process too: reading every kind of picture with the exports leaves torch unimported."""
    folder, _ = exported
    code = textwrap.dedent("""
        import sys
        import app, predict
        model, reader = predict.load_model(sys.argv[1]), predict.load_reader(sys.argv[2])
        for path in sys.argv[3:]:
            predict.read_number(model, predict.read_ink(path), reader)
            app.read_picture(model, open(path, "rb").read(), reader)
        print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
    """)
    result = subprocess.run([sys.executable, "-c", code, str(folder / "cnn.onnx"), str(folder / "reader.onnx"),
                             *pictures], capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
