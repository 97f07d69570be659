"""
Whole-process training time of this project against the usual per-sample DataLoader recipe, run
side by side on the same machine, with the same model, hyper-parameters and epochs.

    python benchmarks/bench_train.py                    # 10 epochs each: ~7 minutes on 2 cores
    python benchmarks/bench_train.py --epochs 2         # a quick look
    python benchmarks/bench_train.py --seeds 1 2 3 --skip-baseline   # accuracy over seeds

Each contender runs in its own process (start-up, data loading and evaluation included), one
after the other so that they never compete for the cores.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def baseline(epochs, data_dir, seed):
    """The recipe most MNIST repositories use: torchvision transforms applied to each sample by a
    DataLoader, the layers in their textbook order, NCHW memory format, default Adam."""
    import torch
    import torch.nn as nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    sys.path.insert(0, ROOT)
    from mnist_cnn_model import prepare_mnist

    prepare_mnist(data_dir)
    torch.manual_seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_loader = DataLoader(datasets.MNIST(data_dir, train=True, transform=transform), batch_size=64, shuffle=True)
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
    parser.add_argument("--skip-baseline", action="store_true", help="time this project only (default: off)")
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        return baseline(args.epochs, args.data_dir, args.seeds[0])

    import torch
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.epochs} epochs, CPU")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cmd = [sys.executable, "mnist_cnn_model.py", "--epochs", str(args.epochs), "--seed", str(seed),
                   "--device", "cpu", "--data-dir", args.data_dir,
                   "--run-dir", os.path.join(tmp, f"run{seed}"), "--weights", os.path.join(tmp, f"w{seed}.pt")]
            seconds, accuracy = timed(cmd)
            results.append((seconds, accuracy))
            print(f"this project, seed {seed}: {seconds:6.1f} s, test accuracy {accuracy:.2f}%", flush=True)
    if len(results) > 1:
        accuracies = sorted(a for _, a in results)
        mean = sum(accuracies) / len(accuracies)
        print(f"this project over {len(results)} seeds: accuracy mean {mean:.2f}%, "
              f"min {accuracies[0]:.2f}%, max {accuracies[-1]:.2f}%")
    if args.skip_baseline:
        return
    cmd = [sys.executable, __file__, "--baseline-worker", "--epochs", str(args.epochs),
           "--seeds", str(args.seeds[0]), "--data-dir", args.data_dir]
    base_seconds, base_accuracy = timed(cmd)
    print(f"per-sample DataLoader recipe: {base_seconds:6.1f} s, test accuracy {base_accuracy:.2f}%")
    ours = results[0][0]
    print(f"speed-up: {base_seconds / ours:.2f}x (whole process, {args.epochs} epochs, same machine, same run)")


if __name__ == "__main__":
    main()
