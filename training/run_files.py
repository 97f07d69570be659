"""Saving: every file is written to a temporary name and renamed into place, so a crash, a Ctrl-C
or a full disk never leaves a truncated file where a good one was.
"""
import errno
import json
import os

import torch

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def atomic_write(path, write):
    """Call write(temporary_path), then rename the result onto path. A full disk (or quota) raises
    OSError with its errno and path, the path of the file meant, not of the temporary one."""
    tmp_path = f"{path}.{os.getpid()}.tmp"  # per process, so that two runs never share one
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise OSError(e.errno, os.strerror(e.errno), os.fspath(path)) from e
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_save(obj, path):
    def write(tmp_path):
        # Through a Python file: given a path, torch.save reports a full disk as a RuntimeError
        # ("unexpected pos ..."), given a file it raises the OSError with ENOSPC.
        with open(tmp_path, "wb") as f:
            torch.save(obj, f)
    atomic_write(path, write)


def atomic_write_json(obj, path):
    def write(tmp_path):
        with open(tmp_path, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    atomic_write(path, write)
