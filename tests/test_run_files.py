"""Tests of the files a training run writes (training/run_files.py, training/cnn_run.py): atomic
writes, a full disk, the checkpoint, stopping and resuming."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_support import restore_signal_handlers, run_script

import mnist_cnn_model as m
import training.loop
import training.run_files
from mnist_cnn_model import CNN


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    training.run_files.atomic_save({"a": torch.ones(3)}, path)

    def failing_save(obj, f):  # atomic_save hands torch.save an open file
        f.write(b"half a fi")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError) as error:
        training.run_files.atomic_save({"a": torch.zeros(3)}, path)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


def test_second_stop_request_exits_at_once(monkeypatch):
    stop = training.loop.StopRequest()
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    stop.handle(signal.SIGINT, None)
    assert stop() and exits == []
    stop.handle(signal.SIGINT, None)
    assert exits == [130]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, repo_root):
    common = ["--limit", "3000", "--epochs", "2", "--seed", "3", "--device", "cpu"]
    ref = run_script(repo_root, *common, "--run-dir", str(tmp_path / "ref"), "--weights", str(tmp_path / "ref.pt"))
    assert ref.returncode == 0, ref.stderr

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"the user's previous weights")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(repo_root, "mnist_cnn_model.py"), *common,
                             "--run-dir", str(run_dir), "--weights", str(weights)],
                            cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "metrics.json").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"--resume {run_dir}" in stderr and "Traceback" not in stderr
    assert weights.read_bytes() == b"the user's previous weights"  # nothing half-trained replaced it

    resumed = run_script(repo_root, "--resume", str(run_dir), "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("Resuming")
    a, b = torch.load(tmp_path / "ref.pt", weights_only=True), torch.load(weights, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.stdout.splitlines()[-1] == ref.stdout.splitlines()[-1]


def test_resume_keeps_the_precision_the_run_started_with(tmp_path):
    config = dict(m.TRAINING_DEFAULTS, precision="bf16", weights=str(tmp_path / "w.pt"))
    torch.save({"config": config}, tmp_path / "checkpoint.pt")
    assert m.parse_args(["--resume", str(tmp_path), "--device", "cpu"]).config["precision"] == "bf16"
    del config["precision"]  # a checkpoint from before --precision: those runs were fp32
    torch.save({"config": config}, tmp_path / "checkpoint.pt")
    assert m.parse_args(["--resume", str(tmp_path), "--device", "cpu"]).config["precision"] == "fp32"


def test_a_diverging_run_stops_with_one_sentence_and_writes_no_weights(tmp_path, repo_root):
    run_dir, weights = tmp_path / "run", tmp_path / "w.pt"
    weights.write_bytes(b"the user's previous weights")
    out = run_script(repo_root, "--lr", "1e20", "--limit", "640", "--epochs", "2", "--seed", "4", "--device", "cpu",
                     "--run-dir", str(run_dir), "--weights", str(weights))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"Error: training diverged in epoch 1 (the loss became NaN or infinite), so no weights were written and "
        f"{run_dir}/checkpoint.pt still holds the run as it was before epoch 1; start again with a lower --lr than 1e+20.")
    assert "Epoch 1/2" not in out.stdout
    assert weights.read_bytes() == b"the user's previous weights" and not (tmp_path / "w.json").exists()
    # The checkpoint is the last good state: the untrained model of seed 4, before any step.
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["history"] == []
    torch.manual_seed(4)
    initial = CNN().state_dict()
    assert all(torch.equal(checkpoint["model"][k], initial[k]) for k in initial)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt"]


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory, repo_root):
    """The weights of an uninterrupted run with DISK_FULL_FLAGS."""
    tmp = tmp_path_factory.mktemp("reference")
    m.main([*DISK_FULL_FLAGS, "--data-dir", os.path.join(repo_root, "data"), "--run-dir", str(tmp / "run"),
            "--weights", str(tmp / "w.pt")])
    restore_signal_handlers()
    return torch.load(tmp / "w.pt", weights_only=True)


DISK_FULL_FLAGS = ["--limit", "640", "--epochs", "1", "--seed", "5", "--device", "cpu", "--precision", "fp32"]


@pytest.mark.parametrize("name, nth, where", [
    ("checkpoint.pt", 1, "run"),  # the first one, before training: nothing to resume yet
    ("checkpoint.pt", 2, "run"),  # after epoch 1
    ("metrics.json", 1, "run"),
    ("curves.png", 1, "run"),
    ("w.pt", 1, "out"),
    ("w.json", 1, "out"),
])
def test_a_full_disk_is_one_sentence_leaves_nothing_half_written_and_the_run_continues(
        tmp_path, repo_root, monkeypatch, disk_full_at, reference_weights, name, nth, where):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    weights = out / "w.pt"
    weights.write_bytes(b"the user's previous weights")
    flags = [*DISK_FULL_FLAGS, "--data-dir", os.path.join(repo_root, "data"), "--run-dir", str(run_dir),
             "--weights", str(weights)]
    seen = disk_full_at(name, nth)
    with pytest.raises(SystemExit) as exit_info:
        m.main(flags)
    assert len(seen) == nth
    message = exit_info.value.code  # a string: Python prints it and exits with status 1
    resumable = (run_dir / "checkpoint.pt").exists()
    assert resumable == (name != "checkpoint.pt" or nth > 1)
    then = f"continue with: python mnist_cnn_model.py --resume {run_dir}" if resumable else "run the same command again"
    assert message == (f"Error: no space left on device in {tmp_path / where}/ while saving {name} "
                       f"(the files already there are intact); free some space, then {then}.")
    assert not list(tmp_path.rglob("*.tmp"))
    if name == "w.json":  # the weights went in just before
        assert torch.equal(torch.load(weights, weights_only=True)["fc2.bias"], reference_weights["fc2.bias"])
    else:
        assert weights.read_bytes() == b"the user's previous weights"
    if resumable:
        checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert len(checkpoint["history"]) == (0 if name == "checkpoint.pt" else 1)

    # Doing what the sentence says, once there is room again, ends as an uninterrupted run would.
    monkeypatch.undo()
    m.main(["--resume", str(run_dir)] if resumable else flags)
    state = torch.load(weights, weights_only=True)
    assert all(torch.equal(state[k], reference_weights[k]) for k in reference_weights)
    assert json.loads((out / "w.json").read_text())["precision"] == "fp32"
    assert json.loads((run_dir / "metrics.json").read_text())["finished"]
