"""Tests of the number reader (number_reader.py) and of how segment.py and predict.py use it:
CTC decoding and likelihood against hand-worked references, the numbers it learns from, a short
training run, its weights file and command line, and when its reading replaces the cuts'."""
import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from drawing import save, touching_number
from PIL import Image, ImageDraw

import number_reader
import predict
import training.synthetic_numbers
from reading.ctc import BLANK, ctc_log_likelihood, decode
from reading.digit_input import LINE_HEIGHT, LINE_PAD, fit_line, to_line_input
from reading.ink import read_ink, stroke_width
from reading.number_model import NumberReader
from reading.segment import LineReading, digit_groups, split_marks, split_number

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_hot_log_probs(classes, sure=0.97):
    """T x 11 log-probabilities putting `sure` on the given class of each column."""
    probs = np.full((len(classes), 11), (1 - sure) / 10)
    probs[np.arange(len(classes)), classes] = sure
    return torch.tensor(np.log(probs), dtype=torch.float32)


def test_decode_merges_repeats_and_drops_blanks():
    _ = BLANK
    digits, columns = decode(one_hot_log_probs([_, 7, 7, _, 7, 3, 3, 3, _, 0]))
    assert digits == [7, 7, 3, 0]
    assert columns[0] in (1, 2) and columns[1] == 4 and columns[2] in (5, 6, 7) and columns[3] == 9
    assert decode(one_hot_log_probs([_, _, _])) == ([], [])


def test_log_likelihood_sums_every_alignment():
    """Against brute force: every path of classes over 4 columns that collapses to the digits."""
    torch.manual_seed(0)
    log_probs = torch.randn(4, 11).log_softmax(-1)

    def collapse(path):
        out = [c for c, _ in itertools.groupby(path)]
        return [c for c in out if c != BLANK]

    for digits in ([3], [1, 1], [2, 5, 2], []):
        total = sum(math.exp(sum(float(log_probs[t, c]) for t, c in enumerate(path)))
                    for path in itertools.product(range(11), repeat=4) if collapse(path) == digits)
        assert ctc_log_likelihood(log_probs.numpy(), digits) == pytest.approx(math.log(total), abs=1e-4)
    # Five digits cannot fit four columns.
    assert ctc_log_likelihood(log_probs.numpy(), [1, 2, 3, 4, 5]) == -math.inf


def test_the_reader_gives_log_probabilities_per_two_columns():
    x = torch.zeros(3, 1, 28, 60)
    out = NumberReader()(x)
    assert out.shape == (3, 30, 11)
    assert torch.allclose(out.exp().sum(-1), torch.ones(3, 30))


def test_fit_line_scales_ink_to_mnist_height():
    ink = np.zeros((200, 300), np.float32)
    ink[50:150, 20:60] = 1.0  # ink 100 rows tall, 40 wide
    line = fit_line(ink)
    assert line.shape == (LINE_HEIGHT + 2 * LINE_PAD, 8 + 2 * LINE_PAD)
    rows = np.flatnonzero((line > 0.5).any(1))
    assert rows[0] == LINE_PAD and rows[-1] == LINE_PAD + LINE_HEIGHT - 1
    assert not line[:LINE_PAD].any() and not line[:, -LINE_PAD:].any()


def test_numbers_to_learn_from_are_labelled_and_repeatable(mnist_test):
    images, labels = mnist_test
    lines, digits = training.synthetic_numbers.synthetic_numbers(images, labels, 30, seed=5)
    again, same = training.synthetic_numbers.synthetic_numbers(images, labels, 30, seed=5)
    other, _ = training.synthetic_numbers.synthetic_numbers(images, labels, 30, seed=6)
    assert same == digits and all((a == b).all() for a, b in zip(lines, again))
    assert any(a.shape != b.shape or (a != b).any() for a, b in zip(lines, other))
    for line, number in zip(lines, digits):
        assert 1 <= len(number) <= 7 and all(0 <= d <= 9 for d in number)
        assert line.shape[0] == 28 and float(line.max()) > 0.9
        # Wide enough for CTC: more columns of two pixels than digits (blanks between repeats).
        assert line.shape[1] // 2 >= 2 * len(number)
    # Parallel writing gives the same numbers as one process would, chunk by chunk.
    counts = training.synthetic_numbers.CHUNK
    par, par_digits = training.synthetic_numbers.synthetic_numbers_parallel(images, labels, counts + 3, 9, workers=2)
    first, first_digits = training.synthetic_numbers.synthetic_numbers(images, labels, counts, (9, 0))
    assert par_digits[:counts] == first_digits and len(par) == counts + 3
    assert all((a == b).all() for a, b in zip(par[:counts], first))


