import reading.digit_input
import reading.models
import training.augment
import training.loop
import training.mnist_data
import training.run_files

"""Tests of the model, the data pipeline and the training script (mnist_cnn_model.py)."""
import builtins
import errno
import functools
import gzip
import hashlib
import http.server
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image, ImageFilter
from torchvision.datasets import MNIST

import mnist_cnn_model as m
from mnist_cnn_model import CNN

RAW_GZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "MNIST", "raw")


def reference_net(model):
    """The architecture exactly as specified (ReLU, then pool), sharing the model's weights."""
    return nn.Sequential(model.conv1, nn.ReLU(), nn.MaxPool2d(2), model.conv2, nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), model.fc1, nn.ReLU(), model.fc2)


def expected_auto_precision(device):
    """What --precision auto should pick, found without mnist_cnn_model: bf16 on a GPU with bf16
    units (compute capability 8.0 and newer) or a CPU whose flags list AMX-BF16 or AVX512-BF16."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp32"
    if device.type == "cpu" and os.path.exists("/proc/cpuinfo"):
        flags = set(open("/proc/cpuinfo").read().split())
        return "bf16" if flags & {"amx_bf16", "avx512_bf16"} else "fp32"
    return "fp32" if device.type == "mps" else None


def restore_signal_handlers():
    """main() installs its own, to stop cleanly on Ctrl-C; give pytest its own back."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_script(repo_root, *args, **kwargs):
    return subprocess.run([sys.executable, os.path.join(repo_root, "mnist_cnn_model.py"), *args],
                          capture_output=True, text=True, cwd=kwargs.pop("cwd", repo_root), timeout=300, **kwargs)


# --- the model ---------------------------------------------------------------------------------

def test_architecture_and_parameter_count():
    model = CNN()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "conv1.weight": (32, 1, 3, 3), "conv1.bias": (32,),
        "conv2.weight": (64, 32, 3, 3), "conv2.bias": (64,),
        "fc1.weight": (128, 64 * 7 * 7), "fc1.bias": (128,),
        "fc2.weight": (10, 128), "fc2.bias": (10,),
    }
    assert sum(p.numel() for p in model.parameters()) == 421_642


