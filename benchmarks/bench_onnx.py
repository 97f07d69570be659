"""
What does reading with ONNX Runtime instead of PyTorch cost and save? Side by side in one run on
this machine:

    python benchmarks/bench_onnx.py                # latency, and a whole process reading one digit
    python benchmarks/bench_onnx.py --venv         # also build the reading-only venv (a few minutes)

- agreement: bench_predict.py's pictures of every kind, prepared once as predict.py prepares
  them, read by both runtimes: how many give the same digit, and the largest difference in a
  probability;
- forward latency per picture at batch 1 and batch 256, through reading/runtime.py's interface
  (TorchDigits and OnnxDigits: what reading pays, conversions included), on MNIST test digits;
- a whole process that imports what it needs, loads the CNN and reads one 28x28 picture: wall time
  and peak memory (the child's maximum resident set), the ONNX Runtime way (docs/onnx.md's
  example: onnxruntime, NumPy, Pillow) against the PyTorch way (reading.models);
- with --venv: the size (du) and install time of a fresh venv with requirements-serve.txt, built
  in a temporary folder with pip's cache off, as a new user's would be.

The weights are mnist_cnn.pt (--weights); they are exported to a temporary folder first, so the
figures never depend on an .onnx file lying about.
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
import textwrap
import time
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
from bench_app import cpu_model  # benchmarks/, the script's own folder, is on sys.path
from bench_predict import KINDS, make_image
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import export_onnx  # noqa: E402  (the repo root is only on the path once the line above ran)
from reading.digit_input import MNIST_MEAN, MNIST_STD, preprocess_image  # noqa: E402
from reading.errors import NoDigitError  # noqa: E402
from reading.models import load_model  # noqa: E402
from reading.runtime import OnnxDigits, TorchDigits  # noqa: E402
from training.mnist_data import load_digits  # noqa: E402

ONNX_PROCESS = """
import numpy as np, onnxruntime
from PIL import Image
session = onnxruntime.InferenceSession({onnx!r})
meta = session.get_modelmeta().custom_metadata_map
pixels = np.asarray(Image.open({png!r}).convert("L"), np.float32) / 255
image = (pixels - float(meta["reading.mnist_mean"])) / float(meta["reading.mnist_std"])
print(int(session.run(None, {{"image": image.reshape(1, 1, 28, 28)}})[1].argmax()))
"""
TORCH_PROCESS = """
import sys; sys.path.insert(0, {repo!r})
import numpy as np, torch
from PIL import Image
from reading.digit_input import MNIST_MEAN, MNIST_STD
from reading.models import load_model, predict_batch
model = load_model({weights!r})
pixels = np.asarray(Image.open({png!r}).convert("L"), np.float32) / 255
print(int(predict_batch(model, torch.from_numpy((pixels - MNIST_MEAN) / MNIST_STD)[None, None]).argmax()))
"""
# Runs one child and reports its wall time and peak memory: RUSAGE_CHILDREN's maximum is over
# every child this process waited for, so each measured child gets a parent of its own.
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
out = subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True, check=True).stdout
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, out.strip())
"""


def main():
    args = parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    folder = tempfile.mkdtemp(prefix="bench_onnx.")
    try:
        weights = shutil.copy(args.weights, os.path.join(folder, "mnist_cnn.pt"))
        with redirect_stdout(StringIO()):
            export_onnx.export_digit_model(weights)
        onnx_path = os.path.join(folder, "mnist_cnn.onnx")
        images, labels = load_digits(os.path.join(REPO, "data"), train=False)
        torch_model, onnx_model = TorchDigits(load_model(weights)), OnnxDigits(onnx_path)
        agreement(torch_model, onnx_model, images, labels, args.per_kind)
        latency(torch_model, onnx_model, images, args.repeats)
        png = os.path.join(folder, "digit.png")
        Image.fromarray(images[0]).save(png)
        whole_process(onnx_path, weights, png, labels[0], args.processes)
        if args.venv:
            python = venv_size(folder)
            seconds, megabytes = measure(python, ONNX_PROCESS.format(onnx=onnx_path, png=png), labels[0])
            print(f"Docs/onnx.md's example in it, with no torch installed: {seconds:.2f} s, {megabytes:.0f} MB.")
    finally:
        shutil.rmtree(folder)


