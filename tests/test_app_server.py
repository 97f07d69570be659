"""Tests of app.py as a real process on a loopback port: starting and stopping it, its worker
processes, its errors on the command line, and what it imports."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from app_support import REPO, assert_one_sentence, canvas_png, start_server, stop_server

import app
import predict

pytest_plugins = ["app_fixtures"]

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"),
                                reason="finding a server's processes needs Linux's /proc")


def children(pid):
    """The process ids whose parent is pid (Linux's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                # pid (name) state ppid ...: the name may hold spaces, so split after it.
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def workers_of(process):
    """The worker processes of a server started with --workers N > 1."""
    def is_worker(pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"spawn_main" in f.read()
    return [pid for pid in children(process.pid) if is_worker(pid)]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        utime, stime = f.read().rsplit(")", 1)[1].split()[11:13]
    return int(utime) + int(stime)


def assert_gone(pids, within=10):
    """Every one of pids has ended (and was reaped), within `within` seconds."""
    deadline = time.monotonic() + within
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")], "processes left behind"


def post_in_parallel(url, bodies):
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: httpx.post(url + "api/predict", content=body,
                                                     timeout=60), bodies))


def untrained_number_reader(path):
    """Saves a number reader that was never trained (it reads nonsense) to path."""
    from reading.number_model import NumberReader
    torch.manual_seed(0)
    torch.save(NumberReader().state_dict(), path)
    return path


def test_server_process_answers_then_ctrl_c_stops_it_with_exit_0(drawing_weights):
    process, url = start_server(drawing_weights, "--workers", "1")
    try:
        assert httpx.get(url + "api/health", timeout=10).json() == {"status": "ok"}
        answer = httpx.post(url + "api/predict", content=canvas_png("7"), timeout=30).json()
        assert answer["number"] == "7"
    finally:
        code, err = stop_server(process)
    assert code == 0 and "Traceback" not in err, err
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "api/health", timeout=5)


@needs_proc
def test_two_worker_processes_share_the_pictures_and_ctrl_c_stops_them_all(drawing_weights):
    process, url = start_server(drawing_weights, "--workers", "2")
    try:
        workers = workers_of(process)
        assert len(workers) == 2
        others = set(children(process.pid)) - set(workers)  # multiprocessing's resource tracker
        before = {pid: cpu_ticks(pid) for pid in workers}
        answers = post_in_parallel(url, [canvas_png("7"), canvas_png("42")] * 8)
        assert [a.json()["number"] for a in answers] == ["7", "42"] * 8
        # Both worker processes did some of the reading.
        assert all(cpu_ticks(pid) > before[pid] for pid in workers)
    finally:
        code, err = stop_server(process)
    assert code == 0 and "Traceback" not in err, err
    assert_gone(workers + list(others))


def test_worker_processes_get_the_number_reader_too(drawing_weights, tmp_path):
    """The number reader travels to the worker processes with the CNN (pickled) and reads there:
    touching digits are answered as the same model and reader answer them in this process, which
    is not what the CNN alone answers (an untrained reader reads nonsense)."""
    reader_path = untrained_number_reader(tmp_path / "reader.pt")
    model, reader = predict.load_model(drawing_weights), predict.load_reader(reader_path)
    touching = canvas_png("742", gap=-20)
    expected = app.read_picture(model, touching, reader)
    assert expected["number"] != app.read_picture(model, touching)["number"], \
        "the test needs a picture that the reader reads otherwise than the CNN alone"
    process, url = start_server(drawing_weights, "--workers", "2", "--reader", reader_path)
    try:
        answers = post_in_parallel(url, [touching, canvas_png("7")] * 2)
        assert [a.json()["number"] for a in answers] == [expected["number"], "7"] * 2
        for got, wanted in zip(answers[0].json()["digits"], expected["digits"], strict=True):
            assert got["box"] == wanted["box"]
            assert got["probabilities"] == pytest.approx(wanted["probabilities"], abs=1e-6)
    finally:
        code, err = stop_server(process)
    assert code == 0 and "Traceback" not in err, err


