"""Calibrating the model's probabilities: a temperature that the logits are divided by, fitted on
digits held out of training, and the expected calibration error that measures the result.
"""
import math

import torch
import torch.nn.functional as F

from training.loop import autocast


@torch.no_grad()
def logits_of(model, images, batch_size=500, precision="fp32"):
    """The model's logits (N x 10, fp32, on the CPU) for normalised images N x 1 x 28 x 28."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].contiguous(memory_format=torch.channels_last)
        with autocast(images.device, precision):
            out.append(model(x).float().cpu())
    return torch.cat(out)


def fit_temperature(logits, labels, low=0.2, high=5.0, steps=801):
    """The temperature T in [low, high] whose softmax(logits / T) gives the labels the least
    negative log-likelihood, searched on a grid even in log T (steps of under 0.5%): one
    parameter, so a grid is exact enough and the same inputs always give the same T."""
    grid = torch.exp(torch.linspace(math.log(low), math.log(high), steps))
    labels = labels.cpu()
    nll = torch.stack([F.cross_entropy(logits / t, labels) for t in grid])
    return float(grid[int(nll.argmin())])


def expected_calibration_error(probabilities, labels, bins=15):
    """ECE: the confidences (each picture's largest probability) cut into `bins` equal-width bins,
    and the gap between mean confidence and accuracy in each bin, weighted by its share of the
    pictures. 0 when a reading given at p is right a share p of the time."""
    probabilities = torch.as_tensor(probabilities, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    confidence, predicted = probabilities.max(1)
    right = (predicted == labels).double()
    which = torch.clamp((confidence * bins).ceil().long() - 1, 0, bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.double().mean() * (confidence[inside].mean() - right[inside].mean()).abs()
    return float(ece)
