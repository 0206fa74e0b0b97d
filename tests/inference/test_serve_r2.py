"""Issue 22, serving side: one bad request among good ones fails alone (item 14), a failing model
answers an error rather than NaN (item 12), and SIGTERM / SIGINT to serve.py stop every process
it started and free the port (item 16). Loopback only; every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mtl.errors import PredictError
from mtl.harness.loadtest import ServerProcess, post
from mtl.inference.checks import NonFiniteError
from mtl.inference.onnx_predict import OnnxPredictor
from mtl.inference.predictor import Predictor
from mtl.inference.records import prediction_records
from mtl.inference.serve import Failure, Limits, RunAPI, check_request

GOOD = ["happy wow the movie", "idiot trash", "thanks friend nice", "scared sad okay", "", "hi"]


@pytest.fixture(scope="module")
def run(blended_export) -> Path:
    return blended_export.parent


def expected(predictor, texts):
    return prediction_records(texts, predictor, predictor.predict_proba(texts))


def same_records(got: list[dict], want: list[dict]) -> None:
    assert [r["text"] for r in got] == [r["text"] for r in want]
    for a, b in zip(got, want, strict=True):
        for task, answer in b.items():
            if task == "text":
                continue
            assert a[task].get("label") == answer.get("label")
            assert a[task].get("labels") == answer.get("labels")
            probs = list(answer["probabilities"].values())
            np.testing.assert_allclose(list(a[task]["probabilities"].values()), probs, atol=1e-5)


# --- item 14: one bad request among good ones --------------------------------------------------


def test_a_request_with_a_lone_surrogate_fails_alone_among_concurrent_good_ones(run):
    local = Predictor.from_run(run, device="cpu")
    bodies = [{"texts": [GOOD[k % 6], GOOD[(k + 1) % 6]]} for k in range(6)]
    bodies[2] = {"texts": ["fine", "\ud800"]}  # passed the old guard; the tokenizer raised
    bodies[4] = {"texts": ["caf\udcff"]}  # a non-UTF-8 byte, as Python keeps it
    answers: dict[int, tuple] = {}
    # a long batch timeout: the requests are batched together, as in the probe (21 of 30)
    batching = ("--max-batch-size", "8", "--batch-timeout", "0.3", "--accelerator", "cpu")
    with ServerProcess(run, "--backend", "torch", *batching) as server:

        def client(k: int) -> None:
            answers[k] = post(server.url + "/predict", json.dumps(bodies[k]).encode())

        threads = [threading.Thread(target=client, args=(k,)) for k in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        status, body = post(server.url + "/predict", {"texts": GOOD[:2]})
        assert status == 200  # still serving
    assert sorted(answers) == list(range(len(bodies)))
    for k, (status, body) in answers.items():
        if k == 2:
            assert status == 422 and body["error"].startswith("texts[1] is not Unicode text")
            assert "U+D800" in body["error"]
        elif k == 4:
            assert status == 422 and "texts[0]" in body["error"] and "0xff" in body["error"]
        else:
            assert status == 200, (k, body)
            same_records(body["predictions"], expected(local, bodies[k]["texts"]))


def test_the_request_guard_refuses_a_text_that_is_not_unicode():
    body = json.dumps({"texts": ["fine", "ok \ud83d"]}).encode()  # half of an emoji's pair
    status, message = check_request(body, Limits())
    assert status == 422 and message.startswith("texts[1] is not Unicode text: character 4")
    assert check_request(json.dumps({"texts": ["ok \ud83d\ude00"]}).encode(), Limits()) is None


def test_a_batch_that_fails_answers_each_request_on_its_own(run):
    """Whatever makes a batch fail, LitServe would fail all its requests: each is retried alone,
    and only one that fails alone gets an error (500 for the model's fault, 422 for the text's)."""
    api = RunAPI(run, "torch", "auto", max_batch_size=8, batch_timeout=0.01)
    api.predictor = Predictor.from_run(run, device="cpu")
    fold_probabilities = api.predictor.fold_probabilities

    def fails_on_some_texts(texts, *args, **kwargs):
        if "boom" in texts:
            raise RuntimeError("the tokenizer fell over")
        if "nan" in texts:
            raise NonFiniteError("Model 1 of 2 gave non-finite probabilities ...")
        if "bad" in texts:
            raise PredictError("text 1 is not Unicode ...")
        return fold_probabilities(texts, *args, **kwargs)

    api.predictor.fold_probabilities = fails_on_some_texts
    requests = [GOOD[:2], ["boom"], GOOD[2:5], ["nan", "ok"], ["bad"], GOOD[5:]]
    answers = api.unbatch(api.predict(api.batch(requests)))
    assert len(answers) == len(requests)
    for request, answer in zip(requests, answers, strict=True):
        if request[0] in ("boom", "nan", "bad"):
            assert isinstance(answer, Failure)
            response = api.encode_response(answer)
            error = json.loads(response.body)["error"]
            want = {"boom": (500, "RuntimeError: the tokenizer fell over"),
                    "nan": (500, "non-finite"), "bad": (422, "not Unicode")}[request[0]]  # fmt: skip
            assert response.status_code == want[0] and want[1] in error
        else:
            same_records(
                api.encode_response(answer)["predictions"], expected(api.predictor, request)
            )


def test_every_backend_refuses_texts_that_are_not_strings_or_not_unicode(run, blended_export):
    """Item 18 / 21: a number or object is not stringified, a lone surrogate not tokenized."""
    for predictor in (
        Predictor.from_run(run, device="cpu"),
        OnnxPredictor.from_export(blended_export, model="fp32", device="cpu"),
    ):
        with pytest.raises(PredictError, match=r"text 2 is of type dict"):
            predictor.predict_proba(["hello", {"a": 1}])
        with pytest.raises(PredictError, match=r"text 1: character 1 is U\+D800"):
            predictor.predict_proba(["\ud800"])


# --- item 16: signals stop every child ---------------------------------------------------------


def group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, read from /proc."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(int(entry.name))
    return alive


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a listener
        try:
            sock.bind(("0.0.0.0", port))  # LitServe listens on every interface
        except OSError:
            return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_serve_stops_every_child_and_frees_the_port(run, signum):
    with ServerProcess(run, "--backend", "onnx", "--onnx-model", "fp32") as server:
        main = server.process.pid  # the leader of its own session and process group
        assert len(group_alive(main)) > 2  # LitServe's API server, inference worker, manager
        os.kill(main, signum)  # the main process only, as `kill PID` or a supervisor does
        try:
            server.process.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve.py still running 60 s after {signum.name}:\n{server.output()}")
        deadline = time.monotonic() + 30
        while group_alive(main) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = group_alive(main)
        assert not left, f"processes left after {signum.name}: {left}\n{server.output()}"
        assert port_is_free(server.port)
