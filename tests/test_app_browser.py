"""Tests of app.py's page in a real headless Chromium, drawing with mouse and touch events as
people do, and checking what the page shows against the answers the server gave it.

    APP_SCREENSHOTS=docs python -m pytest tests/test_app_browser.py   # refresh docs/app*.png
"""
import itertools
import os
import shutil

import numpy as np
import pytest
from app_support import BAR, PAD, REPO, argmax, photo_of, strokes_on_pad
from PIL import Image

pytest_plugins = ["app_fixtures"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No network at test time: never let Chromium phone home or fetch components.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Notes, in window.sent and window.answers, the size of each drawing the page posts (Chromium
# does not show a Blob body to Playwright) and each answer it gets.
RECORD_FETCHES = """
    const fetchAsSent = window.fetch;
    window.sent = [];
    window.answers = [];
    window.fetch = async (url, options) => {
      if (options && options.body instanceof Blob && options.body.type === "image/png") {
        const bitmap = await createImageBitmap(options.body);
        window.sent.push([bitmap.width, bitmap.height]);
      }
      const response = await fetchAsSent(url, options);
      window.answers.push(await response.clone().json());
      return response;
    };"""

# What the page shows: the reading, the confidence, and for each digit's panel the highlighted
# column of its bars and the 28x28 grey levels of its "model saw" picture.
SHOWN = """() => ({
    reading: document.getElementById("reading").textContent,
    hint: document.getElementById("result").className === "hint",
    confidence: document.getElementById("confidence").textContent,
    note: document.getElementById("note").textContent,
    digits: [...document.querySelectorAll("#details .digit")].map(panel => ({
      columns: panel.querySelectorAll(".bars .col").length,
      top: [...panel.querySelectorAll(".bars .col.top")].map(col => col.textContent),
      seen: Array.from(panel.querySelector(".seen canvas").getContext("2d")
                       .getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0)),
    })),
  })"""


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed: apt-get install chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def to_page(pad_box, x, y):
    """Page coordinates of canvas pixel (x, y) on the pad, wherever and however large it shows."""
    return (pad_box["x"] + x * pad_box["width"] / PAD[0],
            pad_box["y"] + y * pad_box["height"] / PAD[1])


def draw_with_mouse(page, text, release=True):
    box = page.locator("#pad").bounding_box()
    strokes = strokes_on_pad(text)
    for i, stroke in enumerate(strokes):
        page.mouse.move(*to_page(box, *stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*to_page(box, *point), steps=12)
        if release or i < len(strokes) - 1:
            page.mouse.up()


def draw_with_touch(page, text):
    """Finger strokes, as a phone's touch screen sends them (Chromium's DevTools protocol)."""
    cdp = page.context.new_cdp_session(page)
    box = page.locator("#pad").bounding_box()
    for stroke in strokes_on_pad(text):
        points = [stroke[0]]
        for a, b in itertools.pairwise(stroke):
            points += [(a[0] + (b[0] - a[0]) * t / 12, a[1] + (b[1] - a[1]) * t / 12)
                       for t in range(1, 13)]
        for i, point in enumerate(points):
            x, y = to_page(box, *point)
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart" if i == 0 else "touchMove",
                                                  "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def wait_for_reading(page, expected, timeout=15000):
    """Wait until the page's reading is exactly expected and it has shown the last answer it got
    (its own flags: no request in flight, none waiting to be sent); returns what it shows."""
    page.wait_for_function("t => document.getElementById('reading').textContent === t && !busy "
                           "&& !again", arg=expected, timeout=timeout)
    return page.evaluate(SHOWN)


def assert_shows_answer(shown, answer):
    """The page shows answer as it is meant to: the number, how sure the model is of all its
    digits at once (the product of their top probabilities), and for each digit its likeliest
    column highlighted and the very grey levels the model saw."""
    assert not shown["hint"] and shown["reading"] == answer["number"]
    sure = float(np.prod([max(d["probabilities"]) for d in answer["digits"]]))
    assert shown["confidence"] == f"{100 * sure:.1f}% sure"
    assert [d["columns"] for d in shown["digits"]] == [10] * len(answer["digits"])
    assert [d["top"] for d in shown["digits"]] == [[str(argmax(d["probabilities"]))]
                                                   for d in answer["digits"]]
    assert [d["seen"] for d in shown["digits"]] == [d["seen"] for d in answer["digits"]]


def assert_shows_hint(shown, text="draw a digit"):
    assert shown == {"reading": text, "hint": True, "confidence": "", "note": "", "digits": []}


def screenshot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    # APP_SCREENSHOTS=docs refreshes the README's pictures from this very test.
    if os.environ.get("APP_SCREENSHOTS"):
        shutil.copy(path, os.path.join(REPO, os.environ["APP_SCREENSHOTS"], name))
    with Image.open(path) as img:
        assert len(np.unique(np.asarray(img.convert("L")))) > 20  # a rendered page, not blank
    return path


def test_browser_reads_a_seven_while_drawing_then_a_number(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.add_init_script(RECORD_FETCHES)
    page.goto(server)
    assert_shows_hint(wait_for_reading(page, "draw a digit"))
    # The reading comes while the mouse button is still down: live, not when the stroke ends.
    draw_with_mouse(page, "7", release=False)
    shown = wait_for_reading(page, "7")
    assert_shows_answer(shown, page.evaluate("window.answers.at(-1)"))
    assert 50 <= float(shown["confidence"].removesuffix("% sure")) <= 100
    page.mouse.up()
    # The drawing is sent at half the pad's resolution: a quarter of the pixels to read.
    assert page.evaluate("window.sent[0]") == [PAD[0] // 2, PAD[1] // 2]
    page.keyboard.press("Control+z")  # undo the only stroke
    assert_shows_hint(wait_for_reading(page, "draw a digit"))
    draw_with_mouse(page, "42")
    assert_shows_answer(wait_for_reading(page, "42"), page.evaluate("window.answers.at(-1)"))
    screenshot(page, tmp_path, "app.png")
    page.keyboard.press("Delete")
    assert_shows_hint(wait_for_reading(page, "draw a digit"))
    # A chosen photo is read the same way.
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_of("42", "JPEG"))
    page.set_input_files("#photo", str(photo))
    assert_shows_answer(wait_for_reading(page, "42"), page.evaluate("window.answers.at(-1)"))
    page.close()


def test_browser_reads_a_finger_drawn_seven_on_a_phone(server, browser, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    page = context.new_page()
    page.add_init_script(RECORD_FETCHES)
    page.goto(server)
    draw_with_touch(page, "7")
    assert_shows_answer(wait_for_reading(page, "7"), page.evaluate("window.answers.at(-1)"))
    # A finger on the pad draws instead of scrolling or zooming, and nothing is wider than the
    # phone's screen.
    assert page.evaluate("getComputedStyle(document.getElementById('pad')).touchAction") == "none"
    assert page.evaluate("window.scrollY") == 0
    # The reading shows above the pad, where a drawing hand does not cover it.
    assert page.locator("#result").bounding_box()["y"] < page.locator("#pad").bounding_box()["y"]
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, tmp_path, "app-phone.png")
    context.close()


def draw_stroke(page, stroke, release=True):
    box = page.locator("#pad").bounding_box()
    page.mouse.move(*to_page(box, *stroke[0]))
    page.mouse.down()
    for point in stroke[1:]:
        page.mouse.move(*to_page(box, *point), steps=24)
    if release:
        page.mouse.up()


def test_browser_shows_nothing_while_a_bar_is_drawn_then_not_a_digit(server, browser, tmp_path):
    """The bar of a 7 before its stem: while the button is down nothing shows (never a row of
    0s); let go, and the page says plainly that it is not a digit, and why. The 7's stem then
    makes it a 7; a dash after a number is left out of it, and the page says so."""
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.add_init_script(RECORD_FETCHES)
    page.goto(server)
    draw_stroke(page, BAR, release=False)
    page.wait_for_function("window.answers.length > 0")
    assert_shows_hint(wait_for_reading(page, ""), text="")
    answer = page.evaluate("window.answers.at(-1)")
    assert answer["number"] == "" and answer["digit"] is None and len(answer["left_out"]) == 1
    page.mouse.up()
    shown = wait_for_reading(page, "not a digit")
    assert page.evaluate("document.getElementById('result').className") == "nodigit"
    assert shown["confidence"] == answer["left_out"][0]["reason"] and shown["digits"] == []
    path = screenshot(page, tmp_path, "app-not-a-digit.png")
    with Image.open(path) as img:  # the words are drawn large, in the page's ink colour
        answer_box = page.locator("#answer").bounding_box()
        crop = np.asarray(img.convert("L").crop((answer_box["x"], answer_box["y"],
                                                 answer_box["x"] + answer_box["width"],
                                                 answer_box["y"] + answer_box["height"])))
        assert (crop < 80).sum() > 500
    page.keyboard.press("Delete")
    draw_with_mouse(page, "42")
    draw_stroke(page, [(strokes_on_pad("42")[-1][-1][0] + 40, 160), (470, 160)])
    shown = wait_for_reading(page, "42")
    assert_shows_answer(shown, page.evaluate("window.answers.at(-1)"))
    assert shown["note"] == "1 mark that is not a digit left out"
    page.close()