def test_output_shape_for_a_batch():
    assert CNN()(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_pooling_before_relu_matches_the_specified_order_in_values_and_gradients():
    torch.manual_seed(0)
    model, x = CNN(), torch.randn(16, 1, 28, 28)
    ours, ref = model(x), reference_net(model)(x)
    torch.testing.assert_close(ours, ref)
    grads = [torch.autograd.grad(out.square().sum(), list(model.parameters())) for out in (ours, ref)]
    for g_ours, g_ref in zip(*grads):
        torch.testing.assert_close(g_ours, g_ref)


def test_importing_the_module_does_no_work(tmp_path, repo_root):
    out = subprocess.run([sys.executable, "-c", "import mnist_cnn_model"], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": repo_root}, timeout=120)
    assert out.returncode == 0 and out.stdout == "" and list(tmp_path.iterdir()) == []


# --- data --------------------------------------------------------------------------------------

def test_embedded_data_is_mnist(mnist_train_set, mnist_test_set):
    (train_x, train_y), (test_x, test_y) = mnist_train_set, mnist_test_set
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    # Facts published with MNIST, independent of our code: first labels and class counts.
    assert train_y[:5].tolist() == [5, 0, 4, 1, 9] and test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Normalised with the training set's own statistics: mean 0, std 1.
    assert abs(train_x.mean().item()) < 1e-3 and abs(train_x.std().item() - 1) < 1e-3



def test_our_idx_reader_gives_torchvision_s_mnist_exactly(repo_root):
    for train in (True, False):
        ours = training.mnist_data.load_mnist(os.path.join(repo_root, "data"), train=train)
        theirs = MNIST(os.path.join(repo_root, "data"), train=train, download=False)
        assert torch.equal(ours[1], theirs.targets) and ours[1].dtype == theirs.targets.dtype
        assert torch.equal(ours[0], (theirs.data.unsqueeze(1).float() / 255 - reading.digit_input.MNIST_MEAN) / reading.digit_input.MNIST_STD)

def copy_embedded(dest):
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in training.mnist_data.MNIST_FILES:
        shutil.copy(os.path.join(RAW_GZ, name + ".gz"), raw)
    return raw


def test_embedded_copy_is_unpacked_and_verified(tmp_path):
    raw = copy_embedded(tmp_path)
    training.mnist_data.prepare_mnist(str(tmp_path))
    for name, sha in training.mnist_data.MNIST_FILES.items():
        with gzip.open(raw / (name + ".gz"), "rb") as f:
            assert (raw / name).read_bytes() == f.read()
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == sha


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_corrupted_copy_is_refused_with_a_clear_message(tmp_path, damage):
    raw = copy_embedded(tmp_path)
    victim = raw / "t10k-images-idx3-ubyte.gz"
    data = bytearray(victim.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))
    with pytest.raises(training.mnist_data.DataError, match="t10k-images-idx3-ubyte.gz is corrupted"):
        training.mnist_data.prepare_mnist(str(tmp_path))
    assert not (raw / "t10k-images-idx3-ubyte").exists()
    assert not list(raw.glob("*.tmp"))


def test_a_full_disk_while_unpacking_is_not_called_corruption(tmp_path, disk_full_at):
    raw = copy_embedded(tmp_path)
    disk_full_at("t10k-images-idx3-ubyte")
    with pytest.raises(OSError) as error:
        training.mnist_data.prepare_mnist(str(tmp_path))
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(raw / "t10k-images-idx3-ubyte")
    assert not list(raw.glob("*.tmp")) and not (raw / "t10k-images-idx3-ubyte").exists()


def test_a_damaged_unpacked_file_is_replaced_from_the_embedded_copy(tmp_path):
    raw = copy_embedded(tmp_path)
    training.mnist_data.prepare_mnist(str(tmp_path))
    (raw / "train-labels-idx1-ubyte").write_bytes(b"garbage")
    training.mnist_data.prepare_mnist(str(tmp_path))
    assert reading.models.sha256_of(raw / "train-labels-idx1-ubyte") == training.mnist_data.MNIST_FILES["train-labels-idx1-ubyte"]


@pytest.fixture
def local_mirror(monkeypatch):
    """An HTTP server on loopback serving the embedded .gz files as torchvision's only mirror."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=RAW_GZ)
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    md5 = {f: hashlib.md5(open(os.path.join(RAW_GZ, f), "rb").read()).hexdigest() for f, _ in MNIST.resources}
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    monkeypatch.setattr(MNIST, "resources", [(f, md5[f]) for f, _ in MNIST.resources])
    yield server
    server.shutdown()


def test_missing_data_is_downloaded_through_torchvision(tmp_path, local_mirror):
    training.mnist_data.prepare_mnist(str(tmp_path))
    for name, sha in training.mnist_data.MNIST_FILES.items():
        assert reading.models.sha256_of(tmp_path / "MNIST" / "raw" / name) == sha


def test_no_data_and_no_network_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # the discard port: nothing listens
    with pytest.raises(SystemExit) as exit_info:
        m.main(["--data-dir", str(tmp_path / "nodata"), "--run-dir", str(tmp_path / "run"),
                "--weights", str(tmp_path / "w.pt")])
    message = str(exit_info.value.code)
    assert message.startswith("Error: MNIST file") and "could not be downloaded" in message
    assert "\n" not in message and not (tmp_path / "w.pt").exists()


# --- training ----------------------------------------------------------------------------------

def test_short_training_lowers_the_loss_and_beats_chance_by_far(mnist_train_set, mnist_test_set):
    torch.manual_seed(0)
    model = CNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = mnist_train_set[0][:3000], mnist_train_set[1][:3000]
    test_x, test_y = mnist_test_set[0][:2000], mnist_test_set[1][:2000]
    loss_before, _, _ = m.evaluate(model, test_x, test_y)
    loss = m.train_epoch(model, optimizer, x, y, 64, torch.Generator().manual_seed(0))
    loss_after, correct, predictions = m.evaluate(model, test_x, test_y)
    assert loss_before > 2.0 and loss_after < 0.6 and loss < loss_before
    assert correct / 2000 > 0.85  # chance is 0.10
    assert predictions.shape == (2000,)


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
        losses = [m.train_epoch(model, optimizer, x, y, batch_size, torch.Generator().manual_seed(0),
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


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    training.run_files.atomic_save({"a": torch.ones(3)}, path)

    def failing_save(obj, f):  # atomic_save hands torch.save an open file
        f.write(b"half a fi")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError) as error:
        training.run_files.atomic_save({"a": torch.zeros(3)}, path)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


class CountingProgress:
    def __init__(self):
        self.images = 0

    def update(self, n):
        self.images += n

    def set_postfix(self, **kwargs):
        pass


def test_a_diverging_epoch_stops_within_50_batches(mnist_train_set):
    torch.manual_seed(0)
    model = CNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e20)  # the weights overflow after one step
    progress = CountingProgress()
    x, y = mnist_train_set[0][:64 * 200], mnist_train_set[1][:64 * 200]
    loss = m.train_epoch(model, optimizer, x, y, 64, torch.Generator().manual_seed(0), progress=progress)
    assert not math.isfinite(loss)
    assert progress.images == 64 * 50  # stopped at the first look, not after 200 batches


def test_second_stop_request_exits_at_once(monkeypatch):
    stop = training.loop.StopRequest()
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    stop.handle(signal.SIGINT, None)
    assert stop() and exits == []
    stop.handle(signal.SIGINT, None)
    assert exits == [130]


# --- precision ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, native", [
    ({"avx2": True, "fma3": True}, False),
    ({"avx512_f": True, "avx512_bw": True, "avx512_bf16": False}, False),  # AVX-512 alone only emulates bf16
    ({"avx512_f": True, "avx512_bf16": True}, True),
    ({"amx_tile": True, "amx_bf16": True}, True),
])
def test_auto_precision_picks_bf16_only_on_a_cpu_that_runs_it_natively(monkeypatch, flags, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert training.loop.native_bf16(torch.device("cpu")) is native


def test_auto_precision_on_this_machine():
    cpu = torch.device("cpu")
    if expected_auto_precision(cpu) is None:
        pytest.skip("no /proc/cpuinfo to check against")
    assert training.loop.native_bf16(cpu) == (expected_auto_precision(cpu) == "bf16")


def test_auto_precision_reads_proc_cpuinfo_where_torch_does_not_tell(monkeypatch):
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    real_open = builtins.open
    for line, native in [("flags\t: fpu avx2 avx512f avx512_bf16 sse\n", True),
                         ("flags\t: fpu avx2 amx_tile amx_bf16\n", True), ("flags\t: fpu avx2 fma\n", False)]:
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: io.StringIO(line) if f == "/proc/cpuinfo"
                            else real_open(f, *a, **k))
        assert training.loop.native_bf16(torch.device("cpu")) is native


def test_resume_keeps_the_precision_the_run_started_with(tmp_path):
    config = dict(m.TRAINING_DEFAULTS, precision="bf16", weights=str(tmp_path / "w.pt"))
    torch.save({"config": config}, tmp_path / "checkpoint.pt")
    assert m.parse_args(["--resume", str(tmp_path), "--device", "cpu"])[0]["precision"] == "bf16"
    del config["precision"]  # a checkpoint from before --precision: those runs were fp32
    torch.save({"config": config}, tmp_path / "checkpoint.pt")
    assert m.parse_args(["--resume", str(tmp_path), "--device", "cpu"])[0]["precision"] == "fp32"


def bf16_run(images, labels, seed):
    torch.manual_seed(seed)
    model = CNN().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss = m.train_epoch(model, optimizer, images, labels, 64, torch.Generator().manual_seed(seed), precision="bf16")
    return model, optimizer, loss


def test_bf16_training_lowers_the_loss_keeps_fp32_weights_and_repeats_exactly(mnist_train_set, mnist_test_set):
    """bf16 is emulated, and slow, on a CPU without AMX or AVX512-BF16: a small subset."""
    x, y = mnist_train_set[0][:640], mnist_train_set[1][:640]
    test_x, test_y = mnist_test_set[0][:500], mnist_test_set[1][:500]
    torch.manual_seed(2)
    loss_before, _, _ = m.evaluate(CNN().to(memory_format=torch.channels_last), test_x, test_y, precision="bf16")
    model, optimizer, loss = bf16_run(x, y, seed=2)
    loss_after, correct, _ = m.evaluate(model, test_x, test_y, precision="bf16")
    assert loss_before > 2.0 and loss_after < loss_before - 0.5 and correct / 500 > 0.5
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for state in optimizer.state.values() for k, v in state.items() if k != "step")

    again, _, loss_again = bf16_run(x, y, seed=2)
    assert loss_again == loss
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # and bf16 really ran: fp32 from the same start ends elsewhere
    torch.manual_seed(2)
    fp32 = CNN().to(memory_format=torch.channels_last)
    m.train_epoch(fp32, torch.optim.Adam(fp32.parameters(), lr=1e-3, fused=True), x, y, 64,
                  torch.Generator().manual_seed(2))
    assert not torch.equal(fp32.conv2.weight, model.conv2.weight)


# --- the command line --------------------------------------------------------------------------

def test_command_line_end_to_end(tmp_path, repo_root, mnist_test_set):
    run_dir, weights = tmp_path / "run", tmp_path / "out" / "w.pt"
    (tmp_path / "out").mkdir()
    out = run_script(repo_root, "--limit", "2000", "--epochs", "2", "--run-dir", str(run_dir),
                     "--weights", str(weights))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    device = training.loop.pick_device()
    precision = expected_auto_precision(device) or ("bf16" if "bf16" in lines[0] else "fp32")
    assert lines[0] == f"Training on {device} in {'bf16 mixed precision' if precision == 'bf16' else 'fp32'}"
    assert re.fullmatch(r"Epoch 1/2: loss \d+\.\d{4}, test loss .*", lines[1])
    match = re.fullmatch(r"Test accuracy: (\d+\.\d\d)% \((\d+)/10000\)", lines[-1])
    assert match and float(match[1]) > 80 and int(match[2]) == round(float(match[1]) * 100)

    state = torch.load(weights, weights_only=True)
    CNN().load_state_dict(state)  # a plain state_dict of this architecture
    info = json.loads(weights.with_suffix(".json").read_text())
    assert info["config"]["limit"] == 2000 and info["test_accuracy"] == float(match[1])
    assert info["data_sha256"] == training.mnist_data.MNIST_FILES and info["torch"] == torch.__version__
    assert info["precision"] == info["config"]["precision"] == precision

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["finished"] and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["precision"] == metrics["config"]["precision"] == precision
    assert metrics["correct"] == int(match[2]) and sum(map(sum, metrics["confusion_matrix"])) == 10000
    assert set(metrics["per_class_accuracy"]) == {str(d) for d in range(10)}
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["scheduler"]["_last_lr"][0] < 1e-6  # the cosine schedule ran down to zero
    for figure in ("curves.png", "confusion_matrix.png", "mistakes.png"):
        assert (run_dir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Then predict.py reads the first test digit (a 7), written dark on light like a user's own.
    from PIL import Image
    pixels = (mnist_test_set[0][0, 0] * reading.digit_input.MNIST_STD + reading.digit_input.MNIST_MEAN) * 255
    Image.fromarray(255 - pixels.round().byte().numpy()).resize((140, 140)).save(tmp_path / "seven.png")
    out = subprocess.run([sys.executable, os.path.join(repo_root, "predict.py"), str(tmp_path / "seven.png"),
                          "--weights", str(weights)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'seven.png'))}: 7 \(\d+\.\d%\)", out.stdout.strip())

    # One byte damaged mid-file still loads in torch; the SHA-256 recorded beside it catches it.
    assert info["weights_sha256"] == reading.models.sha256_of(weights)
    damaged = bytearray(weights.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    out = subprocess.run([sys.executable, os.path.join(repo_root, "predict.py"), str(tmp_path / "seven.png"),
                          "--weights", str(weights)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "does not match the SHA-256" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_the_same_seed_gives_identical_weights_and_metrics(tmp_path, repo_root):
    results = []
    for name in ("a", "b"):
        m.main(["--limit", "1500", "--epochs", "2", "--seed", "7", "--device", "cpu", "--run-dir", str(tmp_path / name),
                "--weights", str(tmp_path / f"{name}.pt")])
        restore_signal_handlers()
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        for epoch in metrics["epochs"]:
            del epoch["seconds"]
        del metrics["train_seconds"], metrics["config"]["weights"]
        results.append((torch.load(tmp_path / f"{name}.pt", weights_only=True), metrics))
    (weights_a, metrics_a), (weights_b, metrics_b) = results
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert metrics_a == metrics_b


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, repo_root):
    common = ["--limit", "3000", "--epochs", "2", "--seed", "3", "--device", "cpu"]
    ref = run_script(repo_root, *common, "--run-dir", str(tmp_path / "ref"), "--weights", str(tmp_path / "ref.pt"))
    assert ref.returncode == 0, ref.stderr

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"the user's previous weights")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(repo_root, "mnist_cnn_model.py"), *common,
                             "--run-dir", str(run_dir), "--weights", str(weights)],
                            cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "metrics.json").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"--resume {run_dir}" in stderr and "Traceback" not in stderr
    assert weights.read_bytes() == b"the user's previous weights"  # nothing half-trained replaced it

    resumed = run_script(repo_root, "--resume", str(run_dir), "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("Resuming")
    a, b = torch.load(tmp_path / "ref.pt", weights_only=True), torch.load(weights, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.stdout.splitlines()[-1] == ref.stdout.splitlines()[-1]


def test_a_diverging_run_stops_with_one_sentence_and_writes_no_weights(tmp_path, repo_root):
    run_dir, weights = tmp_path / "run", tmp_path / "w.pt"
    weights.write_bytes(b"the user's previous weights")
    out = run_script(repo_root, "--lr", "1e20", "--limit", "640", "--epochs", "2", "--seed", "4", "--device", "cpu",
                     "--run-dir", str(run_dir), "--weights", str(weights))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"Error: training diverged in epoch 1 (the loss became NaN or infinite), so no weights were written and "
        f"{run_dir}/checkpoint.pt still holds the run as it was before epoch 1; start again with a lower --lr than 1e+20.")
    assert "Epoch 1/2" not in out.stdout
    assert weights.read_bytes() == b"the user's previous weights" and not (tmp_path / "w.json").exists()
    # The checkpoint is the last good state: the untrained model of seed 4, before any step.
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["history"] == []
    torch.manual_seed(4)
    initial = CNN().state_dict()
    assert all(torch.equal(checkpoint["model"][k], initial[k]) for k in initial)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt"]


class NearlyFullDisk(io.FileIO):
    """A file on a disk with `room` bytes left: the write that reaches the end fails with ENOSPC
    after writing what fits, as on a real full disk."""
    room = 1000

    def write(self, data):
        n = min(len(data), self.room)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return super().write(bytes(data[:n]))


@pytest.fixture
def disk_full_at(monkeypatch):
    """disk_full_at(name, nth): the nth time a file called name is written (through its temporary
    name), the disk is nearly full. Every writer of the run (torch.save, json, matplotlib) opens
    its files with builtins.open."""
    real_open = builtins.open

    def install(name, nth=1):
        seen = []

        def fake_open(file, mode="r", *args, **kwargs):
            base = os.path.basename(file) if isinstance(file, (str, os.PathLike)) else ""
            if "w" in mode and base.startswith(name + ".") and base.endswith(".tmp"):
                seen.append(base)
                if len(seen) == nth:
                    buffered = io.BufferedWriter(NearlyFullDisk(file, "w"))
                    return buffered if "b" in mode else io.TextIOWrapper(buffered, encoding=kwargs.get("encoding"))
            return real_open(file, mode, *args, **kwargs)
        monkeypatch.setattr(builtins, "open", fake_open)
        return seen
    yield install
    restore_signal_handlers()


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory, repo_root):
    """The weights of an uninterrupted run with DISK_FULL_FLAGS."""
    tmp = tmp_path_factory.mktemp("reference")
    m.main([*DISK_FULL_FLAGS, "--data-dir", os.path.join(repo_root, "data"), "--run-dir", str(tmp / "run"),
            "--weights", str(tmp / "w.pt")])
    restore_signal_handlers()
    return torch.load(tmp / "w.pt", weights_only=True)


DISK_FULL_FLAGS = ["--limit", "640", "--epochs", "1", "--seed", "5", "--device", "cpu", "--precision", "fp32"]


@pytest.mark.parametrize("name, nth, where", [
    ("checkpoint.pt", 1, "run"),  # the first one, before training: nothing to resume yet
    ("checkpoint.pt", 2, "run"),  # after epoch 1
    ("metrics.json", 1, "run"),
    ("curves.png", 1, "run"),
    ("w.pt", 1, "out"),
    ("w.json", 1, "out"),
])
def test_a_full_disk_is_one_sentence_leaves_nothing_half_written_and_the_run_continues(
        tmp_path, repo_root, monkeypatch, disk_full_at, reference_weights, name, nth, where):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    weights = out / "w.pt"
    weights.write_bytes(b"the user's previous weights")
    flags = [*DISK_FULL_FLAGS, "--data-dir", os.path.join(repo_root, "data"), "--run-dir", str(run_dir),
             "--weights", str(weights)]
    seen = disk_full_at(name, nth)
    with pytest.raises(SystemExit) as exit_info:
        m.main(flags)
    assert len(seen) == nth
    message = exit_info.value.code  # a string: Python prints it and exits with status 1
    resumable = (run_dir / "checkpoint.pt").exists()
    assert resumable == (name != "checkpoint.pt" or nth > 1)
    then = f"continue with: python mnist_cnn_model.py --resume {run_dir}" if resumable else "run the same command again"
    assert message == (f"Error: no space left on device in {tmp_path / where}/ while saving {name} "
                       f"(the files already there are intact); free some space, then {then}.")
    assert not list(tmp_path.rglob("*.tmp"))
    if name == "w.json":  # the weights went in just before
        assert torch.equal(torch.load(weights, weights_only=True)["fc2.bias"], reference_weights["fc2.bias"])
    else:
        assert weights.read_bytes() == b"the user's previous weights"
    if resumable:
        checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert len(checkpoint["history"]) == (0 if name == "checkpoint.pt" else 1)

    # Doing what the sentence says, once there is room again, ends as an uninterrupted run would.
    monkeypatch.undo()
    m.main(["--resume", str(run_dir)] if resumable else flags)
    state = torch.load(weights, weights_only=True)
    assert all(torch.equal(state[k], reference_weights[k]) for k in reference_weights)
    assert json.loads((out / "w.json").read_text())["precision"] == "fp32"
    assert json.loads((run_dir / "metrics.json").read_text())["finished"]


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--lr", "0"], "--lr must be positive"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--device", "tpu"], "is not a device name"),
    (["--weights", "{file}/w.pt"], "cannot write to"),
    (["--resume", "{tmp}/nothing"], "no checkpoint.pt there"),
    (["--epochs", "ten"], "invalid int value"),
    (["--schedule", "step"], "invalid choice: 'step'"),
    (["--resume", "{tmp}", "--lr", "0.01"], "drop --lr"),
    (["--precision", "fp16"], "invalid choice: 'fp16'"),
    (["--resume", "{tmp}", "--precision", "fp32"], "drop --precision"),
])
def test_bad_flags_get_one_line_before_any_work(tmp_path, repo_root, flags, message):
    (tmp_path / "file").write_text("a file, not a folder")
    flags = [f.format(file=tmp_path / "file", tmp=tmp_path) for f in flags]
    run_dir = [] if "--resume" in flags else ["--run-dir", str(tmp_path / "run")]
    out = run_script(repo_root, *flags, *run_dir, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_cuda_is_a_clear_error(tmp_path, repo_root):
    out = run_script(repo_root, "--device", "cuda", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2 and "--device cuda is not available on this machine" in out.stderr


@pytest.mark.slow
def test_a_bf16_run_records_its_precision_and_resume_keeps_it(tmp_path, repo_root):
    """About a minute on a CPU without AMX or AVX512-BF16, where bf16 is emulated: evaluating the
    10,000 test digits alone takes 20 s there."""
    run_dir, weights = tmp_path / "run", tmp_path / "w.pt"
    out = run_script(repo_root, "--precision", "bf16", "--limit", "320", "--epochs", "1", "--device", "cpu",
                     "--run-dir", str(run_dir), "--weights", str(weights))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "Training on cpu in bf16 mixed precision"
    metrics, info = json.loads((run_dir / "metrics.json").read_text()), json.loads(weights.with_suffix(".json").read_text())
    assert metrics["precision"] == metrics["config"]["precision"] == info["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in torch.load(weights, weights_only=True).values())

    resumed = run_script(repo_root, "--resume", str(run_dir), "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.splitlines()
    assert lines[0].startswith("Resuming") and lines[1] == "Training on cpu in bf16 mixed precision"
    assert lines[-1] == out.stdout.splitlines()[-1]  # the same bf16 evaluation of the same weights


@pytest.mark.slow
def test_full_default_recipe_reaches_99_percent(tmp_path, repo_root):
    """The documented recipe, unchanged: 10 epochs, Adam 0.001, batch 64 (about 2 minutes on 2 cores)."""
    out = run_script(repo_root, "--run-dir", str(tmp_path / "run"), "--weights", str(tmp_path / "w.pt"),
                     "--min-accuracy", "99.0", "--device", "cpu")
    print(out.stdout)
    assert out.returncode == 0, out.stderr
    assert float(re.search(r"Test accuracy: (\d+\.\d\d)%", out.stdout)[1]) >= 99.0
