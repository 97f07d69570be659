"""
How fast does app.py read drawings when several people draw at once?

    python benchmarks/bench_app.py --weights mnist_cnn.pt              # 8 clients, 800 requests
    python benchmarks/bench_app.py --digits 2                          # two-digit numbers
    python benchmarks/bench_app.py --clients 8 --requests 2000 --seconds 120
    python benchmarks/bench_app.py --full-pad                          # 480x320 drawings

Starts app.py as a real process on a free loopback port. Each of CLIENTS threads posts canvas
drawings as the page does, the next one as soon as the last is answered (a user drawing keeps
exactly one request in flight), until REQUESTS have been sent in all or SECONDS have passed,
whichever comes first. The drawings are MNIST *test* digits written dark on the page's white
480x320 pad, as a finger or mouse leaves them, posted as the page posts them: at half the pad's
resolution, 240x160 (--full-pad: at 480x320, as an API client might post the pad). Prints
requests per second, the latency's p50, p95 and maximum, the errors (anything but a 200), how
many answers were the right number, and the machine.
"""
import argparse
import io
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import httpx
import numpy as np
from bench_predict import load_mnist_test  # benchmarks/, the script's own folder, is on sys.path
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CANVAS = (480, 320)  # the page's drawing pad, in canvas pixels


class Drawing(NamedTuple):
    png: bytes  # the body posted
    number: str  # the number it shows


class LoadRun(NamedTuple):
    latencies: np.ndarray  # of each request, in seconds
    errors: int  # answers other than a 200, and requests that failed
    right: int  # answers that were the number drawn
    wall: float  # seconds from the first request sent to the last answer


def canvas_drawings(images, labels, digits, count, seed, reduce=2):
    """count Drawings of `digits` MNIST test digits side by side on the page's pad, each 150-230
    pixels high (in pad pixels). The page sends its pad at half its resolution (reduce=2, each
    pixel the average of the four it covers); reduce=1 keeps it whole."""
    rng = np.random.default_rng(seed)
    drawings = []
    for _ in range(count):
        picks = rng.choice(len(images), digits, replace=False)
        height = int(rng.integers(150, 231) if digits == 1 else rng.integers(120, 181))
        canvas = Image.new("L", CANVAS, 255)
        x = (CANVAS[0] - digits * height) // 2
        for i in picks:
            big = Image.fromarray(255 - images[i]).resize((height, height), Image.Resampling.BICUBIC)
            canvas.paste(big, (x, (CANVAS[1] - height) // 2))
            x += height
        buf = io.BytesIO()
        canvas.convert("RGB").reduce(reduce).save(buf, "PNG")
        drawings.append(Drawing(buf.getvalue(), "".join(str(int(labels[i])) for i in picks)))
    return drawings


def start_server(weights):
    """app.py on a free loopback port; returns the process and its address."""
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "app.py"), "--weights", weights,
                                "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = process.stdout.readline()
    if "http://" not in line:
        process.wait(timeout=30)
        sys.exit(f"error: app.py did not start (exit status {process.returncode}).")
    return process, line.split("Open ")[1].split(" ")[0]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_clients(url, drawings, clients, requests, seconds):
    """A LoadRun of clients threads posting drawings in turn until requests are sent or seconds
    have passed."""
    lock = threading.Lock()
    sent = [0]
    latencies, errors, right = [], [0], [0]
    deadline = time.perf_counter() + seconds

    def client(http):
        with http:
            while True:
                with lock:
                    if sent[0] >= requests or time.perf_counter() >= deadline:
                        return
                    drawing = drawings[sent[0] % len(drawings)]
                    sent[0] += 1
                start = time.perf_counter()
                try:
                    response = http.post(url + "api/predict", content=drawing.png)
                    ok = response.status_code == 200
                    answer = response.json().get("number") if ok else None
                except httpx.HTTPError:
                    ok, answer = False, None
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors[0] += not ok
                    right[0] += answer == drawing.number

    # Made before any request is timed: making one loads certificates while holding the
    # interpreter lock, which would stall the threads already posting.
    threads = [threading.Thread(target=client, args=(httpx.Client(timeout=30),))
               for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadRun(np.array(latencies), errors[0], right[0], time.perf_counter() - start)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Latency and throughput of app.py under load.")
    parser.add_argument("--weights", default="mnist_cnn.pt",
                        help="trained weights (default: mnist_cnn.pt)")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent clients, each one request in flight (default: 8)")
    parser.add_argument("--requests", type=int, default=800,
                        help="requests in all, at most (default: 800)")
    parser.add_argument("--seconds", type=float, default=60,
                        help="stop sending after this long, at most (default: 60)")
    parser.add_argument("--digits", type=int, default=1, choices=[1, 2, 3],
                        help="digits per drawing (default: 1)")
    parser.add_argument("--full-pad", action="store_true",
                        help="post drawings at the pad's 480x320, not at the 240x160 the page sends "
                             "(default: off)")
    parser.add_argument("--warmup", type=int, default=16,
                        help="requests sent first and not counted (default: 16)")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "data"),
                        help="MNIST folder (default: data/ in the repository)")
    parser.add_argument("--seed", type=int, default=0, help="which test digits (default: 0)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.seconds <= 0:
        parser.error("--clients, --requests and --seconds must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not os.path.exists(args.weights):
        sys.exit(f"error: no weights file at {args.weights}: train first with "
                 f"`python mnist_cnn_model.py`.")
    images, labels = load_mnist_test(args.data_dir)
    reduce = 1 if args.full_pad else 2
    drawings = canvas_drawings(images, labels, args.digits, 200, args.seed, reduce)
    load_before = os.getloadavg()[0]
    process, url = start_server(args.weights)
    try:
        # The first requests pay for lazy set-up (thread pool, caches): not what a user waits.
        # As many clients as will be timed, so that every worker process gets its share.
        run_clients(url, drawings, args.clients, args.warmup, args.seconds)
        run = run_clients(url, drawings, args.clients, args.requests, args.seconds)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    ms = 1000 * np.percentile(run.latencies, [50, 95, 100])
    kind = "single-digit" if args.digits == 1 else f"{args.digits}-digit"
    print(f"app.py at {url}, weights {os.path.relpath(args.weights)}: {args.clients} clients "
          f"posting {kind} {CANVAS[0] // reduce}x{CANVAS[1] // reduce} canvas PNGs")
    count = len(run.latencies)
    print(f"requests: {count} in {run.wall:.1f} s, {count / run.wall:.1f} requests/s, "
          f"errors: {run.errors}, right number: {run.right}/{count}")
    print(f"latency: p50 {ms[0]:.1f} ms, p95 {ms[1]:.1f} ms, max {ms[2]:.1f} ms")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average before the run {load_before:.2f} (the clients share the machine)")
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
