"""Tests of app.py's HTTP API, in-process through FastAPI's test client: what a drawing, a photo
or a bad upload is answered, and how the app behaves under clients that hang up or stall."""
import asyncio
import io
import time

import numpy as np
import pytest
from app_support import BAR, PAD, argmax, assert_one_sentence, canvas_png, photo_of, strokes_on_pad
from fastapi.testclient import TestClient
from PIL import Image

import app
import app_reading
import predict
import reading.cuts
import reading.segment
from reading.marks import BAR_REASON
from reading.verdict import why_not_a_digit

pytest_plugins = ["app_fixtures"]


@pytest.fixture(scope="session")
def client(drawing_weights):
    return TestClient(app.create_app(predict.load_model(drawing_weights)))


def post(client, body, **kwargs):
    return client.post("/api/predict", content=body, **kwargs)


def test_health_says_ok(client):
    response = client.get("/api/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_page_has_the_pad_and_loads_nothing_from_the_network(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<canvas id="pad"' in page and 'id="result"' in page
    assert "http://" not in page and "https://" not in page and "//cdn" not in page


@pytest.mark.parametrize("text", ["7", "4", "2"])
def test_a_drawn_digit_is_read_as_its_most_probable_digit(client, text):
    response = post(client, canvas_png(text))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["number"] == text
    # The whole picture read as one digit: the digit drawn, and the likeliest of the ten.
    assert answer["digit"] == int(text) == argmax(answer["probabilities"])
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-5)
    [digit] = answer["digits"]
    assert digit["digit"] == int(text) == argmax(digit["probabilities"])
    # One digit that is all the ink is the whole picture: one reading, given twice.
    assert digit["probabilities"] == answer["probabilities"]


def test_a_drawn_digit_comes_with_what_the_model_saw_and_where(client):
    [seven] = post(client, canvas_png("7")).json()["digits"]
    assert len(seven["seen"]) == 784 and all(isinstance(v, int) and 0 <= v <= 255 for v in seven["seen"])
    assert max(seven["seen"]) > 200 and seven["seen"][0] == 0
    # The box is the drawn ink in the posted picture's pixels (half the pad's): the strokes'
    # extent plus about half the pen's width.
    xs, ys = (np.array(v) / 2 for v in zip(*strokes_on_pad("7")[0]))
    x0, y0, x1, y1 = seven["box"]
    assert abs(x0 - xs.min()) <= 7 and abs(x1 - xs.max()) <= 7
    assert abs(y0 - ys.min()) <= 7 and abs(y1 - ys.max()) <= 7


def test_a_drawn_number_is_read_left_to_right(client):
    answer = post(client, canvas_png("42")).json()
    assert answer["number"] == "42"
    assert [d["digit"] for d in answer["digits"]] == [4, 2]
    assert all(d["digit"] == argmax(d["probabilities"]) for d in answer["digits"])
    four, two = (d["box"] for d in answer["digits"])
    assert four[2] <= two[0]  # the 4's box ends before the 2's begins
    # The whole picture read as one digit is answered too: as its likeliest digit, or as null
    # with the reason where the verdict declines it (two digits seldom pass for one).
    assert len(answer["probabilities"]) == 10
    reason = why_not_a_digit(answer["probabilities"])
    assert answer["reason"] == reason and answer["digit"] == (None if reason else argmax(answer["probabilities"]))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP"])
def test_photos_in_any_format_pillow_reads_are_read(client, fmt):
    response = post(client, photo_of("7", fmt))
    assert response.status_code == 200 and response.json()["number"] == "7"


