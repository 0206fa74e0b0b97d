"""`scripts/serve.py`: serve a trained run over HTTP with LitServe (mtl/inference/serve.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mtl.errors import MTLError
from mtl.inference.serve import BACKENDS, Limits, serve
from mtl.runtime import setup_logging


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
