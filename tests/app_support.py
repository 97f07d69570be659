"""What the tests of app.py share: digits drawn as pen strokes on the page's pad, and app.py
started as a real server. Their fixtures are in app_fixtures.py."""
import io
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAD = (480, 320)  # the drawing pad's size in canvas pixels (app.html)

# Digits as pen strokes, in a box 0-1 wide and high (x right, y down).
STROKES = {
    "7": [[(0, 0), (1, 0), (0.35, 1)]],
    "4": [[(0.7, 0), (0, 0.65), (1, 0.65)], [(0.72, 0.3), (0.72, 1)]],
    "2": [[(0.05, 0.25), (0.3, 0), (0.7, 0), (0.95, 0.22), (0.85, 0.5), (0, 1), (1, 1)]],
    "-": [[(0.05, 0.5), (0.95, 0.5)]],
}


# A long bar across the pad: the bar of a 7 before its stem, and the drawing whose time depends
# most on how the cuts are bounded.
BAR = [(20, 160), (460, 160)]


def strokes_on_pad(text, height=200, gap=40):
    """The strokes of the digits of text side by side, centred on the pad, in canvas pixels; a
    negative gap makes neighbours overlap."""
    width = 0.6 * height
    x = (PAD[0] - len(text) * width - (len(text) - 1) * gap) / 2
    top = (PAD[1] - height) / 2
    strokes = []
    for ch in text:
        strokes += [[(x + u * width, top + v * height) for u, v in s] for s in STROKES[ch]]
        x += width + gap
    return strokes


def canvas_png(text, pen=22, gap=40, strokes=()):
    """The PNG the page posts for text drawn on the pad: black strokes on white, at half the
    pad's resolution, as app.html sends it; strokes, more strokes drawn on the pad."""
    img = Image.new("RGB", PAD, "white")
    for stroke in strokes_on_pad(text, gap=gap) + list(strokes):
        ImageDraw.Draw(img).line(stroke, fill="black", width=pen, joint="curve")
    buf = io.BytesIO()
    img.reduce(2).save(buf, "PNG")
    return buf.getvalue()


def photo_of(text, fmt):
    """The drawing of text as a photo would hand it in: grey ink on tinted paper, in format fmt."""
    drawing = Image.open(io.BytesIO(canvas_png(text))).convert("RGB")
    paper = Image.new("RGB", drawing.size, (235, 225, 200))
    photo = Image.blend(drawing, paper, 0.3)
    buf = io.BytesIO()
    photo.save(buf, fmt)
    return buf.getvalue()


def assert_one_sentence(response, status, text):
    """response is an error answer with status whose one-sentence message contains text."""
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert text in message
    assert message[0].isupper() and message.endswith(".") and "\n" not in message


def argmax(probabilities):
    return max(range(len(probabilities)), key=probabilities.__getitem__)


def start_server(weights, *args, env=None):
    """app.py on a free loopback port (--port 0), with env for its environment (None: this one's);
    returns the process and its address."""
    # Started beside the weights, where no number_reader.pt is (one in the repository, which git
    # ignores, would be loaded and change what a developer's run tests).
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "app.py"), "--weights", weights,
                                "--port", "0", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(weights), env=env)
    line = process.stdout.readline()  # the address line; empty if it failed to start
    if "http://" not in line:
        process.kill()
        pytest.fail(f"app.py did not start: {line}{process.stderr.read()}")
    url = line.split("Open ")[1].split(" ")[0]
    assert url.startswith("http://127.0.0.1:")
    return process, url


def stop_server(process):
    """Ctrl-C, as a user would; returns the exit status and what it wrote to stderr."""
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err