def test_training_lowers_the_ctc_loss(mnist_test):
    images, labels = mnist_test
    lines, digits = training.synthetic_numbers.synthetic_numbers(images, labels, 400, seed=1)
    torch.manual_seed(0)
    model = NumberReader()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rng = np.random.default_rng(0)
    device = torch.device("cpu")
    losses = [number_reader.train(model, optimizer, scheduler, lines, digits, 32, rng, device, "fp32")
              for _ in range(4)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.8 * losses[0]


def run(script, *args, cwd=REPO):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_command_line_trains_saves_and_predict_uses_the_reader(tmp_path, small_model_weights, mnist_test):
    weights = tmp_path / "reader.pt"
    result = run("number_reader.py", "--numbers", 300, "--epochs", 1, "--test-numbers", 50,
                 "--weights", weights, "--data-dir", os.path.join(REPO, "data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Epoch 1/1: loss" in result.stdout and weights.exists()
    reader = predict.load_reader(weights)
    assert isinstance(reader, NumberReader) and not reader.training
    images, _ = mnist_test
    number = save(touching_number(images, [0, 3, 4]), tmp_path / "touching.png")
    read = run("predict.py", number, "--weights", small_model_weights, "--number", "--reader", weights,
               cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    model = predict.load_model(small_model_weights)
    assert read.stdout.startswith(f"{number}: {predict.predict_number(model, number, reader)} (")
    assert "note:" not in read.stderr
    # Without a reader (none in tmp_path), --number says how to get one.
    alone = run("predict.py", number, "--weights", small_model_weights, "--number", cwd=tmp_path)
    assert alone.returncode == 0 and "python number_reader.py" in alone.stderr


@pytest.mark.parametrize("args, message", [
    (["--numbers", "0"], "--numbers must be at least 1"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--device", "nonsense"], "is not a device name"),
])
def test_command_line_refuses_bad_flags_in_one_sentence(args, message, tmp_path):
    result = run("number_reader.py", *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_reader_weights_errors_are_one_sentence(tmp_path, small_model_weights):
    with pytest.raises(predict.WeightsNotFoundError, match="python number_reader.py"):
        predict.load_reader(tmp_path / "missing.pt")
    with pytest.raises(predict.BadWeightsError, match="NumberReader"):
        predict.load_reader(small_model_weights)
    state = NumberReader().state_dict()
    state["out.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(predict.BadWeightsError, match="not numbers"):
        predict.load_reader(tmp_path / "nan.pt")
    refused = subprocess.run([sys.executable, os.path.join(REPO, "predict.py"), "x.png", "--reader", "r.pt"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "use it with --number" in refused.stderr


# ---------------------------------------------------------------------------------------------
# When segment.py takes the reader's reading, with readers whose answers the tests choose

def fake_reader(digits, margin, calls=None):
    """A read_line giving digits, each 90% sure, and the cuts' (any other) reading `margin` less
    log-likely."""
    def read_line(levels, mask, name):
        if calls is not None:
            calls.append(mask.shape)
        probs = [[0.9 if c == d else 0.1 / 9 for c in range(10)] for d in digits]
        return LineReading(list(digits), probs, lambda other: 0.0 if list(other) == list(digits) else -margin)
    return read_line


@pytest.fixture
def touching_ink(mnist_test):
    images, _ = mnist_test
    ink = read_ink(touching_number(images, [0, 3, 4]))
    assert len(digit_groups(ink)) == 1  # one piece of ink: only cuts can split it
    return ink


def classify_with(model):
    return lambda batch: predict.digit_probabilities(model, batch)


def test_a_clearly_likelier_reading_replaces_the_cuts_and_gets_boxes(small_model, touching_ink):
    classify = classify_with(small_model)
    cut = split_number(touching_ink, classify)
    for digits in ([5, 6, 7], [5, 6, 7, 8], [5, 6]):
        read = split_number(touching_ink, classify, fake_reader(digits, margin=10))
        assert [d.reader_probabilities.index(0.9) for d in read] == digits  # in the reader's order, left to right
        lefts = [d.box[0] for d in read]
        assert lefts == sorted(lefts)
        # The boxes lie within the ink the cuts found, together spanning it.
        assert min(d.box[0] for d in read) == min(d.box[0] for d in cut)
        assert max(d.box[2] for d in read) == max(d.box[2] for d in cut)


class SpellingReader(torch.nn.Module):
    """A stand-in for a trained reader: whatever the row, it is sure of `digits` spread evenly
    along it, blanks between them."""

    def __init__(self, digits):
        super().__init__()
        self.digits = digits
        self.unused = torch.nn.Parameter(torch.zeros(1))  # read_row asks a parameter for the device

    def forward(self, x):
        columns = x.shape[-1] // 2
        classes = [BLANK] * columns
        for k, d in enumerate(self.digits):
            classes[(2 * k + 1) * columns // (2 * len(self.digits))] = d
        return one_hot_log_probs(classes)[None].expand(len(x), -1, -1)


def test_read_digits_gives_the_readers_digits_and_probabilities(small_model, touching_ink):
    readings = predict.read_digits(small_model, touching_ink, SpellingReader([5, 6, 7]))
    assert [r.digit for r in readings] == [5, 6, 7]
    # The column's probabilities over the ten digits alone: 0.97 against 0.003 for each other.
    assert all(r.probabilities[r.digit] == pytest.approx(0.97 / (0.97 + 9 * 0.003), abs=1e-4)
               for r in readings)
    assert all(len(r.probabilities) == 10 and r.image.shape == (1, 28, 28) for r in readings)
    cut = predict.read_digits(small_model, touching_ink)
    assert [r.digit for r in cut] != [5, 6, 7]


def test_a_near_tie_or_a_single_digit_keeps_the_cuts(small_model, touching_ink):
    classify = classify_with(small_model)
    cut = split_number(touching_ink, classify)
    close = split_number(touching_ink, classify, fake_reader([5, 5, 5], margin=1.0))
    assert [d.box for d in close] == [d.box for d in cut] and all(d.reader_probabilities is None for d in close)
    # A 0 drawn wider than tall is sliced, but read as one digit by the cuts; a reader that also
    # sees one digit, however sure, does not overrule the CNN on a single digit.
    img = Image.new("L", (300, 200), 255)
    ImageDraw.Draw(img).ellipse((60, 50, 190, 150), outline=0, width=12)
    ink = read_ink(img)
    alone = split_number(ink, classify)
    assert len(alone) == 1
    calls = []
    kept = split_number(ink, classify, fake_reader([6], margin=10, calls=calls))
    assert calls and len(kept) == 1 and kept[0].reader_probabilities is None


def test_only_groups_too_wide_for_one_digit_ask_the_reader(small_model, mnist_test):
    """Spaced digits: the narrow 1 never reaches the reader; the wider ones do, and a reader that
    sees one digit there leaves the CNN's reading of it."""
    from test_predict import mnist_number
    images, labels = mnist_test
    picks = [int(np.flatnonzero(labels == d)[0]) for d in (0, 1, 2, 3)]
    calls = []
    ink = read_ink(mnist_number(images, picks))
    found = split_marks(ink, classify_with(small_model), fake_reader([9], margin=10, calls=calls))
    # (A digit this small model reads at even odds or less is a mark: still no reader's digit.)
    assert len(found.digits) + len(found.marks) == 4
    assert all(d.reader_probabilities is None for d in found.digits)
    assert 1 <= len(calls) < 4 and all(width > 0.75 * height for height, width in calls)


def test_line_input_widens_a_thin_pen_to_mnist_width():
    """A 2-pixel pen on digits 100 pixels tall would shrink to a fifth of a pixel at the line's
    20 rows; widened first, its strokes are MNIST's 12% of the height (2.4 pixels)."""
    img = Image.new("L", (400, 200), 255)
    draw = ImageDraw.Draw(img)
    draw.line([(60, 50), (120, 50), (80, 150)], fill=0, width=2)  # a 7
    draw.line([(150, 50), (150, 150)], fill=0, width=2)           # a 1
    ink = read_ink(img)
    line = to_line_input(ink.levels, ink.mask)
    assert line.shape[0] == 28 and line.dtype == np.float32
    assert 1.5 <= stroke_width(line > 0.5) <= 4


def test_the_app_reads_with_the_reader_and_refuses_a_missing_one(small_model, mnist_test, tmp_path,
                                                                  small_model_weights):
    import io

    import app
    images, _ = mnist_test
    buf = io.BytesIO()
    touching_number(images, [0, 3, 4]).save(buf, "PNG")
    answer = app.read_picture(small_model, buf.getvalue(), SpellingReader([5, 6, 7]))
    assert answer["number"] == "567" and len(answer["digits"]) == 3
    missing = subprocess.run([sys.executable, os.path.join(REPO, "app.py"), "--weights", small_model_weights,
                              "--reader", tmp_path / "none.pt", "--port", "0"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert missing.returncode == 1 and "No weights file at" in missing.stderr
    assert "python number_reader.py" in missing.stderr and "Traceback" not in missing.stderr