@pytest.mark.parametrize("text", ["7", "42"])
def test_the_api_reads_a_picture_as_predict_py_does(client, drawing_weights, tmp_path, text):
    path = tmp_path / "number.png"
    path.write_bytes(canvas_png(text))
    model = predict.load_model(drawing_weights)
    digit, probabilities = predict.predict_with_probabilities(model, path)
    answer = post(client, path.read_bytes()).json()
    assert answer["digit"] == (None if why_not_a_digit(probabilities) else digit)
    assert answer["probabilities"] == pytest.approx(probabilities, abs=1e-6)
    readings = predict.predict_digits(model, path)
    assert answer["number"] == predict.predict_number(model, path) == text
    for reading, answered in zip(readings, answer["digits"], strict=True):
        assert answered["digit"] == reading.digit and answered["box"] == list(reading.box)
        assert answered["probabilities"] == pytest.approx(reading.probabilities, abs=1e-6)
        assert answered["seen"] == app.seen_levels(reading.image)


@pytest.mark.parametrize("body, text", [
    (b"hello, not a picture", "not an image file"),
    (b"", "empty"),
    (canvas_png("7")[:300], "truncated or corrupt"),
])
def test_not_an_image_is_400_with_one_sentence(client, body, text):
    assert_one_sentence(post(client, body), 400, text)


def test_a_form_upload_is_400_saying_to_send_the_bytes(client):
    response = client.post("/api/predict", files={"file": ("seven.png", canvas_png("7"), "image/png")})
    assert_one_sentence(response, 400, "form upload")


