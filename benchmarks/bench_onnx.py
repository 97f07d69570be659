"""
What does reading with ONNX Runtime instead of PyTorch cost and save? Side by side in one run on
this machine:

    python benchmarks/bench_onnx.py                # agreement, latency (a few minutes)
    python benchmarks/bench_onnx.py --venv         # also the reading-only venv and predict.py in it

- agreement on bench_predict.py's pictures of every kind (--per-kind, 500 as there), prepared
  once as predict.py prepares them (NumPy alone, the same for both) and read by both runtimes:
  how many give the same digit and the same "not a digit" verdict, and the largest difference in
  a probability;
- agreement on bench_numbers.py's numbers of every kind (--numbers-per-kind, 200 as there), each
  read whole by predict_number_reading with each runtime (the cuts depend on the model's
  answers), with the number reader too where one is given: how many read the same number with the
  same marks left out;
- forward latency per picture at batch 1 and batch 256, through reading/runtime.py's interface
  (TorchDigits and OnnxDigits: what reading pays, conversions included), on MNIST test digits;
- with --venv: the size (du) and install time of a fresh venv with requirements-serve.txt, built
  in a temporary folder with pip's cache off, as a new user's would be; then a whole process,
  wall time and peak memory (the child's maximum resident set): `python predict.py --weights
  mnist_cnn.onnx photo.jpg` in that venv against `python predict.py photo.jpg` with PyTorch,
  taking turns.

The weights are mnist_cnn.pt (--weights) and number_reader.pt when it exists (--reader); they are
exported to a temporary folder first, so the figures never depend on an .onnx file lying about.
"""
import argparse
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
from bench_app import cpu_model  # benchmarks/, the script's own folder, is on sys.path
from bench_numbers import KINDS as NUMBER_KINDS
from bench_numbers import make_number, make_words
from bench_predict import KINDS, make_image
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import export_onnx  # noqa: E402  (the repo root is only on the path once the line above ran)
import predict  # noqa: E402
from reading.digit_input import MNIST_MEAN, MNIST_STD, preprocess_image  # noqa: E402
from reading.errors import NoDigitError  # noqa: E402
from reading.runtime import as_digit_model  # noqa: E402
from reading.verdict import NOT_A_DIGIT_BELOW  # noqa: E402
from training.mnist_data import load_digits  # noqa: E402

