"""Tests of export_onnx.py and reading/runtime.py: the export reads as PyTorch does and carries its
calibration, broken or foreign .onnx files are refused with one sentence, a failed check leaves no
file, and docs/onnx.md's example runs as written. The CNN is the small one conftest.py trains in
seconds; the number reader is untrained (the round trip must match, not read well)."""
import os
import re
import shutil
import subprocess
import sys
import textwrap
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx_support import export, fewer_checked, weights_in
from PIL import Image

import export_onnx
from reading.ctc import ctc_log_likelihood, pad_rows
from reading.digit_input import MNIST_MEAN, MNIST_STD
from reading.errors import BadWeightsError, WeightsNotFoundError
from reading.models import load_model
from reading.runtime import (DIGIT_MODEL, MODEL_KEY, OnnxDigits, OnnxReader, TorchDigits, TorchReader,
                             open_digit_model, open_number_reader)
from reading.verdict import NOT_A_DIGIT_BELOW

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def weights_folder(tmp_path, small_model_weights):
    return weights_in(tmp_path, small_model_weights)


def normalised(images):
    return ((images[:, None].astype(np.float32) / 255 - MNIST_MEAN) / MNIST_STD).astype(np.float32)


def test_the_export_reads_as_pytorch_does(exported, mnist_test):
    weights_folder, out = exported
    assert sorted(p.name for p in weights_folder.iterdir()) == ["cnn.onnx", "cnn.pt", "reader.onnx", "reader.pt"]
    images, labels = mnist_test
    batch = normalised(images[-300:])  # digits the export's own check did not see
    torch_cnn, onnx_cnn = TorchDigits(load_model(weights_folder / "cnn.pt")), OnnxDigits(weights_folder / "cnn.onnx")
    expected, got = torch_cnn.probabilities(batch), onnx_cnn.probabilities(batch)
    assert np.array_equal(expected.argmax(1), got.argmax(1)) and np.abs(expected - got).max() < 1e-4
    assert (got.argmax(1) == labels[-300:]).mean() > 0.8  # the small model reads, so the export does
    assert onnx_cnn.probabilities(batch[:1]).shape == (1, 10)  # the batch size is free
    rows = np.random.default_rng(0).random((3, 1, 28, 98), dtype=np.float32)  # and the reader's width
    reader = open_number_reader(weights_folder / "reader.pt")
    assert np.abs(reader.log_probabilities(rows) - OnnxReader(weights_folder / "reader.onnx")
                  .log_probabilities(rows)).max() < 1e-4
    assert "opset 17" in out and "input image (batch x 1 x 28 x 28, float32)" in out
    assert "output probabilities (batch x 10" in out and "input line (batch x 1 x 28 x width" in out
    assert re.search(r"cnn\.onnx: opset 17, 1\.\d\d MB \(from .*cnn\.pt, 1\.\d\d MB\)", out)


def test_the_export_carries_its_calibration_and_threshold(tmp_path, small_model):
    """The graph's probabilities are softmax(logits / temperature) and the metadata records the
    temperature and the "not a digit" threshold."""
    path = str(tmp_path / "hot.onnx")
    export_onnx.export(export_onnx.Calibrated(small_model, 2.5), torch.zeros(2, 1, 28, 28), path,
                       {MODEL_KEY: DIGIT_MODEL, "reading.temperature": "2.5",
                        "reading.not_a_digit_below": repr(NOT_A_DIGIT_BELOW)},
                       inputs={"image": {0: "batch"}}, outputs={"logits": {0: "batch"}, "probabilities": {0: "batch"}})
    model = OnnxDigits(path)
    assert model.temperature == 2.5 and model.not_a_digit_below == NOT_A_DIGIT_BELOW
    batch = np.random.default_rng(1).normal(size=(4, 1, 28, 28)).astype(np.float32)
    logits = model.logits(batch)
    calibrated = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(1, keepdims=True)
    assert np.abs(model.probabilities(batch) - calibrated).max() < 1e-6
    assert np.abs(logits - small_model(torch.from_numpy(batch)).detach().numpy()).max() < 1e-4


def test_the_default_export_records_the_models_temperature(exported):
    weights_folder, _ = exported
    model = load_model(weights_folder / "cnn.pt")
    meta = {p.key: p.value for p in onnx.load(str(weights_folder / "cnn.onnx")).metadata_props}
    assert float(meta["reading.temperature"]) == getattr(model, "temperature", 1.0)
    assert float(meta["reading.not_a_digit_below"]) == NOT_A_DIGIT_BELOW
    assert (float(meta["reading.mnist_mean"]), float(meta["reading.mnist_std"])) == (MNIST_MEAN, MNIST_STD)


