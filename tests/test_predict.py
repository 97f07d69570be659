"""Tests of predict.py: each preprocessing step on images drawn here, the errors for every bad
input, and the command line. No trained model is needed: where a test needs a model that really
reads digits, a small one is trained for one epoch on 3000 MNIST images (a few seconds)."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import predict  # conftest.py puts the repository root on sys.path
from mnist_cnn_model import CNN, MNIST_MEAN, MNIST_STD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@pytest.fixture(scope="session")
def mnist_test(mnist_test_set):
    """The MNIST test digits as stored (uint8, N x 28 x 28, white on black) and their labels."""
    images, labels = mnist_test_set
    pixels = ((images[:, 0] * MNIST_STD + MNIST_MEAN) * 255).round().to(torch.uint8)
    return pixels.numpy(), labels.numpy()


@pytest.fixture(scope="session")
def small_model_weights(train_weights):
    """A CNN that really reads digits (about 90% on MNIST), trained in seconds, saved to a file."""
    return train_weights(3000)


@pytest.fixture(scope="session")
def small_model(small_model_weights):
    return predict.load_model(small_model_weights)


# ---------------------------------------------------------------------------------------------
# Drawing test images

def draw_seven(size=(300, 300), box=(90, 60, 190, 240), width=14, ink=0, paper=255, mode="L"):
    """A 7 drawn with a pen of `width` pixels inside box (left, top, right, bottom)."""
    img = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = box
    draw.line([(left, top), (right, top), (left + (right - left) * 0.35, bottom)], fill=ink,
              width=width, joint="curve")
    return img


def seen(image):
    """The 28x28 array in [0, 1] the model sees for image (a PIL image or a path)."""
    return (predict.preprocess_image(image)[0].numpy() * MNIST_STD + MNIST_MEAN)


def centre_of_mass(a):
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    return (ys * a).sum() / a.sum(), (xs * a).sum() / a.sum()


def ink_box(a, level=0.1):
    rows = np.flatnonzero((a > level).any(axis=1))
    cols = np.flatnonzero((a > level).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def save(img, path, **kwargs):
    img.save(path, **kwargs)
    return str(path)


def as_mnist_photo(digit28, scale, offset, canvas=(400, 320)):
    """An MNIST digit written dark on light paper at scale x its size, off-centre."""
    big = Image.fromarray(255 - digit28).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    img = Image.new("L", canvas, 255)
    img.paste(big, offset)
    return img


# ---------------------------------------------------------------------------------------------
# Preprocessing: the MNIST recipe, step by step

def test_output_is_normalised_28x28_white_ink_on_black():
    t = predict.preprocess_image(draw_seven())
    assert t.shape == (1, 28, 28) and t.dtype == torch.float32
    a = t[0].numpy() * MNIST_STD + MNIST_MEAN
    assert a[0, 0] == pytest.approx(0, abs=1e-5)  # background is black
    assert a.max() == pytest.approx(1, abs=0.05)  # solid ink is white
    assert float(t.min()) == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-4)


def test_polarity_dark_on_light_and_light_on_dark_give_the_same_digit():
    dark_on_light = seen(draw_seven(ink=0, paper=255))
    light_on_dark = seen(draw_seven(ink=255, paper=0))
    grey_on_grey = seen(draw_seven(ink=60, paper=190))
    assert np.abs(dark_on_light - light_on_dark).mean() < 0.01
    assert np.abs(dark_on_light - grey_on_grey).mean() < 0.02


@pytest.mark.parametrize("box", [(10, 10, 60, 100), (200, 150, 290, 290), (120, 20, 140, 60),
                                 (20, 30, 280, 290)])
def test_off_centre_any_size_is_fitted_to_20x20_and_centred_by_mass(box):
    drawn = draw_seven(box=box, width=max(2, (box[3] - box[1]) // 12))
    a = seen(drawn)
    cy, cx = centre_of_mass(a)
    assert abs(cy - 14) < 0.6 and abs(cx - 14) < 0.6
    h, w = ink_box(a)
    assert max(h, w) in (20, 21)  # 20 plus at most one pixel of anti-aliased edge
    drawn_h, drawn_w = ink_box(255 - np.asarray(drawn, np.float32), level=128)
    assert w / h == pytest.approx(drawn_w / drawn_h, abs=0.12)  # aspect ratio kept


def test_tiny_digit_in_a_large_picture_is_found_and_enlarged():
    a = seen(draw_seven(size=(800, 600), box=(500, 400, 508, 412), width=2))
    assert max(ink_box(a)) in (20, 21)
    assert abs(centre_of_mass(a)[0] - 14) < 0.6


def test_huge_image_is_scaled_down_first(tmp_path):
    img = draw_seven(size=(6000, 4500), box=(1000, 800, 3000, 4000), width=200)
    path = save(img, tmp_path / "huge.png")
    small = seen(draw_seven(size=(600, 450), box=(100, 80, 300, 400), width=20))
    assert np.abs(seen(path) - small).mean() < 0.02
    assert max(predict.open_image(path).size) <= predict.MAX_SIDE
    seen(img)  # a caller's own PIL image is read, never shrunk in place
    assert img.size == (6000, 4500)


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    path = save(draw_seven(size=(400, 400)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 400x400 is > 2x that: refused
    with pytest.raises(predict.NotAnImageError, match="big.png"):
        predict.preprocess_image(path)


def test_strokes_on_a_transparent_background_read_as_ink(tmp_path):
    reference = seen(draw_seven())
    stroke = np.asarray(draw_seven(ink=255, paper=0))  # 255 where the pen went
    for colour, hidden in [((0, 0, 0), 0), ((255, 255, 255), 255), ((20, 40, 200), 0),
                           ((0, 0, 0), 255)]:
        rgba = np.zeros(stroke.shape + (4,), np.uint8)
        rgba[..., :3] = np.where(stroke[..., None] > 0, colour, hidden)
        rgba[..., 3] = stroke
        path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "canvas.png")
        assert np.abs(seen(path) - reference).mean() < 0.01, (colour, hidden)
    la = Image.merge("LA", [Image.new("L", (300, 300), 0), Image.fromarray(stroke)])
    assert np.abs(seen(save(la, tmp_path / "la.png")) - reference).mean() < 0.01


def test_exif_orientation_is_applied(tmp_path):
    upright = draw_seven(size=(300, 200), box=(100, 20, 180, 180)).convert("RGB")
    reference = seen(save(upright, tmp_path / "upright.jpg", quality=95))
    # A camera held sideways stores the pixels rotated and says so in the EXIF orientation tag
    # (6: rotate 90 degrees clockwise to display).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(stored, tmp_path / "sideways.jpg", quality=95, exif=exif.tobytes())
    assert np.abs(seen(path) - reference).mean() < 0.02
    # Without the tag the digit would be read lying on its side: the test can tell the difference.
    plain = save(stored, tmp_path / "no_tag.jpg", quality=95)
    assert np.abs(seen(plain) - reference).mean() > 0.05


@pytest.mark.parametrize("kind", ["16-bit", "palette", "gif", "cmyk", "1-bit", "rgb-tinted",
                                  "32-bit-int", "float"])
def test_every_pixel_format_gives_the_same_digit(tmp_path, kind):
    grey = draw_seven()
    reference = seen(grey)
    a = np.asarray(grey)
    if kind == "16-bit":
        img = Image.fromarray(a.astype(np.uint16) * 257)
        path = save(img, tmp_path / "d.png")
        assert Image.open(path).mode.startswith("I")
    elif kind == "palette":
        path = save(grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), tmp_path / "d.png")
        assert Image.open(path).mode == "P"
    elif kind == "gif":
        path = save(grey.convert("P"), tmp_path / "d.gif")
    elif kind == "cmyk":
        path = save(grey.convert("RGB").convert("CMYK"), tmp_path / "d.tiff")
        assert Image.open(path).mode == "CMYK"
    elif kind == "1-bit":
        path = save(grey.convert("1", dither=Image.Dither.NONE), tmp_path / "d.png")
    elif kind == "rgb-tinted":
        tint = np.array([255, 230, 190]) / 255.0
        rgb = (a[..., None] / 255.0 * tint * 255 * 0.9 + 10).astype(np.uint8)
        path = save(Image.fromarray(rgb, "RGB"), tmp_path / "d.webp", lossless=True)
    elif kind == "32-bit-int":
        path = save(Image.fromarray(a.astype(np.int32) * 100, "I"), tmp_path / "d.tiff")
    else:
        path = save(Image.fromarray(a.astype(np.float32) / 255, "F"), tmp_path / "d.tiff")
    assert np.abs(seen(path) - reference).mean() < 0.02


def test_uneven_lighting_and_tinted_paper_are_removed(tmp_path):
    reference = seen(draw_seven())
    a = np.asarray(draw_seven(), np.float32) / 255
    ys, xs = np.mgrid[0:300, 0:300] / 300.0
    light = 0.45 + 0.55 * (0.6 * xs + 0.4 * (1 - ys))  # the far corner gets under half the light
    paper = np.array([1.0, 0.92, 0.75])
    rgb = (a[..., None] * paper + (1 - a[..., None]) * 0.12) * light[..., None]
    path = save(Image.fromarray((rgb * 255).astype(np.uint8)), tmp_path / "lit.jpg", quality=85)
    assert np.abs(seen(path) - reference).mean() < 0.03


def test_isolated_specks_do_not_move_the_digit():
    img = draw_seven(size=(400, 400), box=(150, 120, 250, 300), width=12)
    ImageDraw.Draw(img).ellipse([10, 10, 13, 13], fill=0)     # dust in a corner
    ImageDraw.Draw(img).ellipse([380, 390, 383, 393], fill=0)
    reference = seen(draw_seven(size=(400, 400), box=(150, 120, 250, 300), width=12))
    assert np.abs(seen(img) - reference).mean() < 0.01


def test_table_around_the_sheet_is_not_taken_for_ink(tmp_path):
    """A photo of a sheet lying on a dark table: the table shows along the picture's edges,
    darker than the pen. The digit alone must be read."""
    sheet = np.asarray(draw_seven(size=(400, 400), box=(150, 110, 250, 290), width=14), np.float32)
    sheet = 0.25 + 0.65 * sheet / 255  # grey pen on light paper
    photo = np.full((400, 400), 0.08, np.float32)  # the table
    photo[40:, 70:360] = sheet[40:, 70:360]  # the sheet covers all but a top strip and the sides
    path = save(Image.fromarray((photo * 255).astype(np.uint8)), tmp_path / "desk.jpg", quality=90)
    reference = seen(draw_seven(size=(400, 400), box=(150, 110, 250, 290), width=14))
    assert np.abs(seen(path) - reference).mean() < 0.03


def test_digit_touching_the_border_is_kept(tmp_path):
    """A tight crop: the digit itself touches the picture's edge and must not be set aside."""
    img = draw_seven(size=(100, 180), box=(0, 5, 100, 180), width=12)
    path = save(img, tmp_path / "tight.jpg", quality=75)
    a = seen(path)
    assert max(ink_box(a)) in (20, 21)
    assert np.abs(a - seen(draw_seven(size=(300, 300), box=(100, 60, 200, 235), width=12))).mean() < 0.05


