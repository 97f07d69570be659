"""Tests of the CNN and its training script (mnist_cnn_model.py): the model, an epoch, the
precision, the command line."""
import builtins
import io
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from train_support import ROOT, restore_signal_handlers, run_script

import mnist_cnn_model as m
import reading.digit_input
import reading.models
import training.loop
import training.mnist_data
from mnist_cnn_model import CNN


def reference_net(model):
    """The architecture exactly as specified (ReLU, then pool), sharing the model's weights."""
    return nn.Sequential(model.conv1, nn.ReLU(), nn.MaxPool2d(2), model.conv2, nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), model.fc1, nn.ReLU(), model.fc2)


def lscpu_flags():
    """The CPU's flags as lscpu lists them: a reference that shares no code with native_bf16."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        pytest.skip("no lscpu to check against")
    line = next((line for line in out.splitlines() if line.startswith("Flags:")), None)
    if line is None:
        pytest.skip("lscpu lists no flags here")
    return set(line.split()[1:])


def expected_auto_precision(device):
    """What --precision auto should pick: bf16 on a GPU with bf16 units (compute capability 8.0
    and newer) or a CPU whose flags list AMX-BF16 or AVX512-BF16, else fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp32"
    if device.type == "cpu":
        return "bf16" if lscpu_flags() & {"amx_bf16", "avx512_bf16"} else "fp32"
    return "fp32"


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


def test_importing_the_module_brings_no_training_machinery(tmp_path, repo_root):
    # predict.py and app.py import it for CNN alone.
    code = "import json, sys, mnist_cnn_model; print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": repo_root}, timeout=120)
    loaded = set(json.loads(out.stdout))
    assert "torch" in loaded and not loaded & {"training", "matplotlib", "scipy", "number_reader"}


def test_short_training_lowers_the_loss_and_beats_chance_by_far(mnist_train_set, mnist_test_set):
    torch.manual_seed(0)
    model = CNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = mnist_train_set[0][:3000], mnist_train_set[1][:3000]
    test_x, test_y = mnist_test_set[0][:2000], mnist_test_set[1][:2000]
    loss_before, _, _ = m.test(model, test_x, test_y)
    loss = m.train(model, optimizer, x, y, 64, torch.Generator().manual_seed(0))
    loss_after, correct, predictions = m.test(model, test_x, test_y)
    assert loss_before > 2.0 and loss_after < 0.6 and loss < loss_before
    assert correct / 2000 > 0.85  # chance is 0.10
    assert predictions.shape == (2000,)


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
    loss = m.train(model, optimizer, x, y, 64, torch.Generator().manual_seed(0), progress=progress)
    assert not math.isfinite(loss)
    assert progress.images == 64 * 50  # stopped at the first look, not after 200 batches


@pytest.mark.parametrize("flags, native", [
    ({"avx2": True, "fma3": True}, False),
    ({"avx512_f": True, "avx512_bw": True, "avx512_bf16": False}, False),  # AVX-512 alone only emulates bf16
    ({"avx512_f": True, "avx512_bf16": True}, True),
    ({"amx_tile": True, "amx_bf16": True}, True),
])
def test_auto_precision_picks_bf16_only_on_a_cpu_that_runs_it_natively(monkeypatch, flags, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert training.loop.native_bf16(torch.device("cpu")) is native


def test_auto_precision_on_this_machine_agrees_with_lscpu():
    cpu = torch.device("cpu")
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


def bf16_run(images, labels, seed):
    torch.manual_seed(seed)
    model = CNN().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss = m.train(model, optimizer, images, labels, 64, torch.Generator().manual_seed(seed), precision="bf16")
    return model, optimizer, loss


def test_bf16_training_lowers_the_loss_keeps_fp32_weights_and_repeats_exactly(mnist_train_set, mnist_test_set):
    """bf16 is emulated, and slow, on a CPU without AMX or AVX512-BF16: a small subset."""
    x, y = mnist_train_set[0][:640], mnist_train_set[1][:640]
    test_x, test_y = mnist_test_set[0][:500], mnist_test_set[1][:500]
    torch.manual_seed(2)
    loss_before, _, _ = m.test(CNN().to(memory_format=torch.channels_last), test_x, test_y, precision="bf16")
    model, optimizer, loss = bf16_run(x, y, seed=2)
    loss_after, correct, _ = m.test(model, test_x, test_y, precision="bf16")
    assert loss_before > 2.0 and loss_after < loss_before - 0.5 and correct / 500 > 0.5
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for state in optimizer.state.values() for k, v in state.items() if k != "step")

    again, _, loss_again = bf16_run(x, y, seed=2)
    assert loss_again == loss
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # and bf16 really ran: fp32 from the same start ends elsewhere
    torch.manual_seed(2)
    fp32 = CNN().to(memory_format=torch.channels_last)
    m.train(fp32, torch.optim.Adam(fp32.parameters(), lr=1e-3, fused=True), x, y, 64,
                  torch.Generator().manual_seed(2))
    assert not torch.equal(fp32.conv2.weight, model.conv2.weight)