@needs_proc
def test_kill_stops_the_server_and_its_worker_processes_as_ctrl_c_does(drawing_weights):
    process, url = start_server(drawing_weights, "--workers", "2")
    processes = children(process.pid)
    assert httpx.post(url + "api/predict", content=canvas_png("7"), timeout=30).status_code == 200
    process.terminate()
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0 and "Traceback" not in err, err
    assert_gone(processes)


@needs_proc
def test_a_worker_process_that_dies_costs_at_most_one_answer(drawing_weights):
    process, url = start_server(drawing_weights, "--workers", "2")
    try:
        dead = workers_of(process)[0]
        os.kill(dead, signal.SIGKILL)
        assert_gone([dead])
        first = httpx.post(url + "api/predict", content=canvas_png("7"), timeout=60)
        if first.status_code != 200:
            assert_one_sentence(first, 500, "failed")
        # A fresh pair of worker processes takes over.
        answers = post_in_parallel(url, [canvas_png("7")] * 4)
        assert [a.json()["number"] for a in answers] == ["7"] * 4
        assert len(workers_of(process)) == 2 and dead not in workers_of(process)
    finally:
        code, err = stop_server(process)
    assert code == 0, err


def run_app(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "app.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)


def test_workers_must_be_a_positive_count():
    result = run_app("--workers", "0")
    assert result.returncode == 2 and "--workers must be between 1 and 64" in result.stderr


def test_missing_or_bad_weights_exit_1_with_one_sentence_before_listening(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not weights")
    for weights, text in [(tmp_path / "none.pt", "python mnist_cnn_model.py"), (junk, "junk.pt")]:
        result = run_app("--weights", weights, "--port", "0")
        assert result.returncode == 1
        assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "http://" not in result.stdout  # it never announced an address


def test_a_port_in_use_exits_1_with_one_sentence(drawing_weights):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_app("--weights", drawing_weights, "--port", port)
    assert result.returncode == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_oversize_body_is_refused_before_it_is_sent(server):
    """Content-Length says 50 MB and only the headers go out: the answer comes without waiting."""
    host, port = server.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n")
        reply = conn.makefile("rb")
        status = reply.readline().decode()
        headers = dict(line.decode().strip().lower().split(": ", 1)
                       for line in iter(reply.readline, b"\r\n"))
        body = reply.read(int(headers["content-length"])).decode()
    assert status.startswith("HTTP/1.1 413") and "larger than 10 MB" in body


# Runs app.py with tqdm, training and matplotlib refused, as if they were not installed, and
# prints at exit which files asked for them. torch.hub asks for tqdm and does without it.
WITHOUT_TRAINING = """
import atexit, json, os, runpy, sys

asked = []

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"tqdm", "training", "matplotlib"}:
            frame = sys._getframe(1)
            while frame.f_code.co_filename.startswith("<frozen importlib"):
                frame = frame.f_back
            asked.append([name, frame.f_code.co_filename])
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Refuse())
atexit.register(lambda: print(json.dumps(asked), file=sys.stderr))
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.realpath(sys.argv[0]))  # as `python app.py` sets it
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_python_app_py_loads_no_training_machinery(drawing_weights, tmp_path):
    """Serving reads pictures: the progress bars, training code and plotting of training must not
    load, nor be asked for, by any file of this repository while app.py starts and reads."""
    reader_path = untrained_number_reader(tmp_path / "reader.pt")
    command = [sys.executable, "-c", WITHOUT_TRAINING, os.path.join(REPO, "app.py"),
               "--weights", drawing_weights, "--reader", reader_path, "--port", "0",
               "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path)
    line = process.stdout.readline()  # the address line; empty if it failed to start
    try:
        if "http://" not in line:
            pytest.fail(f"app.py did not start: {line}{process.communicate(timeout=60)[1]}")
        url = line.split("Open ")[1].split(" ")[0]
        for body in [canvas_png("7"), canvas_png("742", gap=-20)]:
            assert httpx.post(url + "api/predict", content=body, timeout=60).status_code == 200
    finally:
        code, err = stop_server(process)
    assert code == 0, err
    ours = [(name, path) for name, path in json.loads(err.strip().splitlines()[-1])
            if path.startswith(REPO) and not path.startswith(os.path.join(REPO, ".venv"))]
    assert ours == []
