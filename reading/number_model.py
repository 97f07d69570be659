"""The number reader's network (trained by number_reader.py). Reading its output needs no torch:
that is reading/ctc.py.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from reading.ctc import pad_rows


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
    number of columns of each line): reading.ctc.pad_rows's batch, for training."""
    batch, columns = pad_rows(lines)
    return torch.from_numpy(batch), torch.tensor(columns)