# Runs one command and reports its wall time and peak memory: RUSAGE_CHILDREN's maximum is over
# every child this process waited for, so each measured command gets a parent of its own.
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
out = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True).stdout
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, out.strip())
"""


def main():
    args = parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    folder = tempfile.mkdtemp(prefix="bench_onnx.")
    try:
        models = exported(args, folder)
        images, labels = load_digits(os.path.join(REPO, "data"), train=False)
        agreement(*models["cnn"], images, labels, args.per_kind)
        number_agreement(models, images, labels, args.numbers_per_kind, folder)
        latency(*(as_digit_model(m) for m in models["cnn"]), images, args.repeats)
        if args.venv:
            python = venv_size(folder)
            photo = os.path.join(folder, "photo.jpg")
            with open(photo, "wb") as f:
                f.write(make_image("photo", images[0], np.random.default_rng(0))[0])
            whole_process(python, os.path.join(folder, "mnist_cnn"), photo, args.processes)
    finally:
        shutil.rmtree(folder)


def parse_args():
    parser = argparse.ArgumentParser(description="PyTorch against ONNX Runtime, side by side.")
    parser.add_argument("--weights", default=os.path.join(REPO, "mnist_cnn.pt"),
                        help="the CNN's weights (default: mnist_cnn.pt in the repository)")
    parser.add_argument("--reader", default=os.path.join(REPO, "number_reader.pt"),
                        help="the number reader's weights, read where the file exists (default: "
                             "number_reader.pt in the repository)")
    parser.add_argument("--per-kind", type=int, default=500,
                        help="bench_predict.py pictures per kind for the agreement (default: 500, as there)")
    parser.add_argument("--numbers-per-kind", type=int, default=200,
                        help="bench_numbers.py numbers per kind for the agreement (default: 200, as there)")
    parser.add_argument("--repeats", type=int, default=200,
                        help="forward passes timed per batch size and runtime (default: 200)")
    parser.add_argument("--processes", type=int, default=5,
                        help="whole processes run per way of reading, with --venv (default: 5)")
    parser.add_argument("--venv", action="store_true",
                        help="also build the reading-only venv from requirements-serve.txt and run "
                             "predict.py in it (default: off)")
    return parser.parse_args()


def exported(args, folder):
    """{"cnn": (PyTorch's, ONNX Runtime's), "reader": (...) or None}, exported into folder."""
    models = {}
    for name, weights, export, load in (("cnn", args.weights, export_onnx.export_digit_model, predict.load_model),
                                        ("reader", args.reader, export_onnx.export_number_reader,
                                         predict.load_reader)):
        if name == "reader" and not os.path.exists(weights):
            models[name] = None
            continue
        copy = shutil.copy(weights, os.path.join(folder, f"{'mnist_cnn' if name == 'cnn' else 'number_reader'}.pt"))
        with redirect_stdout(StringIO()):
            export(copy)
        models[name] = (load(copy), load(copy[:-3] + ".onnx"))
    return models


def agreement(torch_model, onnx_model, images, labels, per_kind):
    """Per kind of picture: how many read the same digit and the same verdict in both runtimes,
    the largest difference in a probability, and the accuracy (bench_predict.py's pictures: the
    same digits, picked and drawn from the same seed)."""
    print("\nbench_predict.py's pictures, each prepared once and read by both:\n")
    print("| kind | same digit and verdict | largest difference | accuracy (ONNX Runtime) |")
    print("|---|---|---|---|")
    picked = np.random.default_rng(0).permutation(len(images))[:per_kind]
    for kind in KINDS:
        inputs, truth = [], []
        for i in picked:
            data, _ = make_image(kind, images[i], np.random.default_rng([0, KINDS.index(kind), int(i)]))
            try:
                inputs.append(preprocess_image(Image.open(io.BytesIO(data))))
                truth.append(labels[i])
            except NoDigitError:
                continue  # predict.py would say so in both runtimes alike
        expected = predict.digit_probabilities(torch_model, inputs)
        got = predict.digit_probabilities(onnx_model, inputs)
        same = int(((expected.argmax(1) == got.argmax(1))
                    & ((expected.max(1) < NOT_A_DIGIT_BELOW) == (got.max(1) < NOT_A_DIGIT_BELOW))).sum())
        print(f"| {kind} | {same}/{len(inputs)} | {np.abs(expected - got).max():.1g} "
              f"| {(got.argmax(1) == np.array(truth)).mean():.1%} |", flush=True)


def number_agreement(models, images, labels, per_kind, folder):
    """Per kind of number and way of reading: how many read the same digits, boxes and marks
    left out, whole, in both runtimes (bench_numbers.py's numbers, from the same seed)."""
    ways = [("cutting alone", None, None)]
    if models["reader"] is not None:
        ways.append(("with the reader", *models["reader"]))
    (torch_model, onnx_model) = models["cnn"]
    print("\nbench_numbers.py's numbers, each read whole by both:\n")
    print("| kind | read | same number and marks | largest difference |")
    print("|---|---|---|---|")
    low_high = {"spaced": (3, 7), "tight": (4, 6), "canvas": (2, 5), "words": (1, 4)}
    for kind in NUMBER_KINDS:
        paths = []
        for n in range(per_kind):
            rng = np.random.default_rng([0, NUMBER_KINDS.index(kind), n])
            picked = rng.choice(len(images), size=int(rng.integers(low_high[kind][0], low_high[kind][1] + 1)),
                                replace=False)
            digits28 = [images[i] for i in picked]
            data, ext = make_words(digits28, rng) if kind == "words" else make_number(kind, digits28, rng)
            paths.append(os.path.join(folder, f"{kind}{n:04d}{ext}"))
            with open(paths[-1], "wb") as f:
                f.write(data)
        for way, torch_reader, onnx_reader in ways:
            same, largest = 0, 0.0
            for path in paths:
                expected, got = read(torch_model, path, torch_reader), read(onnx_model, path, onnx_reader)
                same += [r[:2] for r in expected] == [r[:2] for r in got]
                largest = max([largest] + [float(np.abs(np.subtract(a[2], b[2])).max())
                                           for a, b in zip(expected, got) if a[:2] == b[:2]])
            print(f"| {kind} | {way} | {same}/{len(paths)} | {largest:.1g} |", flush=True)


def read(model, path, reader):
    """(digit or None for a mark, box, probabilities) of each digit and mark predict finds."""
    try:
        number = predict.predict_number_reading(model, path, reader)
    except predict.PredictError as error:
        return [(type(error).__name__, None, [0.0])]
    return ([(d.digit, d.box, d.probabilities) for d in number.digits]
            + [(None, m.box, m.probabilities or [0.0]) for m in number.left_out])


def latency(torch_model, onnx_model, images, repeats):
    """Median time per picture of probabilities() at batch 1 and 256, the two runtimes taking turns
    so that whatever else the machine does falls on both alike."""
    normalised = ((images[:, None].astype(np.float32) / 255 - MNIST_MEAN) / MNIST_STD).astype(np.float32)
    print("\n| batch | PyTorch, per picture | ONNX Runtime, per picture | PyTorch / ONNX Runtime |")
    print("|---|---|---|---|")
    for size in (1, 256):
        times = {"torch": [], "onnx": []}
        for i in range(repeats if size == 1 else max(10, repeats // 10)):
            batch = normalised[(i * size) % 9000:(i * size) % 9000 + size]
            for name, model in (("torch", torch_model), ("onnx", onnx_model)):
                start = time.perf_counter()
                model.probabilities(batch)
                times[name].append((time.perf_counter() - start) / size)
        torch_us, onnx_us = (statistics.median(times[n]) * 1e6 for n in ("torch", "onnx"))
        print(f"| {size} | {torch_us:.0f} us | {onnx_us:.0f} us | {torch_us / onnx_us:.1f}x |", flush=True)


def whole_process(serve_python, weights, photo, count):
    """Wall time and peak memory of `python predict.py` reading one photo, with the .onnx in the
    reading-only venv and with the .pt in this one (medians, taking turns)."""
    script = os.path.join(REPO, "predict.py")
    ways = {"reading-only venv: predict.py --weights mnist_cnn.onnx photo.jpg":
            [serve_python, script, "--weights", weights + ".onnx", photo],
            "PyTorch's venv: predict.py photo.jpg (mnist_cnn.pt)": [sys.executable, script, "--weights",
                                                                     weights + ".pt", photo]}
    runs = {name: [] for name in ways}
    for _ in range(count):
        for name, command in ways.items():
            runs[name].append(measure(command))
    print(f"\nA whole process reading one photo (the median of {count} each):\n")
    print("| way | wall time | peak memory | printed |")
    print("|---|---|---|---|")
    for name, measured in runs.items():
        print(f"| {name} | {statistics.median(s for s, _, _ in measured):.2f} s "
              f"| {statistics.median(m for _, m, _ in measured):.0f} MB | {measured[0][2].split(': ')[1]} |")


def measure(command):
    """Wall time (s), peak memory (MB) and the output of running command."""
    seconds, kilobytes, out = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True,
                                             text=True, check=True).stdout.split(" ", 2)
    return float(seconds), int(kilobytes) / 1024, out.strip()


def venv_size(folder):
    """The size and install time of a fresh venv with requirements-serve.txt; its python."""
    venv = os.path.join(folder, "serve")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    start = time.perf_counter()
    subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir",
                    "-r", os.path.join(REPO, "requirements-serve.txt")], check=True, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    size = subprocess.run(["du", "-sm", venv], capture_output=True, text=True, check=True).stdout.split()[0]
    python = os.path.join(venv, "bin", "python")
    torch = subprocess.run([python, "-c", "import torch"], capture_output=True, check=False).returncode == 0
    print(f"\nA fresh venv with requirements-serve.txt: {size} MB, installed in {seconds:.0f} s "
          f"(pip, no cache, from PyPI); torch {'is' if torch else 'is not'} in it.")
    return python


if __name__ == "__main__":
    main()
