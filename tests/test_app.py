"""Tests of app.py: the API in-process (FastAPI's test client), the server as a real process on a
loopback port, and the page in a real headless Chromium drawing with mouse and touch events.

The model must read drawn digits as a user draws them, which the 3000-image model of the
other tests does not (it reads a drawn 4 as a 6): a CNN is trained for one epoch on 20000
MNIST images with --augment's random distortions and pieces of numbers, once per session (14 s
on a quiet 2-core machine, two to three times that on a loaded one).

    APP_SCREENSHOTS=docs python -m pytest tests/test_app.py -k browser   # refresh docs/app*.png
"""
import asyncio
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

import app
import predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No network at test time: never let Chromium phone home or fetch components.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAD = (480, 320)  # the drawing pad's size in canvas pixels (app.html)

# Digits as pen strokes, in a box 0-1 wide and high (x right, y down).
STROKES = {
    "7": [[(0, 0), (1, 0), (0.35, 1)]],
    "4": [[(0.7, 0), (0, 0.65), (1, 0.65)], [(0.72, 0.3), (0.72, 1)]],
    "2": [[(0.05, 0.25), (0.3, 0), (0.7, 0), (0.95, 0.22), (0.85, 0.5), (0, 1), (1, 1)]],
}


def strokes_on_pad(text, height=200, gap=40):
    """The strokes of the digits of text side by side, centred on the pad, in canvas pixels."""
    width = 0.6 * height
    x = (PAD[0] - len(text) * width - (len(text) - 1) * gap) / 2
    top = (PAD[1] - height) / 2
    strokes = []
    for ch in text:
        strokes += [[(x + u * width, top + v * height) for u, v in s] for s in STROKES[ch]]
        x += width + gap
    return strokes


def canvas_png(text, pen=22):
    """The PNG the page posts for text drawn on the pad: black strokes on white, at half the
    pad's resolution, as app.html sends it."""
    img = Image.new("RGB", PAD, "white")
    for stroke in strokes_on_pad(text):
        ImageDraw.Draw(img).line(stroke, fill="black", width=pen, joint="curve")
    buf = io.BytesIO()
    img.reduce(2).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def reader_weights(train_weights):
    """Weights that read drawn digits: one augmented epoch on 20000 MNIST training images."""
    return train_weights(20000, augment=True)


@pytest.fixture(scope="session")
def client(reader_weights):
    return TestClient(app.create_app(predict.load_model(reader_weights)))


def post(client, body, **kwargs):
    return client.post("/api/predict", content=body, **kwargs)


def assert_one_sentence(response, status, text):
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert text in message
    assert message[0].isupper() and message.endswith(".") and "\n" not in message


# ---------------------------------------------------------------------------------------------
# The API, in-process

def test_health_says_ok(client):
    response = client.get("/api/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_page_has_the_pad_and_loads_nothing_from_the_network(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<canvas id="pad"' in page and 'id="result"' in page
    assert "http://" not in page and "https://" not in page and "//cdn" not in page


def test_a_drawn_digit_is_read(client):
    response = post(client, canvas_png("7"))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["number"] == "7" and answer["digit"] == 7
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-5)
    [seven] = answer["digits"]
    assert seven["digit"] == 7 and max(seven["probabilities"]) == seven["probabilities"][7]
    assert len(seven["seen"]) == 784 and max(seven["seen"]) > 200 and seven["seen"][0] == 0
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
    four, two = (d["box"] for d in answer["digits"])
    assert four[2] <= two[0]  # the 4's box ends before the 2's begins
    assert 0 <= answer["digit"] <= 9 and len(answer["probabilities"]) == 10


def photo_of(text, fmt):
    """The drawing of text as a photo would hand it in: grey ink on tinted paper, in format fmt."""
    drawing = Image.open(io.BytesIO(canvas_png(text))).convert("RGB")
    paper = Image.new("RGB", drawing.size, (235, 225, 200))
    photo = Image.blend(drawing, paper, 0.3)
    buf = io.BytesIO()
    photo.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP"])
