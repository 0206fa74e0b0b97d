"""`scripts/serve.py`: serve a trained run over HTTP with LitServe (mtl/inference/serve.py)."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from mtl.errors import MTLError
from mtl.inference.serve import BACKENDS, Limits, serve
from mtl.runtime import setup_logging


@contextmanager
def children_stop_with_server():
    """On SIGTERM, as on Ctrl+C, stop the processes the server starts, and free its port.

    LitServe 0.2.19 shuts its API servers and inference workers down on KeyboardInterrupt only:
    a SIGTERM killed the main process and left its workers answering on the port. Here SIGTERM
    (and SIGINT) becomes KeyboardInterrupt, and every child started inside the block that is still alive
    afterwards (say, one started before LitServe's own shutdown could run) is terminated, then
    killed. Signal handlers can only be set in the main thread; elsewhere only the sweep runs.
    """
    main = os.getpid()
    before = set(multiprocessing.active_children())
    in_main_thread = threading.current_thread() is threading.main_thread()

    def interrupt(signum, frame):
        if os.getpid() != main:  # a forked API server inherits this handler: die as before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for stop in (signal.SIGTERM, signal.SIGINT):  # one shutdown, not a second mid-way
            signal.signal(stop, signal.SIG_IGN)
        raise KeyboardInterrupt

    if in_main_thread:
        # SIGINT takes the same path: with Python's default handler a forked API server that got
        # it too (Ctrl+C reaches the whole group) shut down gracefully on its own, and once in
        # a full test run the main process then waited on it for over a minute
        previous = signal.signal(signal.SIGTERM, interrupt), signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sweep below runs to its end
        children = [c for c in multiprocessing.active_children() if c not in before]
        for child in children:
            child.terminate()
        for child in children:
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join(5)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


def main(argv: list[str] | None = None) -> int:
    """`scripts/serve.py RUN --backend {torch,onnx} --port N`."""
    parser = argparse.ArgumentParser(
        description='Serve a trained run over HTTP (LitServe): POST /predict {"texts": [...]}.',
        epilog="example: serve.py checkpoints/default --backend onnx --port 8000",
    )
    parser.add_argument("run_dir", type=Path, help="run folder, checkpoints/<run>")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument(
        "--onnx-model",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="auto: int8 if exported",
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--max-batch-size", type=int, default=16, help="requests per batch")
    parser.add_argument(
        "--batch-timeout", type=float, default=0.005, help="seconds to wait to fill a batch"
    )
    parser.add_argument("--max-texts", type=int, default=Limits.max_texts)
    parser.add_argument("--max-chars", type=int, default=Limits.max_chars)
    parser.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    args = parser.parse_args(argv)
    if min(args.max_batch_size, args.max_texts, args.max_chars, args.max_body_bytes) < 1:
        parser.error("--max-batch-size and the limits must be positive")
    setup_logging(logging.WARNING)
    try:
        with children_stop_with_server():
            serve(
                args.run_dir,
                backend=args.backend,
                onnx_model=args.onnx_model,
                host=args.host,
                port=args.port,
                accelerator=args.accelerator,
                max_batch_size=args.max_batch_size,
                batch_timeout=args.batch_timeout,
                limits=Limits(args.max_texts, args.max_chars, args.max_body_bytes),
            )
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
