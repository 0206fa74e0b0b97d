"""`scripts/loadtest.py`: bounded localhost load test of the HTTP API (mtl/harness/loadtest.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtl.harness.loadtest import SAMPLE_TEXTS, ServerProcess, load_test, read_texts


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description="Bounded localhost load test of scripts/serve.py.")
    parser.add_argument("run_dir", nargs="?", type=Path, help="start a server for this run")
    parser.add_argument("--url", help="measure a server already running here instead")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="onnx")
    parser.add_argument("--onnx-model", choices=("auto", "fp32", "int8"), default="auto")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument(
        "--input", type=Path, action="append", help="CSV(s) of texts (default: sample val)"
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if (args.run_dir is None) == (args.url is None):
        parser.error("give a run folder (a server is started) or --url (one already running)")
    texts = read_texts(args.input or SAMPLE_TEXTS, args.text_column)
    settings = dict(
        clients=args.clients, requests=args.requests, texts_per_request=args.texts_per_request
    )
    if args.url:
        result = load_test(args.url, texts, **settings)
    else:
        server_args = ["--backend", args.backend, "--onnx-model", args.onnx_model]
        server_args += ["--max-batch-size", str(args.max_batch_size)]
        with ServerProcess(args.run_dir, *server_args) as server:
            load_test(server.url, texts, clients=2, requests=5)  # warm-up, not counted
            result = load_test(server.url, texts, **settings)
        result["server"] = {
            "run": str(args.run_dir),
            **dict(zip(server_args[::2], server_args[1::2], strict=True)),
        }
    result["command"] = "python scripts/loadtest.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from mtl.io import write_json  # atomic; imported here to keep the client light

        write_json(args.out, result)
    return 1 if result["errors"] else 0
