"""The --show figures of predict.py: the picture, what the model saw, and how sure it was.
matplotlib is imported only when a figure is asked for.
"""
import os
import sys

import numpy as np

from reading.digit_input import grey_levels
from reading.errors import PredictError
from reading.images import open_image


def has_display():
    """Whether figures can be shown on a screen here (otherwise they are only written)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def check_matplotlib():
    """PredictError with one sentence when matplotlib, which only --show needs, is not installed
    (requirements-serve.txt leaves it out)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise PredictError("--show draws its figures with matplotlib, which is not installed here: "
                           "pip install matplotlib, or leave out --show.") from error


def pyplot():
    """matplotlib.pyplot, imported now: reading pictures never needs it."""
    import matplotlib
    # Without a display the default backend may fail to start; Agg only writes files.
    if not has_display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


FIGURE_DIR = "predictions"


def figure_path(image_file, taken):
    """Where --show writes the figure for image_file: predictions/<name>.png under the current
    folder (git-ignored), numbered rather than overwrite a figure written earlier in the same
    run (taken), as when two folders both hold a 7.png."""
    stem = os.path.splitext(os.path.basename(image_file))[0]
    path, n = os.path.join(FIGURE_DIR, f"{stem}.png"), 2
    while path in taken:
        path, n = os.path.join(FIGURE_DIR, f"{stem}_{n}.png"), n + 1
    taken.add(path)
    return path


def show_prediction(path, tensor, probs, taken, keep_open=False):
    """Write the figure for one prediction (the picture, the 28x28 the model saw, the ten
    probabilities) and print where it is; returns the file name."""
    plt = pyplot()
    original = open_image(path).convert("RGB")
    seen = grey_levels(np.asarray(tensor[0]))
    digit = int(probs.argmax())
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    axes[0].imshow(original)
    axes[0].set_title("your image")
    axes[1].imshow(seen, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("what the model saw (28x28)")
    for ax in axes[:2]:
        ax.axis("off")
    colours = ["tab:orange" if d == digit else "tab:blue" for d in range(10)]
    axes[2].bar(range(10), np.asarray(probs), color=colours)
    axes[2].set_xticks(range(10))
    axes[2].set_ylim(0, 1)
    axes[2].set_xlabel("digit")
    axes[2].set_ylabel("probability")
    axes[2].set_title(f"prediction: {digit} ({100 * float(probs[digit]):.1f}%)")
    return _save_figure(plt, fig, path, taken, keep_open)


def show_number(path, readings, taken, keep_open=False, left_out=()):
    """Write the figure for a number: the picture with each digit's box and reading drawn on it,
    and each mark left out of it (left_out: reading.marks.Mark tuples) boxed with a number keyed
    to its reason in the title; below, the 28x28 each digit became, with its confidence. Returns
    the file name."""
    plt = pyplot()
    original, scale = open_image(path, with_scale=True)
    n = max(len(readings), 1)
    fig = plt.figure(figsize=(max(6.0, 1.3 * n), 6.5))
    grid = fig.add_gridspec(2, n, height_ratios=[3.2, 1])
    top = fig.add_subplot(grid[0, :])
    top.imshow(original.convert("RGB"))
    for r in readings:
        x0, y0, x1, y1 = (v / scale for v in r.box)
        top.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2, color="tab:orange"))
        top.text(x0, y0, str(r.digit), color="white", fontsize=14, va="bottom",
                 bbox=dict(facecolor="tab:orange", pad=1, lw=0))
    for k, mark in enumerate(left_out, start=1):
        x0, y0, x1, y1 = (v / scale for v in mark.box)
        top.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ls="--", color="tab:gray"))
        top.text(x0, y0, f"not a digit ({k})", color="white", fontsize=9, va="bottom",
                 bbox=dict(facecolor="tab:gray", pad=1, lw=0))
    left = "".join(f"\n({k}) not a digit: {mark.reason}" for k, mark in enumerate(left_out, start=1))
    top.set_title(f"read as {''.join(str(r.digit) for r in readings)} "
                  f"({100 * number_confidence(readings):.1f}% that every digit is right){left}")
    top.axis("off")
    for i, r in enumerate(readings):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(grey_levels(np.asarray(r.image[0])), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{r.digit} ({100 * r.probabilities[r.digit]:.0f}%)", fontsize=10)
        ax.axis("off")
    return _save_figure(plt, fig, path, taken, keep_open)


def _save_figure(plt, fig, path, taken, keep_open):
    # The figure is closed unless keep_open, so a folder of thousands does not pile them up.
    fig.suptitle(os.path.basename(path))
    fig.tight_layout()
    out = figure_path(path, taken)
    os.makedirs(FIGURE_DIR, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"figure written to {out}")
    if not keep_open:
        plt.close(fig)
    return out


def number_confidence(readings):
    """The model's confidence that every digit of the number is right: the product of each
    digit's probability."""
    confidence = 1.0
    for reading in readings:
        confidence *= reading.probabilities[reading.digit]
    return confidence
