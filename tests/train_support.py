"""Helpers of the training tests."""
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW_GZ = os.path.join(ROOT, "data", "MNIST", "raw")


def restore_signal_handlers():
    """main() installs its own, to stop cleanly on Ctrl-C; give pytest its own back."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_script(repo_root, *args, **kwargs):
    return subprocess.run([sys.executable, os.path.join(repo_root, "mnist_cnn_model.py"), *args],
                          capture_output=True, text=True, cwd=kwargs.pop("cwd", repo_root), timeout=300, **kwargs)