def test_photos_in_any_format_pillow_reads_are_read(client, fmt):
    assert post(client, photo_of("7", fmt)).json()["number"] == "7"


@pytest.mark.parametrize("text", ["7", "42"])
def test_the_api_reads_a_picture_as_predict_py_does(client, reader_weights, tmp_path, text):
    path = tmp_path / "number.png"
    path.write_bytes(canvas_png(text))
    model = predict.load_model(reader_weights)
    digit, probabilities = predict.predict_with_probabilities(model, path)
    answer = post(client, path.read_bytes()).json()
    assert answer["digit"] == digit
    assert answer["probabilities"] == pytest.approx(probabilities, abs=1e-6)
    readings = predict.predict_digits(model, path)
    assert answer["number"] == predict.predict_number(model, path)
    for reading, answered in zip(readings, answer["digits"], strict=True):
        assert answered["digit"] == reading.digit and answered["box"] == list(reading.box)
        assert answered["probabilities"] == pytest.approx(reading.probabilities, abs=1e-6)


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
    monkeypatch.setattr(predict, "read_digits", broken)
    assert_one_sentence(post(client, canvas_png("7")), 500, "failed")
    assert "a bug" in caplog.text
    monkeypatch.undo()
    assert post(client, canvas_png("7")).json()["number"] == "7"


def test_prediction_runs_off_the_event_loop(client, monkeypatch):
    threads = []
    real = predict.read_digits

    def recording(model, image, reader=None):
        try:
            asyncio.get_running_loop()
            threads.append("event loop")
        except RuntimeError:  # no loop runs in this thread: a worker thread
            threads.append("worker")
        return real(model, image, reader)
    monkeypatch.setattr(predict, "read_digits", recording)
    assert post(client, canvas_png("7")).status_code == 200
    assert threads == ["worker"]


# ---------------------------------------------------------------------------------------------
# The server as a real process

def start_server(weights, *args):
    """app.py on a free loopback port (--port 0); returns the process and its address."""
    # Started beside the weights, where no number_reader.pt is (one in the repository, which git
    # ignores, would be loaded and change what a developer's run tests).
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "app.py"), "--weights", weights,
                                "--port", "0", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(weights))
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


@pytest.fixture(scope="module")
def server(reader_weights):
    process, url = start_server(reader_weights)
    yield url
    stop_server(process)


def test_server_process_answers_then_ctrl_c_stops_it_with_exit_0(reader_weights):
    process, url = start_server(reader_weights, "--workers", "1")
    try:
        assert httpx.get(url + "api/health", timeout=10).json() == {"status": "ok"}
        answer = httpx.post(url + "api/predict", content=canvas_png("7"), timeout=30).json()
        assert answer["number"] == "7"
    finally:
        code, err = stop_server(process)
    assert code == 0 and "Traceback" not in err, err
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "api/health", timeout=5)