def test_a_failed_check_leaves_no_file(weights_folder, monkeypatch):
    fewer_checked(monkeypatch)
    real = OnnxDigits.probabilities
    monkeypatch.setattr(OnnxDigits, "probabilities", lambda self, batch: real(self, batch) + 1e-3)
    code, out, err = export(weights_folder)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "does not read as PyTorch does" in err
    assert "nothing was written" in err and "Traceback" not in err
    assert sorted(p.name for p in weights_folder.iterdir()) == ["cnn.pt", "reader.pt"]


def test_by_default_both_models_are_exported_beside_their_weights(tmp_path, small_model_weights, monkeypatch):
    fewer_checked(monkeypatch)
    weights_in(tmp_path, small_model_weights)
    monkeypatch.chdir(tmp_path)
    os.rename("cnn.pt", "mnist_cnn.pt")
    assert export_onnx.main([]) == 0 and not os.path.exists("number_reader.onnx")  # no reader: none exported
    os.rename("reader.pt", "number_reader.pt")
    assert export_onnx.main([]) == 0
    assert sorted(os.listdir()) == ["mnist_cnn.onnx", "mnist_cnn.pt", "number_reader.onnx", "number_reader.pt"]


def test_the_script_says_what_is_missing_in_one_sentence(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "export_onnx.py")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "No weights file at mnist_cnn.pt: train the model first with `python mnist_cnn_model.py`.\n"


@pytest.mark.parametrize("args, says", [
    (["--weights", "absent.pt"], "No weights file at absent.pt"),
    (["--weights", "notes.pt"], "notes.pt is not a PyTorch weights file"),
    (["--weights", "cnn.pt", "--reader", "cnn.pt"], "cnn.pt holds weights for a different model architecture"),
])
def test_bad_inputs_get_one_sentence(weights_folder, capsys, monkeypatch, args, says):
    monkeypatch.chdir(weights_folder)
    (weights_folder / "notes.pt").write_text("not weights")
    if args[-1] == "cnn.pt":  # the CNN is exported before the reader is refused: keep that quick
        monkeypatch.setattr(export_onnx, "export_digit_model", lambda source: None)
    assert export_onnx.main(args) == 1
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not list(weights_folder.glob("*.onnx*"))