def test_thin_strokes_are_thickened_towards_mnist_width():
    thin = seen(draw_seven(size=(800, 800), box=(250, 150, 550, 650), width=2))
    normal = seen(draw_seven(size=(800, 800), box=(250, 150, 550, 650), width=60))
    # A 2-pixel line in a 500-pixel digit would shrink to a trace of grey in 20x20; it must carry
    # about as much ink as a digit written with a normal pen.
    assert thin.sum() > 0.7 * normal.sum()
    assert thin.max() > 0.9


@pytest.mark.parametrize("fill", ["white", "black", "grey", "noise"])
def test_blank_or_uniform_image_raises_no_digit_error(tmp_path, fill):
    rng = np.random.default_rng(0)
    if fill == "noise":
        a = np.clip(rng.normal(200, 8, (200, 300)), 0, 255).astype(np.uint8)
    else:
        a = np.full((200, 300), {"white": 255, "black": 0, "grey": 128}[fill], np.uint8)
    path = save(Image.fromarray(a), tmp_path / f"{fill}.png")
    with pytest.raises(predict.NoDigitError, match=f"No digit found in .*{fill}.png"):
        predict.preprocess_image(path)


# ---------------------------------------------------------------------------------------------
# With a model

def test_predictions_are_an_int_and_ten_probabilities(small_model, tmp_path, mnist_test):
    images, labels = mnist_test
    path = save(Image.fromarray(images[0]), tmp_path / "seven.png")
    digit = predict.predict_user_input(small_model, path)
    assert type(digit) is int and 0 <= digit <= 9
    again, probs = predict.predict_with_probabilities(small_model, path)
    assert again == digit and len(probs) == 10
    assert sum(probs) == pytest.approx(1, abs=1e-5) and probs[digit] == max(probs)


