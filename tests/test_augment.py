"""Tests of what training adds to the MNIST digits (training/augment.py): random distortions, and
the pieces of numbers that cutting touching digits gives."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image, ImageFilter

import mnist_cnn_model as m
import reading.digit_input
import training.augment
from mnist_cnn_model import CNN


def test_augmentation_moves_digits_but_keeps_the_background(mnist_test_set):
    x = mnist_test_set[0][:64]
    generator = torch.Generator().manual_seed(0)
    background = -reading.digit_input.MNIST_MEAN / reading.digit_input.MNIST_STD
    blank = torch.full((8, 1, 28, 28), background)
    torch.testing.assert_close(training.augment.augment_batch(blank, generator), blank)
    out = training.augment.augment_batch(x, generator)
    assert out.shape == x.shape and not torch.allclose(out, x, atol=0.1)
    # Small transforms: the ink is neither lost nor smeared over the picture, and the corners
    # stay background. (A pixel more on each side of a 1.5-pixel stroke, scaled up by 12%, is
    # about 2.9 times the ink; half a pixel less off a 2-pixel one, scaled down, about 0.4.)
    ink_in, ink_out = (x - background).sum((1, 2, 3)), (out - background).sum((1, 2, 3))
    ratio = ink_out / ink_in
    assert (ratio > 0.25).all() and (ratio < 4).all()
    assert (ratio > 1.3).any()  # some pens are bolder
    torch.testing.assert_close(out[:, :, 0, 0], torch.full((64, 1), background), atol=1e-4, rtol=0)


def _normalised(ink):
    return (torch.as_tensor(ink, dtype=torch.float32) - reading.digit_input.MNIST_MEAN) / reading.digit_input.MNIST_STD


def _ink(batch):
    """Ink level (0 paper, 1 full ink) of normalised images, as a NumPy array N x 28 x 28."""
    return (batch * reading.digit_input.MNIST_STD + reading.digit_input.MNIST_MEAN)[:, 0].numpy()


def _inked_columns(ink):
    """How many columns each image spans from its first inked column to its last."""
    spans = []
    for image in ink:
        columns = np.flatnonzero((image > 0.3).any(0))
        spans.append(columns[-1] - columns[0] + 1 if len(columns) else 0)
    return np.array(spans)


def test_number_pieces_pair_narrow_digits_and_halve_wide_ones():
    # A 1 (a bar 3 columns wide) and a 0 (a ring 16 columns wide), 32 of each.
    bar = np.zeros((28, 28), np.float32)
    bar[4:24, 13:16] = 1
    yy, xx = np.mgrid[:28, :28]
    radius = np.hypot(yy - 13.5, xx - 13.5)
    ring = ((radius >= 6) & (radius <= 8)).astype(np.float32)
    batch = _normalised(np.stack([bar] * 32 + [ring] * 32))[:, None]
    labels = torch.tensor([1] * 32 + [0] * 32)
    not_digits, still_digits = training.augment.number_pieces(batch, labels, torch.Generator().manual_seed(0))
    assert not_digits.shape == still_digits.shape == batch.shape
    widths = _inked_columns(_ink(not_digits))
    # Half a 1 is still a 1: a bar is only ever paired, so none of its ink is lost, with another
    # bar (side by side, or crossing it by up to 3 columns: 3 to 6 columns, one more where a
    # shift of a fraction of a pixel spreads an edge over two) or with a ring (16 to 20 columns).
    bar_widths = widths[:32]
    two_bars, bar_and_ring = (bar_widths >= 3) & (bar_widths <= 7), bar_widths >= 16
    assert (two_bars | bar_and_ring).all() and two_bars.any() and bar_and_ring.any()
    assert (_ink(not_digits[:32]).sum((1, 2)) > 0.95 * bar.sum()).all()
    # A ring is halved (the ink on one side of a cut 35-65% of the way across: at most 11 of its
    # 16 columns) or paired and shrunk into MNIST's 20-pixel box; both happen.
    ring_widths = widths[32:]
    halves, pairs = ring_widths <= 11, ring_widths >= 16
    assert (halves | pairs).all() and halves.any() and pairs.any()
    assert (ring_widths <= 21).all()
    ring_mass = _ink(not_digits[32:]).sum((1, 2))
    assert ring_mass[halves].max() < 0.75 * ring.sum() < ring_mass[pairs].min()


def test_number_pieces_never_halve_a_1_however_wide():
    # A slanted 1 can span as many columns as a 0: its label, not its width, keeps it whole.
    stroke = np.zeros((28, 28), np.float32)
    for row in range(4, 24):
        stroke[row, 20 - (row - 4) * 12 // 20:23 - (row - 4) * 12 // 20] = 1
    batch = _normalised(np.stack([stroke] * 64))[:, None]
    generator = torch.Generator().manual_seed(0)
    as_1, _ = training.augment.number_pieces(batch, torch.ones(64, dtype=torch.long), generator)
    as_7, _ = training.augment.number_pieces(batch, torch.full((64,), 7), torch.Generator().manual_seed(0))
    mass = stroke.sum()
    # Paired, two strokes shrunk to fit 20 columns hold more than 0.75 of one stroke's ink;
    # halved, less.
    assert (_ink(as_1).sum((1, 2)) > 0.75 * mass).all()
    assert (_ink(as_7).sum((1, 2)) < 0.75 * mass).any()


def test_number_pieces_cut_whole_columns_off_and_spare_thin_digits():
    # A block 12 columns wide: cutting 1, 2 or 3 whole columns off leaves 11, 10 or 9 twelfths
    # of its ink (a sideways shift moves ink between columns but keeps its sum).
    block = np.zeros((28, 28), np.float32)
    block[4:24, 8:20] = 1
    batch = _normalised(np.stack([block] * 256))[:, None]
    _, still = training.augment.number_pieces(batch, torch.zeros(256, dtype=torch.long), torch.Generator().manual_seed(0))
    twelfths = _ink(still).sum((1, 2)) / block.sum() * 12
    cut = twelfths < 11.9  # a neighbour's edge only ever adds ink
    np.testing.assert_allclose(twelfths[cut], np.round(twelfths[cut]), atol=0.05)
    assert set(np.round(twelfths[cut]).astype(int)) == {9, 10, 11}
    # A bar 3 columns wide is never cut: 1 column of it would be a sliver, no 1 any more.
    bar = np.zeros((28, 28), np.float32)
    bar[4:24, 13:16] = 1
    bars = _normalised(np.stack([bar] * 256))[:, None]
    _, still = training.augment.number_pieces(bars, torch.ones(256, dtype=torch.long), torch.Generator().manual_seed(0))
    assert (_ink(still).sum((1, 2)) > 0.99 * bar.sum()).all()


def test_number_pieces_still_digits_keep_their_ink_and_are_centred(mnist_test_set):
    x, y = mnist_test_set[0][:64], mnist_test_set[1][:64]
    _, still_digits = training.augment.number_pieces(x, y, torch.Generator().manual_seed(1))
    before, after = _ink(x), _ink(still_digits)
    ratio = after.sum((1, 2)) / before.sum((1, 2))
    column_mass = before.sum(1)
    # At most 3 columns cut off one edge (inked: above 0.3) and the faint ink beyond them.
    edge = []
    for mass, image in zip(column_mass, before):
        inked = np.flatnonzero((image > 0.3).any(0))
        edge.append(max(mass[:inked[0] + 3].sum(), mass[inked[-1] - 2:].sum()))
    assert (before.sum((1, 2)) - after.sum((1, 2)) < 1.05 * np.array(edge)).all()
    # Or up to 6 columns of a neighbour's edge added: no more ink than the inkiest 6 columns of
    # any digit in the batch hold.
    inkiest_band = max(column_mass[:, c:c + 6].sum(1).max() for c in range(23))
    assert (after.sum((1, 2)) - before.sum((1, 2)) < 1.05 * inkiest_band).all()
    assert (ratio < 0.97).any() and (ratio > 1.03).any()  # both kinds happen
    # Centred as reading.digit_input.centre_in_28x28 centres what predict.py reads: on column 14.
    mass = after.sum(1)
    centre = (mass * np.arange(28)).sum(1) / mass.sum(1)
    np.testing.assert_allclose(centre, 14, atol=0.6)


def test_number_pieces_are_drawn_from_the_generator_alone(mnist_test_set):
    x, y = mnist_test_set[0][:16], mnist_test_set[1][:16]
    first = training.augment.number_pieces(x, y, torch.Generator().manual_seed(3))
    again = training.augment.number_pieces(x, y, torch.Generator().manual_seed(3))
    other = training.augment.number_pieces(x, y, torch.Generator().manual_seed(4))
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(first[0], other[0])


def test_with_number_pieces_adds_pieces_with_uniform_targets_and_keeps_the_digits(mnist_test_set):
    x, y = mnist_test_set[0][:64], mnist_test_set[1][:64]
    images, targets = training.augment.with_number_pieces(x, y, torch.Generator().manual_seed(0))
    k = int(training.augment.PIECES * 64)
    assert k > 0 and images.shape == (64 + 2 * k, 1, 28, 28) and targets.shape == (64 + 2 * k, 10)
    torch.testing.assert_close(images[:64], x, rtol=0, atol=0)
    not_digits, still_digits = training.augment.number_pieces(x[:2 * k], y[:2 * k], torch.Generator().manual_seed(0))
    torch.testing.assert_close(images[64:64 + k], not_digits[:k], rtol=0, atol=0)
    torch.testing.assert_close(images[64 + k:], still_digits[k:], rtol=0, atol=0)
    one_hot = nn.functional.one_hot(y, 10).float()
    torch.testing.assert_close(targets[:64], one_hot)
    torch.testing.assert_close(targets[64:64 + k], torch.full((k, 10), 0.1))
    torch.testing.assert_close(targets[64 + k:], one_hot[k:2 * k])


@pytest.mark.parametrize("batch_size", [64, 7])
def test_augmented_epoch_with_pieces_repeats_exactly_and_lowers_the_loss(mnist_train_set, batch_size):
    # 72 images: at batch 64 the last batch of 8 gets one piece of each kind; at batch 7, none.
    x, y = mnist_train_set[0][:72], mnist_train_set[1][:72]

    def run():
        torch.manual_seed(0)
        model = CNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = [m.train(model, optimizer, x, y, batch_size, torch.Generator().manual_seed(0),
                          augment=True) for _ in range(3)]
        return losses, model.state_dict()

    losses, weights = run()
    again, weights_again = run()
    assert losses == again and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    for name in weights:
        torch.testing.assert_close(weights[name], weights_again[name], rtol=0, atol=0)


def test_stroke_width_change_matches_pillow_max_and_min_filters(mnist_test_set):
    x = mnist_test_set[0][:8]
    background = -reading.digit_input.MNIST_MEAN / reading.digit_input.MNIST_STD
    levels = ((x * reading.digit_input.MNIST_STD + reading.digit_input.MNIST_MEAN) * 255).round().clamp(0, 255).to(torch.uint8)

    def pillow(filter_):  # Pillow's 3x3 rank filters, on each digit as an 8-bit image
        out = [torch.from_numpy(np.array(Image.fromarray(d[0].numpy()).filter(filter_))) for d in levels]
        return (torch.stack(out)[:, None].float() / 255 - reading.digit_input.MNIST_MEAN) / reading.digit_input.MNIST_STD

    tol = dict(atol=1 / 255 / reading.digit_input.MNIST_STD, rtol=0)
    ones = torch.ones(len(x))
    torch.testing.assert_close(training.augment.change_stroke_width(x, 0 * ones), x)
    torch.testing.assert_close(training.augment.change_stroke_width(x, ones), pillow(ImageFilter.MaxFilter(3)), **tol)
    torch.testing.assert_close(training.augment.change_stroke_width(x, -ones),
                               (x + pillow(ImageFilter.MinFilter(3))) / 2, **tol)
    amount = torch.linspace(-1, 1, 8)  # each image its own amount, both ways
    a = amount.view(8, 1, 1, 1)
    expected = torch.where(a > 0, x + a * (pillow(ImageFilter.MaxFilter(3)) - x),
                           x + a / 2 * (x - pillow(ImageFilter.MinFilter(3))))
    out = training.augment.change_stroke_width(x, amount)
    torch.testing.assert_close(out, expected, **tol)
    ink_in, ink_out = (x - background).sum((1, 2, 3)), (out - background).sum((1, 2, 3))
    assert (ink_out[:4] < ink_in[:4]).all() and (ink_out[4:] > ink_in[4:]).all()
