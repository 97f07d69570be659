"""
Draw digits in your browser and watch the model read them as you draw; or ask it over HTTP.

    python app.py                                 # then open http://127.0.0.1:8000/
    python app.py --weights mnist_cnn.pt --port 8080
    python app.py --weights mnist_cnn.onnx        # the export (export_onnx.py): no PyTorch needed
    curl --data-binary @photo.jpg http://127.0.0.1:8000/api/predict

Train first (`python mnist_cnn_model.py`; `python number_reader.py` too, for digits drawn so
close that they touch: the number reader, number_reader.pt, is used when it is there). The page
(app.html) is one file with plain JavaScript and CSS and needs no network. The API:

    GET  /api/health    {"status": "ok"}
    POST /api/predict   body: an image file's bytes (any format Pillow reads), at most 10 MB
                        200 {"number": "42", "digits": [{"digit", "probabilities", "box", "seen"}],
                             "left_out": [{"box", "reason"}], "digit": 4 or null,
                             "reason": null or why the picture is not one digit,
                             "probabilities": [ten floats]}
                        400 not an image, 408 over 30 s to arrive, 413 too large,
                        422 no ink, 500 unexpected: {"error": "<one sentence>"}

Every request is read by the same reading/ code as `python predict.py`, so the page and the
command line never disagree about a picture. Pictures are read in --workers worker processes at
once (by default one per CPU core, at most MAX_WORKERS), each with its own copy of the model and the number reader.

Reading one uploaded picture is in app_reading.py; here, in order: the worker processes, the web
app, and the command line (main). "number" holds the digits alone: marks that are not digits
(letters, a unit, a dash, a scribble) are in "left_out", each with its box and reason; a picture
of such marks alone is answered with "number" empty and "digit" null.
"""
import argparse
import asyncio
import errno
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect

import predict

# read_picture and what it uses are app's too: the tests and the worker processes find them here.
from app_reading import open_upload, read_picture, seen_levels, warm_up  # noqa: F401
from reading.runtime import reader_weights

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.html")
# A phone photo is a few MB; ten is plenty and bounds the memory one request can take.
MAX_BODY = 10 * 1024 * 1024
# A photo crosses a local network in well under a second; an upload that stalls for this long
# would otherwise hold its connection open for good.
UPLOAD_SECONDS = 30
# Each worker process holds its own runtime (torch or ONNX Runtime) and models in memory, and a
# page for people to draw on needs few of them.
MAX_WORKERS = 4

log = logging.getLogger("app")


# ---------------------------------------------------------------------------------------------
# Worker processes: reading a picture is Python work that holds the GIL, so threads of one
# process read one picture at a time however many cores there are.

_worker_models = None  # in a worker process, its copy of the model and of the number reader


def _start_worker(pickled_models, ready):
    global _worker_models
    _worker_models = pickle.loads(pickled_models)
    # One process per core already keeps the cores busy; more threads would only fight them.
    _one_thread()
    warm_up(*_worker_models)
    _spare_from_garbage_collection()
    # The server stops its worker processes, but if it is killed they must not linger: the pipe
    # they were started through closes when it ends, whatever ends it.
    threading.Thread(target=_exit_with_server, daemon=True).start()
    ready.wait()  # the server announces its address once every worker has its models


def _one_thread():
    # PyTorch's intra-op threads, where the models are PyTorch's (loading them imported torch);
    # ONNX Runtime's sessions are opened with one thread (reading/runtime.py). torch is looked up,
    # not imported: reading .onnx models must never import it.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _spare_from_garbage_collection():
    # torch or ONNX Runtime, NumPy and FastAPI leave a great many objects that live as long as the
    # process; the first full garbage collection that walks them all would stall a request. Set
    # them aside: only objects made later are collected.
    gc.collect()
    gc.freeze()


def _exit_with_server():
    multiprocessing.parent_process().join()
    os._exit(0)


