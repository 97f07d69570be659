"""Tests of reading/digit_input.py: one digit's ink becomes the model's 28x28 input the way MNIST
digits were made (20x20 box, centred by mass, normalised). No model is needed."""
import numpy as np
import pytest
from drawing import centre_of_mass, draw_seven, ink_box, seen

import reading.digit_input
from reading.digit_input import MNIST_MEAN, MNIST_STD, grey_levels


def test_output_is_normalised_28x28_white_ink_on_black():
    t = reading.digit_input.preprocess_image(draw_seven())
    assert t.shape == (1, 28, 28) and t.dtype == np.float32
    a = grey_levels(t[0])
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


def test_thin_strokes_are_thickened_towards_mnist_width():
    thin = seen(draw_seven(size=(800, 800), box=(250, 150, 550, 650), width=2))
    normal = seen(draw_seven(size=(800, 800), box=(250, 150, 550, 650), width=60))
    # A 2-pixel line in a 500-pixel digit would shrink to a trace of grey in 20x20; it must carry
    # about as much ink as a digit written with a normal pen.
    assert thin.sum() > 0.7 * normal.sum()
    assert thin.max() > 0.9


def test_grey_levels_undo_the_normalisation_for_tensors_and_arrays():
    levels = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    x = (levels - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(grey_levels(x), levels, atol=1e-6)
    # Beyond the range a picture can hold, the levels are clipped to [0, 1].
    assert grey_levels(np.array([-5.0, 5.0])).tolist() == [0.0, 1.0]
    torch = pytest.importorskip("torch")  # (training's figures pass tensors; the reading-only venv has none)
    back = grey_levels(torch.from_numpy(x))
    assert isinstance(back, torch.Tensor)
    np.testing.assert_allclose(back.numpy(), levels, atol=1e-6)