def children(pid):
    """The process ids whose parent is pid (Linux's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                # pid (name) state ppid ...: the name may hold spaces, so split after it.
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def readers_of(process):
    """The reader processes of a server started with --workers N > 1."""
    def is_reader(pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"spawn_main" in f.read()
    return [pid for pid in children(process.pid) if is_reader(pid)]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        utime, stime = f.read().rsplit(")", 1)[1].split()[11:13]
    return int(utime) + int(stime)


def assert_gone(pids, within=10):
    """Every one of pids has ended (and was reaped), within `within` seconds."""
    deadline = time.monotonic() + within
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")], "processes left behind"


def post_in_parallel(url, bodies):
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: httpx.post(url + "api/predict", content=body,
                                                     timeout=60), bodies))


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"),
                                reason="finding a server's processes needs Linux's /proc")


@needs_proc
def test_two_readers_share_the_pictures_and_ctrl_c_stops_them_all(reader_weights):
    process, url = start_server(reader_weights, "--workers", "2")
    try:
        readers = readers_of(process)
        assert len(readers) == 2
        others = set(children(process.pid)) - set(readers)  # multiprocessing's resource tracker
        before = {pid: cpu_ticks(pid) for pid in readers}
        answers = post_in_parallel(url, [canvas_png("7"), canvas_png("42")] * 8)
        assert [a.json()["number"] for a in answers] == ["7", "42"] * 8
        # Both readers did some of the reading (a tick is 10 ms; a picture takes about 20).
        assert all(cpu_ticks(pid) > before[pid] for pid in readers)
    finally:
        code, err = stop_server(process)
    assert code == 0 and "Traceback" not in err, err
    assert_gone(readers + list(others))


def test_reader_processes_get_the_number_reader_too(reader_weights, tmp_path):
    """The number reader travels to the reader processes with the CNN (pickled) and reads there:
    an untrained one reads nonsense, but a picture of touching digits is answered."""
    from reading.number_model import NumberReader
    torch.manual_seed(0)
    torch.save(NumberReader().state_dict(), tmp_path / "reader.pt")
    process, url = start_server(reader_weights, "--workers", "2", "--reader", tmp_path / "reader.pt")
    try:
        answers = post_in_parallel(url, [canvas_png("42"), canvas_png("7")] * 2)
        assert all(a.status_code == 200 and a.json()["number"].isdigit() for a in answers)
    finally:
        code, err = stop_server(process)
    assert code == 0 and "Traceback" not in err, err


@needs_proc
def test_kill_stops_the_server_and_its_readers_as_ctrl_c_does(reader_weights):
    process, url = start_server(reader_weights, "--workers", "2")
    processes = children(process.pid)
    assert httpx.post(url + "api/predict", content=canvas_png("7"), timeout=30).status_code == 200
    process.terminate()
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0 and "Traceback" not in err, err
    assert_gone(processes)


@needs_proc
def test_a_reader_that_dies_costs_at_most_one_answer(reader_weights):
    process, url = start_server(reader_weights, "--workers", "2")
    try:
        dead = readers_of(process)[0]
        os.kill(dead, signal.SIGKILL)
        assert_gone([dead])
        first = httpx.post(url + "api/predict", content=canvas_png("7"), timeout=60)
        if first.status_code != 200:
            assert_one_sentence(first, 500, "failed")
        # A fresh pair of readers takes over.
        answers = post_in_parallel(url, [canvas_png("7")] * 4)
        assert [a.json()["number"] for a in answers] == ["7"] * 4
        assert len(readers_of(process)) == 2 and dead not in readers_of(process)
    finally:
        code, err = stop_server(process)
    assert code == 0, err


def test_workers_must_be_a_positive_count():
    result = run_app("--workers", "0")
    assert result.returncode == 2 and "--workers must be between 1 and 64" in result.stderr


def run_app(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "app.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_missing_or_bad_weights_exit_1_with_one_sentence_before_listening(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not weights")
    for weights, text in [(tmp_path / "none.pt", "python mnist_cnn_model.py"), (junk, "junk.pt")]:
        result = run_app("--weights", weights, "--port", "0")
        assert result.returncode == 1
        assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "http://" not in result.stdout  # it never announced an address


def test_a_port_in_use_exits_1_with_one_sentence(reader_weights):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_app("--weights", reader_weights, "--port", port)
    assert result.returncode == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_oversize_body_is_refused_before_it_is_sent(server):
    """Content-Length says 50 MB and only the headers go out: the answer comes without waiting."""
    host, port = server.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n")
        reply = conn.makefile("rb")
        status = reply.readline().decode()
        headers = dict(line.decode().strip().lower().split(": ", 1)
                       for line in iter(reply.readline, b"\r\n"))
        body = reply.read(int(headers["content-length"])).decode()
    assert status.startswith("HTTP/1.1 413") and "larger than 10 MB" in body


# ---------------------------------------------------------------------------------------------
# The page in a real browser

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
    for i, stroke in enumerate(strokes_on_pad(text)):
        page.mouse.move(*to_page(box, *stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*to_page(box, *point), steps=12)
        if release or i < len(strokes_on_pad(text)) - 1:
            page.mouse.up()


def draw_with_touch(page, text):
    """Finger strokes, as a phone's touch screen sends them (Chromium's DevTools protocol)."""
    cdp = page.context.new_cdp_session(page)
    box = page.locator("#pad").bounding_box()
    for stroke in strokes_on_pad(text):
        points = [stroke[0]]
        for a, b in zip(stroke, stroke[1:]):
            points += [(a[0] + (b[0] - a[0]) * t / 12, a[1] + (b[1] - a[1]) * t / 12)
                       for t in range(1, 13)]
        for i, point in enumerate(points):
            x, y = to_page(box, *point)
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart" if i == 0 else "touchMove",
                                                  "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def reading(page, expected, timeout=15000):
    """Wait until #result shows expected as its reading; returns #result's whole text."""
    page.wait_for_function("t => document.getElementById('reading').textContent === t",
                           arg=expected, timeout=timeout)
    return page.locator("#result").inner_text()