def test_user_style_digits_are_read_as_well_as_mnist_ones(small_model, tmp_path, mnist_test):
    """MNIST test digits written dark on light paper, off-centre, 2-9x larger: the model must
    give them the answer it gives the original 28x28 (preprocessing undoes the differences),
    where the naive resize-to-28x28 gets most of them wrong."""
    images, labels = mnist_test
    agree = naive_right = right = 0
    n = 60
    for i in range(n):
        img = as_mnist_photo(images[i], scale=2 + i % 8, offset=(5 + 17 * (i % 7), 3 + 11 * (i % 5)))
        path = save(img, tmp_path / f"{i}.png")
        ours = predict.predict_user_input(small_model, path)
        original = int(small_model(((torch.from_numpy(images[i].copy()).float() / 255 - MNIST_MEAN)
                                    / MNIST_STD)[None, None]).argmax())
        agree += ours == original
        right += ours == labels[i]
        naive = np.asarray(img.resize((28, 28)), np.float32) / 255
        naive_right += int(small_model(torch.from_numpy((naive - MNIST_MEAN) / MNIST_STD)[None, None])
                           .argmax()) == labels[i]
    assert agree >= 0.9 * n
    assert right >= 0.8 * n
    assert naive_right <= 0.4 * n


def test_save_load_round_trip_gives_identical_predictions(small_model_weights, tmp_path, mnist_test):
    images, _ = mnist_test
    model = predict.load_model(small_model_weights)
    copy = tmp_path / "copy.pt"
    torch.save(model.state_dict(), copy)
    reloaded = predict.load_model(copy)
    assert not reloaded.training
    batch = [predict.preprocess_image(Image.fromarray(images[i])) for i in range(20)]
    assert torch.equal(predict.predict_batch(model, batch), predict.predict_batch(reloaded, batch))


