"""scripts/serve.py on a free localhost port: real HTTP requests (good, bad, concurrent) against
an ONNX and a PyTorch backend, on a run whose tasks are not the default three; the load test."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO, make_topics, tiny_overrides, topic_task

from mtl.cli.loadtest import main as loadtest_main
from mtl.config import load_config
from mtl.harness.loadtest import ServerProcess, load_test, post
from mtl.inference.export import export_run
from mtl.inference.onnx_predict import OnnxPredictor
from mtl.inference.predictor import Predictor
from mtl.inference.serve import Limits, check_request
from mtl.run.train import train

LIMITS = ["--max-texts", "4", "--max-chars", "300", "--max-body-bytes", "4000"]


@pytest.fixture(scope="module")
def run(tiny_backbone, data_dir, tmp_path_factory) -> Path:
    """A multiclass topic task and the multi-label emotion task; exported with int8."""
    out = tmp_path_factory.mktemp("serve_run")
    make_topics(90, 5).to_csv(out / "topics.csv", index=False)
    cfg = load_config(
        REPO / "configs" / "default.yaml",
        tiny_overrides(tiny_backbone, data_dir, out)
        + [
            "tasks.toxicity=null",
            "tasks.sentiment=null",
            *topic_task(out / "topics.csv"),
            "trainer.max_epochs=1",
        ],
    )
    train(cfg)
    run = out / cfg.run.name
    # a one-epoch tiny random model sits near its cuts, so int8 may flip a few labels: this
    # fixture serves parity and serving tests; the agreement gate has its own (test_export_r2)
    export_run(run, quantize="int8", force=True)
    return run


TEXTS = ["happy wow the movie", "idiot trash", "", "thanks friend nice", "scared sad okay"]


def close(a: list[dict], b: list[dict], tol: float) -> bool:
    for x, y in zip(a, b, strict=True):
        assert x["text"] == y["text"]
        for task in ("topic", "emotion"):
            assert x[task].get("label") == y[task].get("label")
            assert x[task].get("labels") == y[task].get("labels")
            for c, p in x[task]["probabilities"].items():
                assert abs(y[task]["probabilities"][c] - p) <= tol
    return True


def expected_records(predictor, texts):
    from mtl.inference.records import prediction_records

    return prediction_records(texts, predictor, predictor.predict_proba(texts))


def test_onnx_server_answers_good_and_bad_requests_and_keeps_serving(run, data_dir, tmp_path):
    local = OnnxPredictor.from_export(run, model="fp32", device="cpu")
    with ServerProcess(run, "--backend", "onnx", "--onnx-model", "fp32", *LIMITS) as server:
        with urllib.request.urlopen(server.url + "/health", timeout=5) as response:
            assert response.status == 200 and response.read() == b"ok"
        status, body = post(server.url + "/predict", {"texts": TEXTS[:2]})
        assert status == 200
        assert close(body["predictions"], expected_records(local, TEXTS[:2]), 1e-5)
        record = body["predictions"][1]
        assert set(record["topic"]["probabilities"]) == {"calm", "positive", "toxic"}
        assert isinstance(record["emotion"]["labels"], list)
        # what `curl -d` sends: a form Content-Type over a JSON body
        status, body = post(
            server.url + "/predict",
            b'{"texts": ["wow"]}',
            content_type="application/x-www-form-urlencoded",
        )
        assert status == 200 and len(body["predictions"]) == 1
        bad = [
            (b'{"texts": ["unclosed"', 400, "not valid JSON"),
            (b"\xff\xfe", 400, "not UTF-8"),
            (b'["a list"]', 422, "must be an object"),
            (b'{"text": ["hi"]}', 422, "Unknown key"),
            (b'{"texts": "hi"}', 422, "list of strings"),
            (b'{"texts": []}', 422, "empty"),
            (b'{"texts": ["ok", 3]}', 422, "texts[1] is a int"),
            (json.dumps({"texts": ["a"] * 5}).encode(), 413, "limit is 4"),
            (json.dumps({"texts": ["x" * 301]}).encode(), 413, "texts[0] has 301 characters"),
            (json.dumps({"texts": ["y" * 250] * 4 + ["z" * 3500]}).encode(), 413, "4000"),
        ]
        for payload, code, words in bad:
            status, body = post(server.url + "/predict", payload)
            assert status == code and words in body["error"], (payload[:40], status, body)
        status, body = post(server.url + "/predict", {"texts": TEXTS})
        assert status == 413  # five texts: over the limit of four
        status, body = post(server.url + "/predict", {"texts": TEXTS[1:]})
        assert status == 200 and len(body["predictions"]) == 4  # still serving

        # concurrent clients are batched together; each answer is still its own texts'
        answers: dict[int, list] = {}

        def client(k: int) -> None:
            texts = [TEXTS[k % len(TEXTS)], TEXTS[(k + 2) % len(TEXTS)]]
            answers[k] = [texts, post(server.url + "/predict", {"texts": texts})]

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(answers) == list(range(8))
        for texts, (status, body) in answers.values():
            assert status == 200
            assert close(body["predictions"], expected_records(local, texts), 1e-5)

        result = load_test(server.url, TEXTS, clients=4, requests=10, texts_per_request=2)
        assert result["errors"] == 0 and result["requests"] == 40
        assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
        out = tmp_path / "load.json"
        argv = ["--url", server.url, "--clients", "2", "--requests", "3", "--out", str(out)]
        assert loadtest_main(argv + ["--input", str(data_dir / "toxicity_val.csv")]) == 0
        assert json.loads(out.read_text())["requests"] == 6
        process = server.process
    assert process.poll() is not None  # the server and its workers are gone


def test_torch_server_equals_predictor(run):
    local = Predictor.from_run(run, device="cpu")
    with ServerProcess(run, "--backend", "torch", "--accelerator", "cpu") as server:
        status, body = post(server.url + "/predict", {"texts": TEXTS})
        assert status == 200
        assert close(body["predictions"], expected_records(local, TEXTS), 1e-5)


def test_int8_server_answers_like_the_int8_predictor(run):
    # dynamic int8 quantizes activations with one scale per batch, so an int8 answer moves a
    # little (here ~1e-3) with the texts it is batched with; alone it is the local answer
    local = OnnxPredictor.from_export(run, device="cpu")
    assert local.model_kind == "int8"
    with ServerProcess(run, "--backend", "onnx", "--max-batch-size", "1") as server:
        for text in TEXTS:
            status, body = post(server.url + "/predict", {"texts": [text]})
            assert status == 200
            assert close(body["predictions"], expected_records(local, [text]), 1e-5)


def test_request_checks_name_the_problem():
    limits = Limits(max_texts=2, max_chars=5, max_body_bytes=100)
    assert check_request(b'{"texts": ["hello"]}', limits) is None
    assert check_request(b'{"texts": ["hello!"]}', limits)[0] == 413
    assert check_request(b'{"texts": null}', limits) == (
        422,
        "'texts' must be a list of strings; it is missing.",
    )


def test_serve_refuses_a_run_without_an_export(tmp_path, capsys):
    from mtl.cli.serve import main

    assert main([str(tmp_path), "--backend", "onnx"]) == 2
    assert "No ONNX export" in capsys.readouterr().err
