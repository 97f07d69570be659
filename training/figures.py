"""The run folder's figures that show what happened: curves, confusion matrix, mistakes.
"""
import math
import os
from typing import NamedTuple

import torch

from reading.digit_input import grey_levels
from training.run_files import atomic_write


class Mistake(NamedTuple):
    """A test digit the model got wrong: the image as the model saw it (28x28, normalised), its
    label and the model's answer."""
    image: torch.Tensor
    true: int
    predicted: int


def save_png(fig, path):
    atomic_write(path, lambda tmp_path: fig.savefig(tmp_path, format="png", dpi=100))


def save_figures(run_dir, history, confusion, mistakes):
    """curves.png (loss and accuracy per epoch), confusion_matrix.png and mistakes.png (the
    Mistakes, labelled true/predicted)."""
    save_png(curves(history), os.path.join(run_dir, "curves.png"))
    save_png(confusion_matrix(confusion), os.path.join(run_dir, "confusion_matrix.png"))
    save_png(mistakes_mosaic(mistakes), os.path.join(run_dir, "mistakes.png"))


def curves(history):
    from matplotlib.figure import Figure  # here: slow to import, and only these figures need it

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "o-", color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def confusion_matrix(confusion):
    from matplotlib.figure import Figure  # here: slow to import, and only these figures need it

    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    # Log colour scale: the diagonal holds ~1000 per class, the errors a handful.
    im = ax.imshow(confusion.numpy() + 1, cmap="Blues", norm="log")
    for true in range(10):
        for pred in range(10):
            count = int(confusion[true, pred])
            if count:
                ax.text(pred, true, count, ha="center", va="center", fontsize=8,
                        color="white" if true == pred else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title="Confusion matrix on the 10,000 test digits")
    fig.colorbar(im, ax=ax, label="count + 1")
    return fig


def mistakes_mosaic(mistakes):
    from matplotlib.figure import Figure  # here: slow to import, and only these figures need it

    # The digits are pasted into one picture with their labels above them: one axes for all of
    # them renders many times faster than one per digit.
    cols = 8
    rows = max(1, math.ceil(len(mistakes) / cols))
    cell_w, cell_h = 32, 39  # a 28x28 digit, a white margin, and room for its label above it
    mosaic = torch.ones(rows * cell_h, cols * cell_w)
    fig = Figure(figsize=(cols * 1.2, rows * 1.4 + 0.4))
    ax = fig.add_axes((0, 0, 1, 1 - 0.5 / (rows * 1.4 + 0.4)))
    for k, mistake in enumerate(mistakes):
        row, col = divmod(k, cols)
        top, left = row * cell_h + 10, col * cell_w + 2
        mosaic[top:top + 28, left:left + 28] = grey_levels(mistake.image)
        ax.text(left + 14, top - 2, f"true {mistake.true} / pred {mistake.predicted}", fontsize=8, ha="center")
    ax.imshow(mosaic.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    fig.suptitle(f"Misclassified test digits (first {len(mistakes)})")
    return fig
