"""The number reader's network (trained by number_reader.py) and how its output is decoded.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reading.digit_input import LINE_HEIGHT, LINE_PAD

BLANK = 10  # CTC's "no digit in this column" class, after the ten digits


class NumberReader(nn.Module):
    """A row of digits (N x 1 x 28 x W, ink 1 on 0) -> log-probabilities of the ten digits and
    the blank for each column of 2 pixels (N x W/2 x 11)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.column = nn.Linear(64 * 7, 128)
        self.along = nn.LSTM(128, 64, bidirectional=True, batch_first=True)
        self.out = nn.Linear(128, 11)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        # Height halves again but width does not: a digit 20 pixels tall keeps about 10 columns,
        # room for CTC to put a blank between two equal digits ("77").
        x = F.max_pool2d(F.relu(self.conv2(x)), (2, 1))
        x = F.relu(self.conv3(x))
        n, c, h, w = x.shape
        x = F.relu(self.column(x.permute(0, 3, 1, 2).reshape(n, w, c * h)))
        x, _ = self.along(x)
        return F.log_softmax(self.out(x).float(), dim=-1)


def batch_lines(lines):
    """A list of 28 x W line arrays -> (N x 1 x 28 x W_max tensor padded with background, the
    number of columns of each line)."""
    width = max(line.shape[1] for line in lines)
    width += width % 2
    batch = torch.zeros(len(lines), 1, LINE_HEIGHT + 2 * LINE_PAD, width)
    for i, line in enumerate(lines):
        batch[i, 0, :, :line.shape[1]] = torch.from_numpy(np.asarray(line, np.float32))
    return batch, torch.tensor([line.shape[1] // 2 for line in lines])


def decode(log_probs):
    """Greedy CTC decoding of one line's log-probabilities (T x 11): the digits, and for each the
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


def log_likelihood(log_probs, digits):
    """log P(digits | line) under CTC: summed over every alignment of the digits to the columns.
    -inf when the digits cannot fit (more columns are needed than the line has)."""
    if not digits:
        return float(log_probs[:, BLANK].sum())
    loss = F.ctc_loss(log_probs[:, None].float(), torch.tensor([digits]), torch.tensor([len(log_probs)]),
                      torch.tensor([len(digits)]), blank=BLANK, reduction="sum")
    return -float(loss)
