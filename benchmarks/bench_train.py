"""
Whole-process training time of this project against the usual per-sample DataLoader recipe, run
side by side on the same machine, with the same model, hyper-parameters and epochs.

    python benchmarks/bench_train.py                    # 10 epochs each
    python benchmarks/bench_train.py --epochs 2         # a quick look
    python benchmarks/bench_train.py --epochs 1 --limit 2000   # checks that it runs
    python benchmarks/bench_train.py --recipe default --seeds 1 2 3 4 5 --skip-baseline   # accuracy over seeds

The comparison trains this project with --textbook, the same work as the DataLoader recipe (no
distortions, no non-digits, no calibration); --recipe default times what `python
mnist_cnn_model.py` runs by default.

Each contender runs in its own process (start-up, data loading and evaluation included), one
after the other so that they never compete for the cores. For this project it also reports the
precision, seconds per epoch, images per second, and how close its convolutions run to the
machine's peak, measured here with a large matrix product.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def baseline(epochs, data_dir, seed, limit=None):
    """The recipe most MNIST repositories use: torchvision transforms applied to each sample by a
    DataLoader, the layers in their textbook order, NCHW memory format, default Adam."""
    import torch
    import torch.nn as nn
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    sys.path.insert(0, ROOT)
    from training.mnist_data import prepare_mnist

    prepare_mnist(data_dir)
    torch.manual_seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(data_dir, train=True, transform=transform)
    if limit:
        train_set = Subset(train_set, range(limit))
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(datasets.MNIST(data_dir, train=False, transform=transform), batch_size=1000)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
        print(f"Epoch {epoch + 1}/{epochs}: loss {total / len(train_loader):.4f}", flush=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x).argmax(1) == y).sum().item()
    print(f"Test accuracy: {100 * correct / 10000:.2f}% ({correct}/10000)")


def conv_flops_per_image():
    """FLOPs (a multiply-add is 2) of conv1 and conv2 in the forward pass of one image."""
    import torch
    sys.path.insert(0, ROOT)
    from mnist_cnn_model import CNN

    model, flops = CNN(), []
    for conv in (model.conv1, model.conv2):
        conv.register_forward_hook(lambda conv, inputs, out: flops.append(
            2 * out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]))
    model(torch.zeros(1, 1, 28, 28))
    return flops


def matmul_peak(dtype, n=2048, repeats=5):
    """FLOP/s of the best of a few n x n matrix products on the CPU, with torch's default threads
    as the training process has them: what this machine achieves on dense work in that dtype."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = a @ b  # warm-up: oneDNN / BLAS pick and prepare their kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def report_speed(metrics, n_train):
    """Precision, seconds per epoch, images per second and convolution throughput against the
    measured peak, from the metrics.json of one of this project's runs."""
    import torch
    sys.path.insert(0, ROOT)
    from training.loop import native_bf16

    precision = metrics["precision"]
    epoch_seconds = sum(e["seconds"] for e in metrics["epochs"]) / len(metrics["epochs"])
    print(f"this project: {precision}, {epoch_seconds:.1f} s per epoch, {n_train / epoch_seconds:.0f} training "
          f"images/s (an epoch's time includes evaluating the {metrics['total']} test images)")
    conv1, conv2 = conv_flops_per_image()
    # Training: the forward pass, then the gradients of conv2's input and weights (twice its
    # forward work) and of conv1's weights (the images need no gradient). Evaluation: forward only.
    epoch_flops = n_train * (2 * conv1 + 3 * conv2) + metrics["total"] * (conv1 + conv2)
    achieved = epoch_flops / epoch_seconds
    peaks = {"fp32": matmul_peak(torch.float32)}
    if native_bf16(torch.device("cpu")):
        peaks["bf16"] = matmul_peak(torch.bfloat16)
    peak = peaks.get(precision, peaks["fp32"])
    measured = ", ".join(f"{name} {value / 1e9:.0f} GFLOP/s" for name, value in peaks.items())
    print(f"convolutions: {achieved / 1e9:.1f} GFLOP/s over an epoch, {100 * achieved / peak:.0f}% of this machine's "
          f"{precision} peak (2048x2048 matrix product, {torch.get_num_threads()} threads: {measured})")


def timed(cmd):
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"Error: {' '.join(cmd)} failed:\n{out.stderr}")
    accuracy = float(re.search(r"Test accuracy: (\d+\.\d+)%", out.stdout)[1])
    return seconds, accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs for each contender (default: 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds for this project's runs (default: 1)")
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "data"), help="MNIST folder (default: data)")
    parser.add_argument("--limit", type=int, help="train both on the first N training images only, "
                                                  "to check that the benchmark runs (default: all 60000)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="this project's --precision (default: auto)")
    parser.add_argument("--recipe", default="textbook", choices=["textbook", "default"],
                        help="this project's recipe: textbook (the DataLoader recipe's work) or default "
                             "(default: textbook)")
    parser.add_argument("--skip-baseline", action="store_true", help="time this project only (default: off)")
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        return baseline(args.epochs, args.data_dir, args.seeds[0], args.limit)

    import torch
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.epochs} epochs{f' on {args.limit} images' if args.limit else ''}, CPU")
    limit = ["--limit", str(args.limit)] if args.limit else []
    recipe = ["--textbook"] if args.recipe == "textbook" else []
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cmd = [sys.executable, "mnist_cnn_model.py", "--epochs", str(args.epochs), "--seed", str(seed),
                   "--device", "cpu", "--precision", args.precision, "--data-dir", args.data_dir, *limit, *recipe,
                   "--run-dir", os.path.join(tmp, f"run{seed}"), "--weights", os.path.join(tmp, f"w{seed}.pt")]
            seconds, accuracy = timed(cmd)
            results.append((seconds, accuracy))
            print(f"this project ({args.recipe} recipe), seed {seed}: {seconds:6.1f} s, test accuracy {accuracy:.2f}%", flush=True)
        with open(os.path.join(tmp, f"run{args.seeds[0]}", "metrics.json")) as f:
            first_run = json.load(f)
    if len(results) > 1:
        accuracies = sorted(a for _, a in results)
        mean = sum(accuracies) / len(accuracies)
        print(f"this project over {len(results)} seeds: accuracy mean {mean:.2f}%, "
              f"min {accuracies[0]:.2f}%, max {accuracies[-1]:.2f}%")
    report_speed(first_run, args.limit or 60000)
    if args.skip_baseline:
        return
    cmd = [sys.executable, __file__, "--baseline-worker", "--epochs", str(args.epochs),
           "--seeds", str(args.seeds[0]), "--data-dir", args.data_dir, *limit]
    base_seconds, base_accuracy = timed(cmd)
    print(f"per-sample DataLoader recipe: {base_seconds:6.1f} s, test accuracy {base_accuracy:.2f}%")
    ours = results[0][0]
    print(f"speed-up: {base_seconds / ours:.2f}x (whole process, {args.epochs} epochs, same machine, same run)")


if __name__ == "__main__":
    main()
