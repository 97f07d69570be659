"""Tests of predict.py: reading digits and numbers with a model, the errors for every bad input,
and the command line. No trained model is needed: where a test needs a model that really
reads digits, a small one is trained for one epoch on 3000 MNIST images (a few seconds)."""
import ast
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from drawing import as_mnist_photo, draw_seven, save, touching_number
from PIL import Image

import predict  # conftest.py puts the repository root on sys.path
from mnist_cnn_model import CNN
from reading.digit_input import MNIST_MEAN, MNIST_STD
from reading.ink import read_ink
from reading.models import metadata_path, sha256_of
from reading.number_model import NumberReader
from reading.segment import digit_groups

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------
# With a model

def test_predictions_are_an_int_and_ten_probabilities(small_model, tmp_path, mnist_test):
    images, labels = mnist_test
    assert labels[0] == 7
    path = save(Image.fromarray(images[0]), tmp_path / "seven.png")
    digit = predict.predict_user_input(small_model, path)
    assert type(digit) is int and digit == 7
    again, probs = predict.predict_with_probabilities(small_model, path)
    assert again == digit and len(probs) == 10
    assert sum(probs) == pytest.approx(1, abs=1e-5) and probs[digit] == max(probs)


def test_user_style_digits_are_read_as_well_as_mnist_ones(small_model, tmp_path, mnist_test):
    """MNIST test digits written dark on light paper, off-centre, 2-9x larger: the model must
    give them the answer it gives the original 28x28 (preprocessing undoes the differences),
    where the naive resize-to-28x28 gets most of them wrong."""
    images, labels = mnist_test
    agree = naive_right = right = 0
    n = 60
    for i in range(n):
        img = as_mnist_photo(images[i], scale=2 + i % 8, offset=(5 + 17 * (i % 7), 3 + 11 * (i % 5)))
        path = save(img, tmp_path / f"{i}.png")
        # The likeliest digit, declined or not: this is about what preprocessing makes of the picture.
        ours = predict.predict_with_probabilities(small_model, path)[0]
        original = int(small_model(((torch.from_numpy(images[i].copy()).float() / 255 - MNIST_MEAN)
                                    / MNIST_STD)[None, None]).argmax())
        agree += ours == original
        right += ours == labels[i]
        naive = np.asarray(img.resize((28, 28)), np.float32) / 255
        naive_right += int(small_model(torch.from_numpy((naive - MNIST_MEAN) / MNIST_STD)[None, None])
                           .argmax()) == labels[i]
    assert agree >= 0.9 * n
    assert right >= 0.8 * n
    assert naive_right <= 0.4 * n


def test_save_load_round_trip_gives_identical_predictions(small_model_weights, tmp_path, mnist_test):
    images, _ = mnist_test
    model = predict.load_model(small_model_weights)
    copy = tmp_path / "copy.pt"
    torch.save(model.state_dict(), copy)
    reloaded = predict.load_model(copy)
    assert not reloaded.training
    batch = [predict.preprocess_image(Image.fromarray(images[i])) for i in range(20)]
    assert np.array_equal(predict.digit_probabilities(model, batch), predict.digit_probabilities(reloaded, batch))


# ---------------------------------------------------------------------------------------------
# Bad input: one clear sentence, catchable, and exit 1 from the command line

def test_missing_weights_say_to_train_first(tmp_path):
    with pytest.raises(predict.WeightsNotFoundError, match=r"python mnist_cnn_model\.py") as info:
        predict.load_model(tmp_path / "none.pt")
    assert isinstance(info.value, FileNotFoundError)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(784, 10).state_dict(), path)
    with pytest.raises(predict.BadWeightsError, match="different model architecture") as info:
        predict.load_model(path)
    assert isinstance(info.value, ValueError)
    wrong_shape = CNN().state_dict()
    wrong_shape["fc2.weight"] = torch.zeros(5, 128)
    torch.save(wrong_shape, path)
    with pytest.raises(predict.BadWeightsError, match="different model architecture"):
        predict.load_model(path)


@pytest.mark.parametrize("content", [b"not weights at all", b"", "pickled-model", "a-list",
                                     "plain-pickle", "integers"])