def post_through_asgi(client, receive):
    """The messages the app sends for a POST to /api/predict whose body arrives as receive()
    delivers it, called the way a server calls the app: to play clients that hang up or stall."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/predict", "raw_path": b"/api/predict", "root_path": "",
             "query_string": b"", "headers": [(b"content-length", b"1000")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    asyncio.run(asyncio.wait_for(client.app(scope, receive, send), 30))
    return sent


def first_bytes_then(message):
    """A receive() that delivers the first bytes of a body, then message (a coroutine)."""
    delivered = []

    async def receive():
        if not delivered:
            delivered.append(True)
            return {"type": "http.request", "body": b"\x89PNG", "more_body": True}
        return await message()
    return receive


def test_a_client_that_hangs_up_mid_upload_is_no_error(client, caplog):
    """Uvicorn logs every exception an app lets out, with its traceback: a client that goes away
    half-way through sending must not fill the log."""
    async def hang_up():
        return {"type": "http.disconnect"}
    sent = post_through_asgi(client, first_bytes_then(hang_up))
    assert sent[0]["status"] == 400 and "Traceback" not in caplog.text


def test_an_upload_that_stalls_is_408_and_frees_its_connection(client, monkeypatch):
    monkeypatch.setattr(app, "UPLOAD_SECONDS", 0.2)

    async def nothing_more():
        await asyncio.sleep(3600)
    started = time.perf_counter()
    sent = post_through_asgi(client, first_bytes_then(nothing_more))
    assert sent[0]["status"] == 408 and time.perf_counter() - started < 10
    assert b"over 0.2 s to arrive" in sent[1]["body"]


def test_a_drawing_with_no_ink_is_422(client):
    blank = io.BytesIO()
    Image.new("RGB", PAD, "white").save(blank, "PNG")
    assert_one_sentence(post(client, blank.getvalue()), 422, "No digit found")


def test_bodies_over_10_mb_are_413_announced_or_chunked(client):
    too_big = b"x" * (app.MAX_BODY + 1)
    assert_one_sentence(post(client, too_big), 413, "larger than 10 MB")
    # Chunked: no Content-Length, so the bytes are counted as they arrive.
    chunks = (too_big[i:i + 65536] for i in range(0, len(too_big), 65536))
    assert_one_sentence(post(client, chunks), 413, "larger than 10 MB")
    # The limit is 10 MB, not less: exactly that much is read (and is not an image).
    assert_one_sentence(post(client, too_big[:-1]), 400, "not an image")


def test_an_unexpected_failure_is_500_logged_and_the_server_keeps_serving(client, monkeypatch,
                                                                          caplog):
    def broken(model, image, reader=None):
        raise RuntimeError("a bug")
    monkeypatch.setattr(predict, "read_number", broken)
    assert_one_sentence(post(client, canvas_png("7")), 500, "failed")
    assert "a bug" in caplog.text
    monkeypatch.undo()
    assert post(client, canvas_png("7")).json()["number"] == "7"


def test_prediction_runs_off_the_event_loop(client, monkeypatch):
    threads = []
    real = predict.read_number

    def recording(model, image, reader=None):
        try:
            asyncio.get_running_loop()
            threads.append("event loop")
        except RuntimeError:  # no loop runs in this thread: a worker thread
            threads.append("worker thread")
        return real(model, image, reader)
    monkeypatch.setattr(predict, "read_number", recording)
    assert post(client, canvas_png("7")).status_code == 200
    assert threads == ["worker thread"]


def test_a_bar_alone_is_no_digit_with_its_reason_and_box(client):
    """Never a row of 0s: the number is empty, the whole picture is no digit (null), and the
    bar is the one mark left out, boxed where it was drawn (in the posted picture's pixels)."""
    response = post(client, canvas_png("", strokes=[BAR]))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["number"] == "" and answer["digits"] == []
    assert answer["digit"] is None and answer["reason"] == BAR_REASON
    [bar] = answer["left_out"]
    assert bar["reason"] == BAR_REASON
    x0, y0, x1, y1 = bar["box"]
    assert x0 <= 10 + 7 and x1 >= 230 - 7 and y0 <= 80 <= y1 and y1 - y0 <= 20
    assert len(answer["probabilities"]) == 10


def test_a_dash_after_a_number_is_left_out_of_it(client):
    answer = post(client, canvas_png("42-")).json()
    assert answer["number"] == "42" and [d["digit"] for d in answer["digits"]] == [4, 2]
    [dash] = answer["left_out"]
    assert dash["reason"] == BAR_REASON and dash["box"][0] >= answer["digits"][1]["box"][2]


def test_a_drawing_the_verdict_declines_is_null_with_the_reason(client, monkeypatch):
    """The API's "digit" is null exactly where reading.verdict.why_not_a_digit declines the
    whole picture's probabilities, with its reason; a number's digits it declines are marks."""
    def declines(probabilities):
        return f"declined at {max(probabilities):.3f}"
    monkeypatch.setattr(app_reading, "why_not_a_digit", declines)
    answer = post(client, canvas_png("7")).json()
    assert answer["number"] == "7" and answer["digit"] is None
    assert answer["reason"] == declines(answer["probabilities"])
    for module in (reading.cuts, reading.segment):
        monkeypatch.setattr(module, "why_not_a_digit", declines)
    answer = post(client, canvas_png("42")).json()
    assert answer["number"] == "" and answer["digit"] is None
    four, two = answer["left_out"]
    assert four["reason"].startswith("declined at ") and two["reason"].startswith("declined at ")
    assert four["box"][2] <= two["box"][0]


@pytest.mark.parametrize("name", ["bar", "blob", "scribble"])
def test_any_drawing_is_read_within_its_time_on_a_slow_day(client, name):
    """A drawing reads in about the same time whatever is drawn (benchmarks/bench_app.py --shapes
    gives the figures): within 2 s even on a machine many times slower than the 100 ms it takes."""
    strokes = {"bar": [BAR], "blob": [[(240 + 200 * np.cos(t), 160 + 120 * np.sin(t))
                                        for t in np.linspace(0, 2 * np.pi, 40)]],
               "scribble": [[(20 + 440 * ((7 * k) % 23) / 22, 20 + 280 * ((5 * k) % 13) / 12)
                             for k in range(40)]]}[name]
    body = canvas_png("", pen=22 if name != "blob" else 120, strokes=strokes)
    post(client, body)  # timed the second time, as the first of a session pays for set-up
    started = time.perf_counter()
    assert post(client, body).status_code == 200
    assert time.perf_counter() - started < 2.0
