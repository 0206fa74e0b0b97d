"""A bounded load test of the HTTP API: concurrent clients, a fixed number of requests each.

    python scripts/loadtest.py checkpoints/default --backend onnx --clients 8 --requests 200
    python scripts/loadtest.py --url http://127.0.0.1:8000 --clients 8 --requests 200

With a run folder it starts `scripts/serve.py` on a free localhost port, waits for /health,
measures, and stops the server (its whole process group); with --url it measures a server that
is already up. Each client keeps one connection and sends its requests back to back; texts come
from --input (default: the bundled sample's val files), cycled. Reports throughput (requests/s,
texts/s), latency p50 / p90 / p99 / max, and every error; exit code 1 when any request failed.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SAMPLE_TEXTS = [
    REPO / "data" / "sample" / f"{t}_val.csv" for t in ("toxicity", "emotion", "sentiment")
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`scripts/serve.py RUN ARGS` on a free localhost port, as a context manager.

    Started in its own session so that leaving the block ends the server and the workers it
    spawned (SIGTERM to the process group, SIGKILL after `grace` seconds). Offline: the
    Hugging Face libraries are told not to reach the network.
    """

    def __init__(
        self, run_dir: str | Path, *args: str, ready_timeout: float = 120, grace: float = 10
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, str(REPO / "scripts" / "serve.py"), str(run_dir)]
        self.argv += ["--port", str(self.port), *args]
        self.ready_timeout, self.grace = ready_timeout, grace

    def __enter__(self) -> ServerProcess:
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.process = subprocess.Popen(
            self.argv, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server was not ready in {self.ready_timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(self.grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(self.grace)
        try:  # workers that outlived the main process
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


def post(url: str, body: bytes | dict, timeout: float = 30, content_type: str = "application/json"):
    """(status, parsed JSON body) of one POST."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def load_test(
    url: str, texts: list[str], clients: int = 8, requests: int = 200, texts_per_request: int = 1,
    timeout: float = 60,
) -> dict:  # fmt: skip
    """`clients` threads, each sending `requests` POST /predict back to back on one connection."""
    target = urlparse(url)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def client(k: int) -> None:
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=timeout)
        for i in range(requests):
            start = (k * requests + i) * texts_per_request
            batch = [texts[(start + j) % len(texts)] for j in range(texts_per_request)]
            body = json.dumps({"texts": batch})
            began = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                if response.status != 200 or len(json.loads(payload)["predictions"]) != len(batch):
                    errors.append(f"HTTP {response.status}: {payload[:200]!r}")
            except (OSError, http.client.HTTPException, ValueError, KeyError) as err:
                errors.append(f"{type(err).__name__}: {err}")
                connection.close()
                connection = http.client.HTTPConnection(
                    target.hostname, target.port, timeout=timeout
                )
            latencies[k].append(time.perf_counter() - began)
        connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    ms = np.array([x for part in latencies for x in part]) * 1000
    total = clients * requests
    return {
        "clients": clients,
        "requests_per_client": requests,
        "texts_per_request": texts_per_request,
        "requests": total,
        "errors": len(errors),
        "error_examples": errors[:5],
        "seconds": round(seconds, 2),
        "requests_per_s": round(total / seconds, 1),
        "texts_per_s": round(total * texts_per_request / seconds, 1),
        "latency_ms": {
            q: round(float(np.percentile(ms, p)), 1)
            for q, p in (("p50", 50), ("p90", 90), ("p99", 99))
        }
        | {"max": round(float(ms.max()), 1), "mean": round(float(ms.mean()), 1)},
    }


def read_texts(paths: list[Path], column: str = "text", limit: int = 2000) -> list[str]:
    import pandas as pd

    texts = [t for p in paths for t in pd.read_csv(p)[column].astype(str).tolist()]
    return texts[:limit]
