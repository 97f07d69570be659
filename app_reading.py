"""What app.py answers for one uploaded picture: the number written in it (its digits, and the
marks that are not digits left out), and the whole picture read as one digit, or null with the
reason where it is not one. The same reading/ code as `python predict.py` reads it.
"""
import io
import logging

import numpy as np
from PIL import Image, ImageDraw

import predict
from reading.digit_input import grey_levels, ink_as_one_digit
from reading.images import open_file
from reading.ink import read_ink
from reading.runtime import digit_probabilities
from reading.verdict import why_not_a_digit

log = logging.getLogger("app")


def open_upload(data):
    """The request body as a PIL image (not yet decoded; reading.images.open_image does that).
    Raises NotAnImageError with a sentence a user can act on."""
    if not data:
        raise predict.NotAnImageError("The request body is empty: send the bytes of an image file.")
    if data.startswith(b"--") and b"content-disposition" in data[:1024].lower():
        raise predict.NotAnImageError("The request body is a form upload: send the image file's own "
                                      "bytes as the body (curl --data-binary @digit.png).")
    return open_file(io.BytesIO(data), "The request body")


def seen_levels(image):
    """The normalised 1x28x28 array the model read, as 784 grey levels 0-255 row by row: what
    the page draws so the user sees what the model saw."""
    return (grey_levels(np.asarray(image[0])) * 255).round().astype(np.uint8).flatten().tolist()


def read_picture(model, data, reader=None):
    """The answer of POST /api/predict for an image file's bytes (CPU work: run it off the event
    loop), with the number reader too when given. Raises PredictError subclasses for bad
    pictures; a picture whose ink holds no digit is answered, with "number" empty, "digit" null
    and each mark left out."""
    # The ink is found once and read both ways, just as predict_digits (the number) and
    # preprocess_image (the whole picture as one digit) each read it on their own.
    ink = read_ink(open_upload(data))
    try:
        number, failure = predict.read_number(model, ink, reader), None
    except predict.NoDigitError as error:
        number, failure = predict.NumberReading([], []), error
    readings = number.digits
    if len(readings) == 1 and readings[0].all_ink:
        # A single digit made of all the ink is the whole picture read as one digit: the same
        # input in the same forward pass of one, so the same answer, computed once.
        digit, probabilities = readings[0].digit, readings[0].probabilities
    else:
        # (When both readings fail, the sentence given is this one's.)
        whole = digit_probabilities(model, [ink_as_one_digit(ink)])[0]
        digit, probabilities = int(whole.argmax()), whole.tolist()
    if failure is not None:
        raise failure
    # Ink that holds no digit at all is not one digit either, whatever its likeliest reading.
    reason = why_not_a_digit(probabilities) or (number.left_out[0].reason if not readings else None)
    return {
        "number": "".join(str(r.digit) for r in readings),
        "digits": [{"digit": r.digit, "probabilities": list(r.probabilities), "box": list(r.box),
                    "seen": seen_levels(r.image)} for r in readings],
        "left_out": [{"box": list(m.box), "reason": m.reason} for m in number.left_out],
        "digit": None if reason else digit,
        "reason": reason,
        "probabilities": list(probabilities),
    }


def warm_up(model, reader=None):
    """Read one small drawing, so that the first picture a person sends does not pay for the
    set-up the model's runtime, NumPy and SciPy do on their first call."""
    img = Image.new("L", (120, 80), 255)
    ImageDraw.Draw(img).line([(40, 15), (80, 15), (55, 65)], fill=0, width=8)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    try:
        read_picture(model, buf.getvalue(), reader)
    except Exception as error:  # noqa: BLE001  (only the first answer's speed is at stake: serve)
        log.warning("Reading a first drawing at start-up failed (%s); serving anyway.", error)
