"""The number reader's rows in NumPy: the batch it reads, greedy CTC decoding of its output, the
likelihood of a list of digits under it, and what it makes of a row of ink (read_row). Neither
torch nor ONNX Runtime is needed here: the reader itself is behind reading/runtime.py.
"""
import numpy as np

from reading.digit_input import to_line_input
from reading.runtime import as_number_reader
from reading.segment import LineReading

# CTC's "no digit in this column": the number reader's last class, after the ten digits.
BLANK = 10


def read_row(reader, levels, mask, name="the image"):
    """The number reader's LineReading of the ink in mask: its digits, the ten probabilities of
    each (the reader's, at the column where it is likeliest, over the digits alone), and the
    log-likelihood of any other list of digits. reader: a loaded number reader of either kind
    (reading.runtime.load_reader)."""
    batch, columns = pad_rows([to_line_input(levels, mask, name)])
    log_probs = as_number_reader(reader).log_probabilities(batch)[0, :columns[0]]
    digits, at = decode(log_probs)
    probabilities = [_softmax(log_probs[t, :10]).tolist() for t in at]
    return LineReading(digits, probabilities, lambda other: ctc_log_likelihood(log_probs, other))


def _softmax(scores):
    e = np.exp(scores - scores.max())
    return e / e.sum()


def pad_rows(rows):
    """Rows of digits (28 x W arrays) as one N x 1 x 28 x W_max float32 batch, padded on the right
    with background to an even width, and the number of the reader's columns of each row."""
    width = max(row.shape[1] for row in rows)
    batch = np.zeros((len(rows), 1, 28, width + width % 2), np.float32)
    for i, row in enumerate(rows):
        batch[i, 0, :, :row.shape[1]] = row
    return batch, [row.shape[1] // 2 for row in rows]


def decode(log_probs):
    """Greedy CTC decoding of one row's log-probabilities (T x 11): the digits, and for each the
    column where it is likeliest. Each run of one class is one symbol, blanks are dropped, so
    "7 7 _ 7" is 77."""
    best = log_probs.argmax(-1).tolist()
    digits, columns = [], []
    previous = BLANK
    for t, c in enumerate(best):
        if c != BLANK and c != previous:
            digits.append(c)
            columns.append(t)
        elif c != BLANK and log_probs[t, c] > log_probs[columns[-1], c]:
            columns[-1] = t
        previous = c
    return digits, columns


def ctc_log_likelihood(log_probs, digits):
    """log P(digits | row) under CTC, for one row's T x 11 log-probabilities: the sum over every
    alignment of the digits to the columns (the forward algorithm), -inf when they cannot fit."""
    log_probs = np.asarray(log_probs, np.float64)
    if not digits:
        return float(log_probs[:, BLANK].sum())
    # The digits with a blank before, between and after them; an alignment walks this sequence,
    # staying, stepping on, or skipping a blank that stands between two different digits.
    labels = np.full(2 * len(digits) + 1, BLANK)
    labels[1::2] = digits
    skips = np.zeros(len(labels), bool)
    skips[2:] = (labels[2:] != BLANK) & (labels[2:] != labels[:-2])
    alpha = np.full(len(labels), -np.inf)
    alpha[:2] = log_probs[0, labels[:2]]
    for t in range(1, len(log_probs)):
        stepped = np.concatenate([[-np.inf], alpha[:-1]])
        skipped = np.where(skips, np.concatenate([[-np.inf, -np.inf], alpha[:-2]]), -np.inf)
        alpha = np.logaddexp(np.logaddexp(alpha, stepped), skipped) + log_probs[t, labels]
    return float(np.logaddexp(alpha[-1], alpha[-2]))
