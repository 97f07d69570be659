"""What training adds to MNIST pictures: random distortions, and the pieces of numbers that
cutting touching digits gives.
"""
import math

import torch
import torch.nn.functional as F

from reading.digit_input import MNIST_MEAN, MNIST_STD


def change_stroke_width(images, amount):
    """Each image's strokes widened (amount > 0) or narrowed (amount < 0): a blend towards its
    3x3 dilation, up to all of it at amount 1 (a pixel more on each side), or towards its 3x3
    erosion, up to half of it at amount -1 (a full erosion would wipe out MNIST's 2-pixel
    strokes). Markers are far bolder than MNIST's pens, fine pens far thinner."""
    amount = amount.view(-1, 1, 1, 1)
    dilated = F.max_pool2d(images, 3, 1, 1)
    eroded = -F.max_pool2d(-images, 3, 1, 1)
    return torch.where(amount > 0, images + amount * (dilated - images),
                       images + 0.5 * amount * (images - eroded))


def augment_batch(images, generator):
    """Random small rotation, scale, shear and shift of each image, done for the whole batch at
    once with one affine resampling (cheap on a CPU, unlike per-sample PIL transforms), and a
    random change of stroke width."""
    n = images.shape[0]
    r = torch.rand(n, 6, generator=generator) * 2 - 1  # uniform in [-1, 1)
    angle, scale, shear = r[:, 0] * math.radians(12), 1 + 0.12 * r[:, 1], 0.2 * r[:, 2]
    shift = r[:, 3:5] * (2.5 / 14)  # up to 2.5 pixels; affine_grid works in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin + shear * cos, shift[:, 0]], 1),
        torch.stack([sin, cos + shear * sin, shift[:, 1]], 1),
    ], 1).to(images.device)
    images = change_stroke_width(images, r[:, 5].to(images.device))
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Pixels that come in from outside the image must be background, not zero (zero is grey
    # after normalisation), so resample the offset from the background value.
    background = -MNIST_MEAN / MNIST_STD
    return F.grid_sample(images - background, grid, align_corners=False) + background


# Each augmented batch gets this share of its size again as pieces of numbers that are not one
# digit, and as many digits cut with a sliver of their neighbour (see number_pieces). They are
# added, not swapped in, so every batch keeps its full share of whole digits.
PIECES = 0.125


def _move(ink, scale, dx):
    """Each image of ink (background 0) scaled by scale[i] about its centre, then moved dx[i]
    pixels right: the source column c lands at 13.5 + scale * (c - 13.5) + dx."""
    theta = torch.zeros(len(ink), 2, 3, device=ink.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, 0, 2] = -dx / scale * (2 / 28)  # affine_grid works in [-1, 1] coordinates
    grid = F.affine_grid(theta, list(ink.shape), align_corners=False)
    return F.grid_sample(ink, grid, align_corners=False)


def _ink_columns(ink):
    """The first and last column of each image that holds ink."""
    inked = (ink[:, 0] > 0.3).any(1)
    column = torch.arange(28, device=ink.device).expand_as(inked)
    return (torch.where(inked, column, 28).min(1).values.float(),
            torch.where(inked, column, -1).max(1).values.float())


def _centred(ink):
    """Each image moved sideways so that its ink's centre of mass is on column 14, where
    reading.digit_input.centre_in_28x28 puts what predict.py reads (and MNIST has its digits)."""
    mass = ink[:, 0].sum(1)
    centre = (mass * torch.arange(28., device=ink.device)).sum(1) / mass.sum(1).clamp_min(1e-6)
    return _move(ink, torch.ones_like(centre), 14 - centre)


def number_pieces(images, labels, generator):
    """(not_digits, still_digits) made from a batch of normalised images, like the pieces that
    predict.py (reading/cuts.py) tries when it cuts digits that touch, so that the
    model can learn to be unsure of the first and to still read the second:
    - not_digits: each image with another one touching or crossing it by up to 3 columns on its
      right, the pair shrunk to fit 20 pixels wide; or, for digits other than 1 whose ink spans
      at least 10 columns, the ink left or right of a cut 35-65% of the way across;
    - still_digits: each image with 2-6 columns of another's edge touching it on one side; or,
      where at least 4 columns of ink stay, with 1-3 columns of its own ink cut off one side.
    Each is moved sideways to centre its ink, but not rescaled as predict.py would rescale it:
    a close imitation is enough."""
    ink, other, u = _piece_draws(images, generator)
    return _not_digits(ink, other, u, labels), _still_digits(ink, other, u)


def _piece_draws(images, generator):
    """The ink of each image, the image paired with it, and its random numbers, drawn from
    generator alone and in one go, whichever pieces are then made of which images."""
    ink = images * MNIST_STD + MNIST_MEAN
    other = ink[torch.randperm(len(ink), generator=generator).to(ink.device)]
    return ink, other, torch.rand(len(ink), 9, generator=generator).to(ink.device)


def _as_image(per_image):  # one value per image, broadcast over its pixels
    return per_image.view(-1, 1, 1, 1)


def _not_digits(ink, other, u, labels):
    """number_pieces' not_digits, normalised, from _piece_draws."""
    left, right = _ink_columns(ink)
    o_left, o_right = _ink_columns(other)
    column = torch.arange(28., device=ink.device).view(1, 1, 1, 28)
    # Two digits taken as one: other's ink starts up to 3 columns before ink's ends.
    overlap = 3 * u[:, 0]
    offset = right + 1 - overlap - o_left  # other's column c sits at ink's column c + offset
    width = right + 1 - left + o_right + 1 - o_left - overlap
    scale = 20 / width.clamp_min(20)
    centre = left + width / 2 - 0.5
    pair = _centred(torch.maximum(_move(ink, scale, -scale * (centre - 13.5)),
                                  _move(other, scale, -scale * (centre - offset - 13.5))))
    cut = _as_image(left + (0.35 + 0.3 * u[:, 1]) * (right - left))
    half = _centred(torch.where(_as_image(u[:, 2] < 0.5), ink * (column <= cut), ink * (column > cut)))
    halve = (u[:, 3] < 0.5) & (right - left + 1 >= 10) & (labels.to(ink.device) != 1)
    return (torch.where(_as_image(halve), half, pair) - MNIST_MEAN) / MNIST_STD


def _still_digits(ink, other, u):
    """number_pieces' still_digits, normalised, from _piece_draws."""
    left, right = _ink_columns(ink)
    o_left, o_right = _ink_columns(other)
    column = torch.arange(28., device=ink.device).view(1, 1, 1, 28)
    on_right = _as_image(u[:, 5] < 0.5)
    band = _as_image(torch.floor(2 + 5 * u[:, 4]))  # whole columns: 2 to 6
    gap = 1 - 3 * u[:, 6]
    neighbour = torch.where(
        on_right,
        _move(other * (column < _as_image(o_left) + band), torch.ones_like(gap), right + 1 + gap - o_left),
        _move(other * (column > _as_image(o_right) - band), torch.ones_like(gap), left - 1 - gap - o_right))
    sliver = torch.floor(1 + 3 * u[:, 8])  # whole columns: 1 to 3
    clipped = torch.where(on_right, ink * (column <= _as_image(right - sliver)),
                          ink * (column >= _as_image(left + sliver)))
    # A thin 1 cut to a sliver is no 1 any more: those get a neighbour's edge instead.
    clip = (u[:, 7] >= 0.6) & (right - left + 1 - sliver >= 4)
    still_digits = _centred(torch.where(_as_image(clip), clipped, torch.maximum(ink, neighbour)))
    return (still_digits - MNIST_MEAN) / MNIST_STD


def with_number_pieces(images, labels, generator):
    """The batch followed by PIECES of its size in not_digits and as many still_digits made
    from its first images (see number_pieces), and the targets of all as probabilities: the
    digit's one-hot, and uniform for not_digits (the model should pick no digit there)."""
    k = int(PIECES * len(images))
    targets = F.one_hot(labels, 10).float()
    if k == 0:
        return images, targets
    # Each kind is made only for the images that get it, not for all and then thrown away.
    ink, other, u = _piece_draws(images[:2 * k], generator)
    return (torch.cat([images, _not_digits(ink[:k], other[:k], u[:k], labels[:k]),
                       _still_digits(ink[k:], other[k:], u[k:])]),
            torch.cat([targets, torch.full_like(targets[:k], 0.1), targets[k:2 * k]]))


# Each batch gets this share of its size again in pictures that are not digits.
NONDIGITS = 0.25


def with_nondigits(images, targets, bank, generator):
    """The batch and its targets followed by NONDIGITS of its size in pictures drawn from bank
    (training/nondigits.py), distorted as augment_batch distorts digits, each with the uniform
    target: the model should pick no digit there."""
    k = int(NONDIGITS * len(images))
    if k == 0:
        return images, targets
    picked = bank[torch.randint(len(bank), (k,), generator=generator).to(bank.device)]
    nondigits = augment_batch(picked.contiguous(memory_format=torch.channels_last), generator)
    return torch.cat([images, nondigits]), torch.cat([targets, torch.full_like(targets[:k], 0.1)])