def _read_in_worker(data):
    model, reader = _worker_models
    return read_picture(model, data, reader)


class WorkerPool:
    """count worker processes that read pictures in parallel, each with its own copy of model
    (and of the number reader, when given). If one dies (killed, out of memory), its request
    fails with a 500 and a fresh set is started."""

    def __init__(self, model, count, reader=None):
        self.pickled_models = pickle.dumps((model, reader))
        self.count = count
        self.pool, self.started = self._start()

    def _start(self):
        context = multiprocessing.get_context("spawn")  # fork would copy the server's threads
        pool = ProcessPoolExecutor(self.count, context, initializer=_start_worker,
                                   initargs=(self.pickled_models, context.Barrier(self.count)))
        # Ctrl-C in a terminal reaches every process of its group; the workers ignore it (they
        # inherit that while they are started here) and are stopped by the server instead.
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:
            # The pool starts a process for each task it has no idle process for.
            started = [pool.submit(os.getpid) for _ in range(self.count)]
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        return pool, started

    def wait_until_ready(self):
        """The worker processes' ids, once all have loaded the models; raises BrokenProcessPool
        if one failed to start."""
        return [future.result() for future in self.started]

    async def read(self, data):
        pool = self.pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _read_in_worker, data)
        except BrokenProcessPool:
            if pool is self.pool:
                log.error("A worker process died; starting them again")
                self.pool, self.started = self._start()
                pool.shutdown(wait=False)
            raise

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


def default_workers():
    """One worker process per CPU core this process may run on, at most MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


# ---------------------------------------------------------------------------------------------
# The web app

def error_response(status, message):
    return JSONResponse({"error": message}, status_code=status)


def _sentence(error):
    # predict's messages name "the image" mid-sentence; an answer on its own starts with a capital.
    text = str(error)
    return text[:1].upper() + text[1:]


def too_large():
    return error_response(413, f"The image is larger than {MAX_BODY // (1024 * 1024)} MB: "
                               f"send a smaller file.")


async def _body(request):
    """The request body, or None once it is over MAX_BODY."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)


async def receive_upload(request):
    """The request body's bytes, or the Response that refuses it."""
    # Refuse an announced oversize body before reading any of it, and count the bytes of a
    # chunked one (no Content-Length) as they arrive, so no client can make us hold more.
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        return too_large()
    try:
        body = await asyncio.wait_for(_body(request), UPLOAD_SECONDS)
    except asyncio.TimeoutError:  # the built-in TimeoutError from Python 3.11 on; not before
        return error_response(408, f"The picture took over {UPLOAD_SECONDS} s to arrive: send it "
                                   f"again.")
    except ClientDisconnect:  # nobody is left to answer, and nothing went wrong here
        return Response(status_code=400)
    return too_large() if body is None else body


def create_app(model, pool=None, reader=None):
    """The FastAPI app serving the page and the API: pictures are read with an already loaded
    model (and number reader, when given) in this process's threads, or by the worker processes
    of pool (a WorkerPool) when given."""
    # No /docs or /redoc: FastAPI's pages for them load scripts from a CDN, and this app must
    # work with no network.
    app = FastAPI(title="MNIST digit recogniser", docs_url=None, redoc_url=None)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/api/health")
    def health():
        # The model is loaded before the app exists, so answering at all means ready.
        return {"status": "ok"}

    @app.post("/api/predict")
    async def read(request: Request):
        body = await receive_upload(request)
        if isinstance(body, Response):
            return body
        try:
            # Preprocessing and the network are CPU work: in a worker thread or process the
            # event loop stays free to accept and answer other requests meanwhile.
            if pool is not None:
                answer = await pool.read(body)
            else:
                answer = await run_in_threadpool(read_picture, model, body, reader)
        except predict.NoDigitError as error:
            return error_response(422, _sentence(error))
        except predict.PredictError as error:
            return error_response(400, _sentence(error))
        except Exception:
            log.exception("Reading a picture failed unexpectedly")
            return error_response(500, "The server failed to read this picture; the details "
                                       "are in its log.")
        # The answer holds only JSON's own types: returned as a dict, FastAPI would first walk
        # its thousand values through jsonable_encoder, to the same bytes.
        return JSONResponse(answer)

    return app