def test_command_line_end_to_end(tmp_path, repo_root, mnist_test_set):
    run_dir, weights = tmp_path / "run", tmp_path / "out" / "w.pt"
    (tmp_path / "out").mkdir()
    out = run_script(repo_root, "--limit", "2000", "--epochs", "2", "--run-dir", str(run_dir),
                     "--weights", str(weights))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    device = torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    precision = expected_auto_precision(device)
    assert lines[0] == f"Training on {device} in {'bf16 mixed precision' if precision == 'bf16' else 'fp32'}"
    # No more non-digits than one epoch uses: a quarter of the 2000 digits.
    assert re.fullmatch(r"Drew 500 pictures that are not digits in \d+s", lines[1])
    assert re.fullmatch(r"Epoch 1/2: loss \d+\.\d{4}, test loss .*", lines[2])
    calibrated = re.fullmatch(r"Calibrated on 5000 held-out training digits: temperature (\d\.\d{3})", lines[-3])
    match = re.fullmatch(r"Test accuracy: (\d+\.\d\d)% \((\d+)/10000\)", lines[-1])
    assert match and float(match[1]) > 80 and int(match[2]) == round(float(match[1]) * 100)

    state = torch.load(weights, weights_only=True)
    CNN().load_state_dict(state)  # a plain state_dict of this architecture
    info = json.loads(weights.with_suffix(".json").read_text())
    assert info["config"]["limit"] == 2000 and info["test_accuracy"] == float(match[1])
    assert calibrated and f"{info['temperature']:.3f}" == calibrated[1]
    assert reading.models.load_model(weights).temperature == info["temperature"]
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
    (["--nondigits", "-1"], "--nondigits must be at least 0"),
    (["--validation", "-5"], "--validation must be at least 0"),
    (["--resume", "{tmp}", "--textbook"], "drop --textbook"),
])
def test_bad_flags_get_one_line_before_any_work(tmp_path, repo_root, flags, message):
    (tmp_path / "file").write_text("a file, not a folder")
    flags = [f.format(file=tmp_path / "file", tmp=tmp_path) for f in flags]
    run_dir = [] if "--resume" in flags else ["--run-dir", str(tmp_path / "run")]
    out = run_script(repo_root, *flags, *run_dir, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_textbook_is_the_classic_recipe_and_the_default_adds_to_it(tmp_path):
    default = m.parse_args(["--run-dir", str(tmp_path / "a")]).config
    textbook = m.parse_args(["--textbook", "--run-dir", str(tmp_path / "b")]).config
    assert (default["augment"], default["validation"]) == (True, 5000) and default["nondigits"] > 0
    assert (textbook["augment"], textbook["nondigits"], textbook["validation"]) == (False, 0, 0)
    assert {k: v for k, v in textbook.items() if k not in m.TEXTBOOK} == {k: v for k, v in default.items()
                                                                         if k not in m.TEXTBOOK}
    # Flags given beside --textbook still apply.
    assert m.parse_args(["--textbook", "--augment", "--run-dir", str(tmp_path / "c")]).config["augment"]


def test_the_validation_digits_are_held_out_of_training(tmp_path):
    from training.cnn_run import load_data
    config = {"data_dir": os.path.join(ROOT, "data"), "validation": 5000, "limit": None}
    (images, labels), (held, held_labels), (test_images, _) = load_data(config, "cpu")
    everything, _ = training.mnist_data.load_mnist(config["data_dir"], train=True)
    assert len(images) == 55000 and len(held) == len(held_labels) == 5000 and len(test_images) == 10000
    assert torch.equal(torch.cat([images, held]), everything)
    limited, _ = load_data({**config, "limit": 100}, "cpu")[0]
    assert torch.equal(limited, everything[:100])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_cuda_is_a_clear_error(tmp_path, repo_root):
    out = run_script(repo_root, "--device", "cuda", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2 and "--device cuda is not available on this machine" in out.stderr


@pytest.mark.slow
def test_a_bf16_run_records_its_precision_and_resume_keeps_it(tmp_path, repo_root):
    """Slow on a CPU without AMX or AVX512-BF16, where bf16 is emulated: evaluating the 10,000
    test digits alone takes a while there."""
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
def test_full_default_recipe_reaches_99_percent_and_records_its_calibration(default_training):
    """The documented recipe: 10 epochs, Adam 0.001, batch 64, with its distortions and
    non-digits, calibrated on the training digits it held out."""
    out = default_training.out
    print(out.stdout)
    assert out.returncode == 0, out.stderr
    assert float(re.search(r"Test accuracy: (\d+\.\d\d)%", out.stdout)[1]) >= 99.0
    info = json.loads(open(reading.models.metadata_path(default_training.weights)).read())
    assert info["config"]["augment"] and info["config"]["nondigits"] > 0 and info["config"]["validation"] == 5000
    assert f"temperature {info['temperature']:.3f}" in out.stdout and 0.2 < info["temperature"] < 5