def screenshot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    # APP_SCREENSHOTS=docs refreshes the README's pictures from this very test.
    if os.environ.get("APP_SCREENSHOTS"):
        shutil.copy(path, os.path.join(REPO, os.environ["APP_SCREENSHOTS"], name))
    with Image.open(path) as img:
        assert len(np.unique(np.asarray(img.convert("L")))) > 20  # a rendered page, not blank


def test_browser_reads_a_seven_while_drawing_then_a_number(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    # The size of each drawing the page posts (Chromium does not show a Blob body to Playwright).
    page.add_init_script("""
        const fetchAsSent = window.fetch;
        window.sentSizes = [];
        window.fetch = async (url, options) => {
          if (options && options.body instanceof Blob && options.body.type === "image/png") {
            const bitmap = await createImageBitmap(options.body);
            window.sentSizes.push([bitmap.width, bitmap.height]);
          }
          return fetchAsSent(url, options);
        };""")
    page.goto(server)
    assert reading(page, "draw a digit") == "draw a digit"
    # The reading comes while the mouse button is still down: live, not when the stroke ends.
    draw_with_mouse(page, "7", release=False)
    text = reading(page, "7")
    assert text.endswith("% sure") and 50 <= float(text.split()[1].rstrip("%")) <= 100
    page.mouse.up()
    # The drawing is sent at half the pad's resolution: a quarter of the pixels to read.
    assert page.evaluate("window.sentSizes[0]") == [PAD[0] // 2, PAD[1] // 2]
    assert page.locator("#details .digit").count() == 1
    assert page.locator("#details .bars .col").count() == 10
    page.keyboard.press("Control+z")  # undo the only stroke
    reading(page, "draw a digit")
    draw_with_mouse(page, "42")
    reading(page, "42")
    assert page.locator("#details .digit").count() == 2
    screenshot(page, tmp_path, "app.png")
    page.keyboard.press("Delete")
    reading(page, "draw a digit")
    assert page.locator("#details .digit").count() == 0
    # A chosen photo is read the same way.
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_of("42", "JPEG"))
    page.set_input_files("#photo", str(photo))
    reading(page, "42")
    page.close()


def test_browser_reads_a_finger_drawn_seven_on_a_phone(server, browser, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(server)
    draw_with_touch(page, "7")
    reading(page, "7")
    # A finger on the pad draws instead of scrolling or zooming, and nothing is wider than the
    # phone's screen.
    assert page.evaluate("getComputedStyle(document.getElementById('pad')).touchAction") == "none"
    assert page.evaluate("window.scrollY") == 0
    # The reading shows above the pad, where a drawing hand does not cover it.
    assert page.locator("#result").bounding_box()["y"] < page.locator("#pad").bounding_box()["y"]
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, tmp_path, "app-phone.png")
    context.close()