# ---------------------------------------------------------------------------------------------
# Command line

def listen(host, port):
    """A socket listening on host:port. Bound here rather than by uvicorn so that a port in use
    is one sentence and exit 1, and so that --port 0 can print the port the system chose."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise OSError(f"{host} is not a host name or address this machine has.") from error
    sock = socket.socket(family, kind, proto)
    # Lets a restarted server take its port back at once instead of after TIME_WAIT; it does
    # not let two servers listen on the same port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise OSError(f"Port {port} on {host} is already in use: stop the program using it "
                          f"or choose another port with --port.") from error
        raise OSError(f"Cannot listen on {host} port {port}: {error.strerror}.") from error
    return sock


def url_of(sock):
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Serve a page to draw digits on and see them read live, and an HTTP API.")
    parser.add_argument("--weights", default=predict.DEFAULT_WEIGHTS,
                        help=f"trained weights from mnist_cnn_model.py, or their export by export_onnx.py "
                             f"(a .onnx file: read by ONNX Runtime, no PyTorch needed) (default: "
                             f"{predict.DEFAULT_WEIGHTS})")
    parser.add_argument("--reader", metavar="WEIGHTS",
                        help=f"the number reader from number_reader.py, which reads digits that "
                             f"touch, .pt or .onnx (default: {predict.DEFAULT_READER} if it exists; "
                             f"number_reader.onnx with .onnx weights)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; only this machine can connect to the default "
                             "(default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port to listen on, 0 for any free one (default: 8000)")
    parser.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                        help=f"worker processes reading pictures at once; 1 reads them in the "
                             f"server's own process (default: one per CPU core, at most "
                             f"{MAX_WORKERS}: {default_workers()} here)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, not {args.port}")
    if not 1 <= args.workers <= 64:
        parser.error(f"--workers must be between 1 and 64, not {args.workers}")
    return args


def load_models(weights, given_reader):
    """(the CNN, the number reader or None): the number reader from given_reader, or from
    DEFAULT_READER when that file is there. Raises PredictError."""
    model = predict.load_model(weights)
    path = reader_weights(given_reader, weights)
    return model, None if path is None else predict.load_reader(path)


def serve(sock, app):
    """Serve app on sock until Ctrl-C or `kill`."""
    # uvicorn's access log would print a line for every stroke drawn; warnings and errors only.
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    _spare_from_garbage_collection()  # the app's own routes and models included
    print(f"Open {url_of(sock)} in your browser to draw digits (Ctrl-C stops the server).",
          flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down cleanly on Ctrl-C (or `kill`), then raises it again for the caller:
        # done.
        pass


def main(argv=None):
    args = parse_args(argv)
    try:
        model, reader = load_models(args.weights, args.reader)
    except predict.PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        sock = listen(args.host, args.port)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    # Requests are served by several threads at once; one intra-op thread each keeps them from
    # fighting over the cores (one small picture gains nothing from more).
    _one_thread()
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO)
    pool = None
    try:
        if args.workers > 1:
            pool = WorkerPool(model, args.workers, reader)
            try:
                pool.wait_until_ready()
            except BrokenProcessPool:
                print(f"error: the {args.workers} worker processes could not start; try "
                      f"--workers 1.", file=sys.stderr)
                return 1
        else:
            warm_up(model, reader)
        serve(sock, create_app(model, pool, reader))
    finally:
        sock.close()
        if pool is not None:
            pool.close()
    print("Server stopped.")
    return 0


if __name__ == "__main__":
    # `kill` stops the server as Ctrl-C does: requests in flight are answered, the worker
    # processes stopped, exit status 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while loading, before the server took over the signal
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