def test_broken_onnx_files_are_refused(tmp_path, exported):
    weights_folder, _ = exported
    good = (weights_folder / "cnn.onnx").read_bytes()
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "cut.onnx").write_bytes(good[:len(good) // 2])
    for name in ("noise.onnx", "cut.onnx"):
        with pytest.raises(BadWeightsError, match=f"{name} is not an ONNX model that ONNX Runtime can load"):
            open_digit_model(tmp_path / name)
    with pytest.raises(WeightsNotFoundError, match="No ONNX model at .*absent.onnx: export one first"):
        open_digit_model(tmp_path / "absent.onnx")
    with pytest.raises(BadWeightsError, match="is not a regular file"):
        OnnxDigits(tmp_path)


def foreign_model(path, input_shape, metadata):
    """An ONNX model with the CNN's input and output names but not its graph: one linear layer to
    logits and a Softmax to probabilities, for the given input shape."""
    weights = helper.make_tensor("w", TensorProto.FLOAT, [int(np.prod(input_shape[1:])), 10],
                                 np.ones(int(np.prod(input_shape[1:])) * 10, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"])],
        "foreign", [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return path


def test_onnx_models_that_are_not_ours_are_refused(tmp_path, exported):
    weights_folder, _ = exported
    ours = {MODEL_KEY: DIGIT_MODEL, "reading.temperature": "1.0", "reading.not_a_digit_below": "0.5"}
    wrong_input = foreign_model(tmp_path / "wide.onnx", ["N", 1, 32, 32], ours)
    with pytest.raises(BadWeightsError, match=r"wide\.onnx is not the digit CNN .* its inputs are image"):
        OnnxDigits(wrong_input)
    unmarked = foreign_model(tmp_path / "plain.onnx", ["N", 1, 28, 28], {})
    with pytest.raises(BadWeightsError, match=r"plain\.onnx is an ONNX model, but not the digit CNN"):
        OnnxDigits(unmarked)
    no_temperature = foreign_model(tmp_path / "cold.onnx", ["N", 1, 28, 28], {MODEL_KEY: DIGIT_MODEL})
    with pytest.raises(BadWeightsError, match=r"cold\.onnx has no number for reading\.temperature"):
        OnnxDigits(no_temperature)
    OnnxDigits(foreign_model(tmp_path / "alike.onnx", ["N", 1, 28, 28], ours))  # what the checks can see
    with pytest.raises(BadWeightsError, match="not the number reader"):
        OnnxReader(weights_folder / "cnn.onnx")
    with pytest.raises(BadWeightsError, match="not the digit CNN"):
        OnnxDigits(weights_folder / "reader.onnx")


def test_the_onnx_path_never_imports_torch(exported):
    weights_folder, _ = exported
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from reading.runtime import open_digit_model, open_number_reader
        cnn = open_digit_model({str(weights_folder / 'cnn.onnx')!r})
        reader = open_number_reader({str(weights_folder / 'reader.onnx')!r})
        print(cnn.probabilities(np.zeros((2, 1, 28, 28), np.float32)).shape,
              reader.log_probabilities(np.zeros((1, 1, 28, 56), np.float32)).shape)
        print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["(2, 10) (1, 28, 11)", "[]"]


def doc_example():
    """The Python example in docs/onnx.md, as written there."""
    with open(os.path.join(REPO, "docs", "onnx.md")) as f:
        return re.search(r"```python\n(.*?)```", f.read(), re.DOTALL).group(1)


def test_the_docs_example_runs(exported, tmp_path, monkeypatch, mnist_test):
    weights_folder, _ = exported
    images, _ = mnist_test
    monkeypatch.chdir(tmp_path)
    shutil.copy(weights_folder / "cnn.onnx", "mnist_cnn.onnx")
    probabilities = TorchDigits(load_model(weights_folder / "cnn.pt")).probabilities(normalised(images[:20]))
    for i in range(20):
        Image.fromarray(images[i]).save("digit28.png")
        with redirect_stdout(StringIO()) as out:
            exec(doc_example(), {})  # noqa: S102 (the example is this repository's own documentation)
        digit = int(probabilities[i].argmax())
        expected = ("not a digit" if probabilities[i, digit] < NOT_A_DIGIT_BELOW
                    else f"{digit} {probabilities[i, digit]:.0%}")
        assert out.getvalue() == expected + "\n"


def test_open_picks_pytorch_for_weights_files(exported):
    weights_folder, _ = exported
    assert isinstance(open_digit_model(weights_folder / "cnn.pt"), TorchDigits)
    assert isinstance(open_number_reader(weights_folder / "reader.pt"), TorchReader)
    with pytest.raises(WeightsNotFoundError, match="No weights file at"):
        open_digit_model(weights_folder / "absent.pt")


def test_the_numpy_ctc_likelihood_is_torchs():
    """ctc_log_likelihood gives what torch's CTC loss (the number reader's training loss) does:
    repeated digits that need a blank between them, no digits, and more than fit."""
    log_probs = torch.randn(12, 11, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    for digits in ([3], [7, 7], [1, 2, 3, 4], [5, 5, 5, 5, 5, 5]):
        expected = -float(torch.nn.functional.ctc_loss(log_probs[:, None], torch.tensor([digits]),
                                                       torch.tensor([12]), torch.tensor([len(digits)]),
                                                       blank=10, reduction="sum"))
        assert ctc_log_likelihood(log_probs.numpy(), digits) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert ctc_log_likelihood(log_probs.numpy(), []) == pytest.approx(float(log_probs[:, 10].sum()), abs=1e-5)
    assert ctc_log_likelihood(log_probs.numpy(), [0] * 7) == -np.inf  # 7 zeros need 13 columns


def test_rows_are_padded_as_the_reader_expects():
    rows = [np.random.default_rng(i).random((28, w), dtype=np.float32) for i, w in enumerate((40, 57, 12))]
    batch, columns = pad_rows(rows)
    assert batch.shape == (3, 1, 28, 58) and batch.dtype == np.float32  # the widest, made even
    assert columns == [20, 28, 6]
    for row, padded in zip(rows, batch[:, 0]):
        assert np.array_equal(padded[:, :row.shape[1]], row) and not padded[:, row.shape[1]:].any()