def test_a_file_that_is_not_weights_is_refused_without_warnings(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "pickled-model":
        torch.save(CNN(), path)  # a whole pickled model: loading it would run pickle code
    elif content == "a-list":
        torch.save([torch.zeros(2)], path)
    elif content == "plain-pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    elif content == "integers":  # the right names and shapes, but not numbers a CNN computes with
        torch.save({k: v.long() for k, v in CNN().state_dict().items()}, path)
    else:
        path.write_bytes(content)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(predict.BadWeightsError, match="bad.pt"):
            predict.load_model(path)
    assert not shown, [str(w.message) for w in shown]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_as_weights_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(predict.BadWeightsError, match="not a regular file"):
        predict.load_model(tmp_path / "pipe.pt")


def test_missing_image_and_non_image_name_the_path(tmp_path):
    with pytest.raises(predict.ImageNotFoundError, match="nowhere.png") as info:
        predict.preprocess_image(tmp_path / "nowhere.png")
    assert isinstance(info.value, FileNotFoundError)
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(predict.NotAnImageError, match="notes.png"):
        predict.preprocess_image(text)
    truncated = tmp_path / "cut.png"
    buf = io.BytesIO()
    draw_seven().save(buf, "PNG")
    truncated.write_bytes(buf.getvalue()[:200])
    with pytest.raises(predict.NotAnImageError, match="cut.png"):
        predict.preprocess_image(truncated)


def run_cli(*args, cwd=None):
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return subprocess.run([sys.executable, os.path.join(REPO, "predict.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=120)


def test_cli_bad_inputs_exit_non_zero_with_one_sentence(small_model_weights, tmp_path):
    image = save(draw_seven(), tmp_path / "seven.png")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "junk.pt").write_text("hello")
    cases = [
        ([image, "--weights", tmp_path / "none.pt"], "python mnist_cnn_model.py"),
        ([image, "--weights", tmp_path / "junk.pt"], "junk.pt"),
        ([tmp_path / "missing.png", "--weights", small_model_weights], "missing.png"),
        ([tmp_path / "text.png", "--weights", small_model_weights], "text.png"),
        ([save(Image.new("L", (50, 50), 255), tmp_path / "blank.png"), "--weights",
          small_model_weights], "No digit found"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.returncode == 1, args
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_or_absent_device_is_one_sentence(small_model_weights, tmp_path, capsys):
    path = save(draw_seven(), tmp_path / "seven.png")
    assert predict.main([path, "--weights", small_model_weights, "--device", "toaster"]) == 1
    assert "not a device name" in capsys.readouterr().err
    assert predict.main([path, "--weights", small_model_weights, "--device", "meta"]) == 1
    assert "'meta' is not a device this can read pictures on" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert predict.main([path, "--weights", small_model_weights, "--device", "cuda"]) == 1
        assert "no CUDA GPU" in capsys.readouterr().err


def test_folder_is_predicted_reporting_bad_files_and_carrying_on(small_model_weights, tmp_path,
                                                                mnist_test, capsys):
    images, labels = mnist_test
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(5):
        save(Image.fromarray(255 - images[i]), folder / f"{i}.png")
    save(Image.new("L", (40, 40), 255), folder / "3_blank.png")
    (folder / "notes.txt").write_text("not an image, and not named like one: skipped")
    (folder / "broken.jpg").write_text("named like an image but is not one")
    code = predict.main([str(folder), "--weights", small_model_weights])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(folder / f"{i}.png") for i in range(5)]
    assert all(line.split(": ")[1].split(" ")[0].isdigit() for line in lines)
    assert "3_blank.png" in err and "broken.jpg" in err and "notes.txt" not in err
    assert code == 1


def test_folders_are_predicted_in_batches(small_model_weights, tmp_path, monkeypatch, capsys):
    for i in range(7):
        save(draw_seven(box=(40 + 10 * i, 60, 200, 240)), tmp_path / f"{i}.png")
    calls = []
    real = predict.digit_probabilities
    monkeypatch.setattr(predict, "digit_probabilities", lambda m, t: calls.append(len(t)) or real(m, t))
    monkeypatch.setattr(predict, "BATCH_SIZE", 3)
    assert predict.main([str(tmp_path), "--weights", small_model_weights]) == 0
    assert calls == [3, 3, 1]
    assert len(capsys.readouterr().out.strip().splitlines()) == 7


def test_top_k_lists_the_k_likeliest_digits(small_model_weights, tmp_path, capsys):
    path = save(draw_seven(), tmp_path / "seven.png")
    assert predict.main([path, "--weights", small_model_weights, "--top-k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    ranked = line.split(": ", 1)[1].split(", ")
    assert len(ranked) == 3
    digits = [int(r.split(" ")[0]) for r in ranked]
    percents = [float(r.split("(")[1].rstrip("%)")) for r in ranked]
    assert len(set(digits)) == 3 and percents == sorted(percents, reverse=True)
    assert sum(percents) <= 100.1
    # The first is the one answer printed without --top-k, and the probabilities are the model's.
    assert predict.main([path, "--weights", small_model_weights]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: {ranked[0]}"
    digit, probs = predict.predict_with_probabilities(predict.load_model(small_model_weights), path)
    likeliest = sorted(range(10), key=lambda d: -probs[d])[:3]
    assert digits == likeliest and digits[0] == digit
    assert percents == [round(100 * probs[d], 1) for d in likeliest]
    with pytest.raises(SystemExit):
        predict.main([path, "--top-k", "0"])


def test_image_path_at_the_top_of_the_file_is_the_default(small_model_weights, tmp_path,
                                                          monkeypatch, capsys):
    path = save(draw_seven(), tmp_path / "mine.png")
    monkeypatch.setattr(predict, "image_path", path)
    assert predict.main(["--weights", small_model_weights]) == 0
    assert capsys.readouterr().out.startswith(path + ": ")


def test_show_writes_the_figure_headless(small_model_weights, tmp_path):
    path = save(draw_seven(), tmp_path / "seven.png")
    result = run_cli(path, "--weights", small_model_weights, "--show", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figure = tmp_path / "predictions" / "seven.png"
    assert f"figure written to {os.path.join('predictions', 'seven.png')}" in result.stdout
    with Image.open(figure) as img:
        assert img.width > 600 and img.height > 200
        # Not a blank canvas: it holds the input, the 28x28 and the bar chart.
        assert len(np.unique(np.asarray(img.convert("L")))) > 20


# ---------------------------------------------------------------------------------------------
# Numbers

def mnist_number(images, picks, height=84, gap=40, slant=0.0):
    """MNIST test digits written dark on light paper side by side, as a number: the picture and
    where each digit's ink starts."""
    tiles = [255 - np.asarray(Image.fromarray(images[i]).resize((height, height), Image.Resampling.BICUBIC))
             for i in picks]
    width = len(tiles) * (height + gap) + gap
    paper = np.full((2 * height, width), 255, np.uint8)
    for k, tile in enumerate(tiles):
        x = gap + k * (height + gap)
        paper[height // 2:height // 2 + height, x:x + height] = tile
    img = Image.fromarray(paper)
    if slant:
        img = img.transform(img.size, Image.Transform.AFFINE, (1, slant, -slant * img.height / 2, 0, 1, 0),
                            Image.Resampling.BILINEAR, fillcolor=255)
    return img


@pytest.mark.parametrize("slant", [0.0, -0.25])
def test_a_number_reads_as_its_digits_do_one_by_one(small_model, tmp_path, mnist_test, slant):
    """Each digit of a number is found, in order, and read as the model reads that digit in a
    picture of its own; leading zeros are kept."""
    images, labels = mnist_test
    zeros = np.flatnonzero(labels == 0)[:2]
    others = [i for i in range(40) if labels[i] != 0][:3]
    picks = list(zeros) + others
    path = save(mnist_number(images, picks, slant=slant), tmp_path / "number.png")
    readings = predict.predict_digits(small_model, path)
    alone = [predict.predict_user_input(small_model, save(mnist_number(images, [i]), tmp_path / f"{i}.png"))
             for i in picks]
    assert [r.digit for r in readings] == alone
    number = predict.predict_number(small_model, path)
    assert isinstance(number, str) and number == "".join(map(str, alone))
    lefts = [r.box[0] for r in readings]
    assert lefts == sorted(lefts)
    for r in readings:
        assert len(r.probabilities) == 10 and r.image.shape == (1, 28, 28)
        assert r.probabilities[r.digit] == max(r.probabilities)


def test_cli_reads_a_number_and_says_when_a_picture_holds_several_digits(small_model_weights,
                                                                        tmp_path, mnist_test):
    images, _ = mnist_test
    path = save(mnist_number(images, [0, 1, 2]), tmp_path / "number.png")
    # (In tmp_path, where no number_reader.pt is: predict_number below reads without one.)
    result = run_cli(path, "--weights", small_model_weights, "--number", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model = predict.load_model(small_model_weights)
    number = predict.predict_number(model, path)
    assert result.stdout.startswith(f"{path}: {number} (")
    single = run_cli(path, "--weights", small_model_weights)
    assert single.returncode == 0 and "it holds 3 digits: use --number" in single.stdout
    alone = run_cli(save(draw_seven(), tmp_path / "seven.png"), "--weights", small_model_weights)
    assert "holds" not in alone.stdout
    # Digits whose strokes touch are one piece of ink: the count is the number reader's, not
    # the pieces' (which would say nothing here, one piece).
    touching = save(touching_number(images, [0, 3, 4]), tmp_path / "touching.png")
    assert len(digit_groups(read_ink(touching))) == 1
    count = len(predict.predict_digits(model, touching))
    said = run_cli(touching, "--weights", small_model_weights)
    assert count >= 2 and f"it holds {count} digits: use --number" in said.stdout
    shown = run_cli(path, "--weights", small_model_weights, "--number", "--show", cwd=tmp_path)
    assert shown.returncode == 0 and (tmp_path / "predictions" / "number.png").exists()
    refused = run_cli(path, "--weights", small_model_weights, "--number", "--top-k", "2")
    assert refused.returncode == 2 and "does not go with --number" in refused.stderr


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_that_are_not_numbers_are_refused(tmp_path, bad):
    state = CNN().state_dict()
    state["fc1.weight"][3, 5] = bad
    path = tmp_path / "diverged.pt"
    torch.save(state, path)
    with pytest.raises(predict.BadWeightsError, match="not numbers"):
        predict.load_model(path)


def test_weights_whose_bytes_differ_from_the_recorded_sha256_are_refused(small_model_weights, tmp_path):
    """Training records the weights' SHA-256 in the .json beside them: weights replaced or damaged
    since are refused, even though they load as weights."""
    path = tmp_path / "model.pt"
    shutil.copy(small_model_weights, path)
    with open(metadata_path(str(path)), "w") as f:
        json.dump({"weights_sha256": sha256_of(path)}, f)
    predict.load_model(path)  # as recorded: loads
    state = predict.load_model(path).state_dict()
    state["fc1.bias"][0] += 1.0
    torch.save(state, path)
    with pytest.raises(predict.BadWeightsError, match="does not match the SHA-256"):
        predict.load_model(path)
    os.remove(metadata_path(str(path)))
    predict.load_model(path)  # no record, nothing to check against


def docstring_example(doc):
    """The indented Python example under "From Python" in a module docstring, dedented."""
    lines = doc.split("From Python", 1)[1].split("\n")[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("    "))
    end = next((i for i in range(start, len(lines)) if lines[i].strip() and not lines[i].startswith("    ")),
               len(lines))
    return textwrap.dedent("\n".join(lines[start:end]))


def test_the_python_example_in_the_docstring_runs(small_model_weights, tmp_path, mnist_test, monkeypatch):
    """predict.py's example, exactly as written, in a folder laid out as after training both models
    (the number reader here untrained: the example must run, not read well)."""
    images, labels = mnist_test
    shutil.copy(small_model_weights, tmp_path / "mnist_cnn.pt")
    torch.manual_seed(0)
    torch.save(NumberReader().state_dict(), tmp_path / "number_reader.pt")
    (tmp_path / "samples").mkdir()
    save(Image.fromarray(255 - images[0]).convert("RGB"), tmp_path / "samples" / "digit.jpg", quality=95)
    save(mnist_number(images, [0, 1, 2]).convert("RGB"), tmp_path / "samples" / "number.jpg", quality=95)
    example = docstring_example(predict.__doc__)
    ast.parse(example)
    monkeypatch.chdir(tmp_path)
    names = {}
    with redirect_stdout(io.StringIO()) as out:
        exec(example, names)  # noqa: S102 (the example is this repository's own docstring)
    assert names["digit"] == labels[0] and len(names["probs"]) == 10
    assert isinstance(names["number"], str) and names["number"].isdigit()
    cut = predict.predict_digits(names["model"], "samples/number.jpg")
    assert out.getvalue().splitlines() == [f"{d.digit} {d.box}" for d in cut]


def test_reading_loads_nothing_of_training(small_model_weights, tmp_path):
    """Reading pictures needs no training code, progress bars, plotting or process pools: none of
    them is among the modules that importing predict and loading both models add to those torch
    itself loads (torch.hub imports tqdm where it is installed)."""
    torch.save(NumberReader().state_dict(), tmp_path / "reader.pt")
    code = textwrap.dedent("""
        import sys, torch
        before = set(sys.modules)
        import predict
        imported = set(sys.modules) - before
        predict.load_model(sys.argv[1]), predict.load_reader(sys.argv[2])
        print(repr([sorted(imported), sorted(set(sys.modules) - before)]))
    """)
    result = subprocess.run([sys.executable, "-c", code, small_model_weights, str(tmp_path / "reader.pt")],
                            check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    imported, loaded = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert "predict" in imported and "reading.segment" in imported

    def unwanted(modules):
        return [m for m in modules if m.split(".")[0] in ("training", "tqdm", "matplotlib", "torchvision")
                or m == "concurrent.futures.process"]
    assert unwanted(imported) == [] and "mnist_cnn_model" not in imported
    assert unwanted(loaded) == []