# ---------------------------------------------------------------------------------------------
# Bad input: one clear sentence, catchable, and exit 1 from the command line

def test_missing_weights_say_to_train_first(tmp_path):
    with pytest.raises(predict.WeightsNotFoundError, match=r"python mnist_cnn_model\.py") as info:
        predict.load_model(tmp_path / "none.pt")
    assert isinstance(info.value, FileNotFoundError)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(784, 10).state_dict(), path)
    with pytest.raises(predict.BadWeightsError, match="different model architecture") as info:
        predict.load_model(path)
    assert isinstance(info.value, ValueError)
    wrong_shape = CNN().state_dict()
    wrong_shape["fc2.weight"] = torch.zeros(5, 128)
    torch.save(wrong_shape, path)
    with pytest.raises(predict.BadWeightsError, match="different model architecture"):
        predict.load_model(path)


@pytest.mark.parametrize("content", [b"not weights at all", b"", "pickled-model", "a-list"])
def test_a_file_that_is_not_weights_is_refused(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "pickled-model":
        torch.save(CNN(), path)  # a whole pickled model: loading it would run pickle code
    elif content == "a-list":
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(predict.BadWeightsError, match="bad.pt"):
        predict.load_model(path)


def test_missing_image_and_non_image_name_the_path(tmp_path):
    with pytest.raises(predict.ImageNotFoundError, match="nowhere.png") as info:
        predict.preprocess_image(tmp_path / "nowhere.png")
    assert isinstance(info.value, FileNotFoundError)
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(predict.NotAnImageError, match="notes.png"):
        predict.preprocess_image(text)
    truncated = tmp_path / "cut.png"
    buf = io.BytesIO()
    draw_seven().save(buf, "PNG")
    truncated.write_bytes(buf.getvalue()[:200])
    with pytest.raises(predict.NotAnImageError, match="cut.png"):
        predict.preprocess_image(truncated)


def run_cli(*args, cwd=None):
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return subprocess.run([sys.executable, os.path.join(REPO, "predict.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=120)


def test_cli_bad_inputs_exit_non_zero_with_one_sentence(small_model_weights, tmp_path):
    image = save(draw_seven(), tmp_path / "seven.png")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "junk.pt").write_text("hello")
    cases = [
        ([image, "--weights", tmp_path / "none.pt"], "python mnist_cnn_model.py"),
        ([image, "--weights", tmp_path / "junk.pt"], "junk.pt"),
        ([tmp_path / "missing.png", "--weights", small_model_weights], "missing.png"),
        ([tmp_path / "text.png", "--weights", small_model_weights], "text.png"),
        ([save(Image.new("L", (50, 50), 255), tmp_path / "blank.png"), "--weights",
          small_model_weights], "No digit found"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.returncode == 1, args
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_or_absent_device_is_one_sentence(small_model_weights, tmp_path, capsys):
    path = save(draw_seven(), tmp_path / "seven.png")
    assert predict.main([path, "--weights", small_model_weights, "--device", "toaster"]) == 1
    assert "not a device name" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert predict.main([path, "--weights", small_model_weights, "--device", "cuda"]) == 1
        assert "no CUDA GPU" in capsys.readouterr().err


def test_folder_is_predicted_reporting_bad_files_and_carrying_on(small_model_weights, tmp_path,
                                                                mnist_test, capsys):
    images, labels = mnist_test
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(5):
        save(Image.fromarray(255 - images[i]), folder / f"{i}.png")
    save(Image.new("L", (40, 40), 255), folder / "3_blank.png")
    (folder / "notes.txt").write_text("not an image, and not named like one: skipped")
    (folder / "broken.jpg").write_text("named like an image but is not one")
    code = predict.main([str(folder), "--weights", small_model_weights])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(folder / f"{i}.png") for i in range(5)]
    assert all(line.split(": ")[1].split(" ")[0].isdigit() for line in lines)
    assert "3_blank.png" in err and "broken.jpg" in err and "notes.txt" not in err
    assert code == 1


def test_folders_are_predicted_in_batches(small_model_weights, tmp_path, monkeypatch, capsys):
    for i in range(7):
        save(draw_seven(box=(40 + 10 * i, 60, 200, 240)), tmp_path / f"{i}.png")
    calls = []
    real = predict.predict_batch
    monkeypatch.setattr(predict, "predict_batch", lambda m, t: calls.append(len(t)) or real(m, t))
    monkeypatch.setattr(predict, "BATCH_SIZE", 3)
    assert predict.main([str(tmp_path), "--weights", small_model_weights]) == 0
    assert calls == [3, 3, 1]
    assert len(capsys.readouterr().out.strip().splitlines()) == 7


def test_top_k_lists_the_k_likeliest_digits(small_model_weights, tmp_path, capsys):
    path = save(draw_seven(), tmp_path / "seven.png")
    assert predict.main([path, "--weights", small_model_weights, "--top-k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    ranked = line.split(": ", 1)[1].split(", ")
    assert len(ranked) == 3
    digits = [int(r.split(" ")[0]) for r in ranked]
    percents = [float(r.split("(")[1].rstrip("%)")) for r in ranked]
    assert len(set(digits)) == 3 and percents == sorted(percents, reverse=True)
    assert sum(percents) <= 100.1
    with pytest.raises(SystemExit):
        predict.main([path, "--top-k", "0"])


def test_image_path_at_the_top_of_the_file_is_the_default(small_model_weights, tmp_path,
                                                          monkeypatch, capsys):
    path = save(draw_seven(), tmp_path / "mine.png")
    monkeypatch.setattr(predict, "image_path", path)
    assert predict.main(["--weights", small_model_weights]) == 0
    assert capsys.readouterr().out.startswith(path + ": ")


def test_show_writes_the_figure_headless(small_model_weights, tmp_path):
    path = save(draw_seven(), tmp_path / "seven.png")
    result = run_cli(path, "--weights", small_model_weights, "--show", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figure = tmp_path / "predictions" / "seven.png"
    assert f"figure written to {os.path.join('predictions', 'seven.png')}" in result.stdout
    with Image.open(figure) as img:
        assert img.width > 600 and img.height > 200
        # Not a blank canvas: it holds the input, the 28x28 and the bar chart.
        assert len(np.unique(np.asarray(img.convert("L")))) > 20