def parse_args():
    parser = argparse.ArgumentParser(description="PyTorch against ONNX Runtime, side by side.")
    parser.add_argument("--weights", default=os.path.join(REPO, "mnist_cnn.pt"),
                        help="the CNN's weights (default: mnist_cnn.pt in the repository)")
    parser.add_argument("--per-kind", type=int, default=100,
                        help="bench_predict.py pictures per kind for the agreement (default: 100)")
    parser.add_argument("--repeats", type=int, default=200,
                        help="forward passes timed per batch size and runtime (default: 200)")
    parser.add_argument("--processes", type=int, default=5,
                        help="whole processes run per way of reading (default: 5)")
    parser.add_argument("--venv", action="store_true",
                        help="also build the reading-only venv from requirements-serve.txt (default: off)")
    return parser.parse_args()


def agreement(torch_model, onnx_model, images, labels, per_kind):
    """Per kind of picture: how many read the same digit in both runtimes, the largest difference
    in a probability, and the accuracy (the same pictures as bench_predict.py for the same seed)."""
    print("\n| kind | same digit | largest difference | accuracy (ONNX Runtime) |")
    print("|---|---|---|---|")
    picked = np.random.default_rng(0).choice(len(images), per_kind, replace=False)
    for kind in KINDS:
        inputs, truth = [], []
        for i in picked:
            data, _ = make_image(kind, images[i], np.random.default_rng([0, KINDS.index(kind), int(i)]))
            try:
                inputs.append(preprocess_image(Image.open(io.BytesIO(data))).numpy())
                truth.append(labels[i])
            except NoDigitError:
                continue  # predict.py would say so in both runtimes alike
        batch = np.stack(inputs)
        expected, got = torch_model.probabilities(batch), onnx_model.probabilities(batch)
        same = int((expected.argmax(1) == got.argmax(1)).sum())
        print(f"| {kind} | {same}/{len(batch)} | {np.abs(expected - got).max():.1g} "
              f"| {(got.argmax(1) == np.array(truth)).mean():.1%} |")


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
        print(f"| {size} | {torch_us:.0f} us | {onnx_us:.0f} us | {torch_us / onnx_us:.1f}x |")


def whole_process(onnx_path, weights, png, label, count):
    """Wall time and peak memory of a fresh process reading one 28x28 picture each way (medians)."""
    ways = {"ONNX Runtime (onnxruntime, NumPy, Pillow)": ONNX_PROCESS.format(onnx=onnx_path, png=png),
            "PyTorch (torch, reading.models)": TORCH_PROCESS.format(repo=REPO, weights=weights, png=png)}
    runs = {name: [] for name in ways}
    for _ in range(count):
        for name, code in ways.items():
            runs[name].append(measure(sys.executable, code, label))
    print(f"\nA whole process reading one 28x28 picture (the median of {count} each):\n")
    print("| way | wall time | peak memory |")
    print("|---|---|---|")
    for name, measured in runs.items():
        print(f"| {name} | {statistics.median(s for s, _ in measured):.2f} s "
              f"| {statistics.median(m for _, m in measured):.0f} MB |")


def measure(python, code, label):
    """Wall time (s) and peak memory (MB) of python running code, which must print label."""
    seconds, kilobytes, digit = subprocess.run([python, "-c", MEASURE, textwrap.dedent(code)], capture_output=True,
                                               text=True, check=True).stdout.split()
    assert int(digit) == label, f"read {digit}, not {label}"
    return float(seconds), int(kilobytes) / 1024


def venv_size(folder):
    """The size and install time of a fresh venv with requirements-serve.txt; its python."""
    venv = os.path.join(folder, "serve")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    start = time.perf_counter()
    subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir",
                    "-r", os.path.join(REPO, "requirements-serve.txt")], check=True, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    size = subprocess.run(["du", "-sm", venv], capture_output=True, text=True, check=True).stdout.split()[0]
    print(f"\nA fresh venv with requirements-serve.txt: {size} MB, installed in {seconds:.0f} s "
          f"(pip, no cache, from PyPI).")
    return os.path.join(venv, "bin", "python")


if __name__ == "__main__":
    main()
