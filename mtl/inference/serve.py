"""An HTTP JSON API for a trained run, on LitServe: POST /predict, GET /health, GET /info.

    python scripts/serve.py checkpoints/default --backend onnx --port 8000
    curl -s localhost:8000/predict -d '{"texts": ["I love this", "you idiot"]}'

POST /predict takes {"texts": [str, ...]} and answers {"predictions": [...]}: per text the same
record as `scripts/predict.py --format json` (text; per task the probability of every class by
name and the label, or for multi-label tasks the list of labels). Requests from different
clients that arrive within `batch_timeout` of each other run as one batch (LitServe's batching,
up to `max_batch_size` requests); each request is blended on its own (`Predictor.blend`), so
no blend method can make its answer depend on what it was batched with.

A request is checked before it reaches the model (`RequestGuard`): a body over `max_body_bytes`
is refused with 413 as soon as it is that long, malformed JSON gets 400, a wrong shape or a text
that is not Unicode (a lone surrogate, "\ud800") 422, too many texts or too long a text 413;
each as {"error": "..."} naming the problem. A bad request never joins a batch. Should a batch
fail anyway, each of its requests is predicted alone, so only the one that fails alone gets an
error (`RunAPI.predict`). `scripts/serve.py` stops every process it started on SIGTERM too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import litserve as ls

from mtl.errors import PredictError, first_line
from mtl.inference.checks import NonFiniteError
from mtl.portable_model import lone_surrogate

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")


@dataclass(frozen=True)
class Limits:
    max_texts: int = 64  # texts per request
    max_chars: int = 5_000  # characters per text (the model reads max_length tokens anyway)
    max_body_bytes: int = 1_000_000


def check_request(body: bytes, limits: Limits) -> tuple[int, str] | None:
    """None for a good /predict body, else (HTTP status, message naming the problem)."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        return 400, 'The request body is not UTF-8 text; send JSON like {"texts": ["..."]}.'
    except ValueError as err:
        return 400, f'The request body is not valid JSON ({err}); send {{"texts": ["..."]}}.'
    if not isinstance(payload, dict):
        return (
            422,
            f'The JSON body must be an object {{"texts": [...]}}, got {type(payload).__name__}.',
        )
    unknown = sorted(set(payload) - {"texts"})
    if unknown:
        return 422, f'Unknown key(s) {unknown}; the body is {{"texts": ["...", ...]}}.'
    texts = payload.get("texts")
    if not isinstance(texts, list):
        found = "missing" if texts is None else f"a {type(texts).__name__}"
        return 422, f"'texts' must be a list of strings; it is {found}."
    if not texts:
        return 422, "'texts' is empty; send at least one text."
    if len(texts) > limits.max_texts:
        return 413, f"{len(texts)} texts in one request; the limit is {limits.max_texts}."
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            return 422, f"texts[{i}] is a {type(text).__name__}; every text must be a string."
        if len(text) > limits.max_chars:
            return 413, (f"texts[{i}] has {len(text)} characters; the limit is {limits.max_chars}.")
        problem = lone_surrogate(text)
        if problem is not None:
            return 422, f"texts[{i}] is not Unicode text: {problem}. Send UTF-8 text."
    return None


class RequestGuard:
    """ASGI middleware: checks POST bodies on `path` before LitServe reads them.

    A good body is handed on as JSON (whatever Content-Type the client sent, so
    `curl -d '{...}'`, which sends a form type, works); a bad one is answered here.
    """

    def __init__(self, app, *, path: str, limits: dict):
        self.app = app
        self.path = path
        self.limits = Limits(**limits)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self.reject(
                scope, send, 413, f"Body of {int(declared)} bytes; the limit is {limit}."
            )
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await self.reject(scope, send, 413, f"Body over {limit} bytes, the limit.")
                return
            more = message.get("more_body", False)
        problem = check_request(body, self.limits)
        if problem is not None:
            await self.reject(scope, send, *problem)
            return
        headers = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive_again():
            return replay.pop() if replay else await receive()

        await self.app(dict(scope, headers=headers), receive_again, send)

    @staticmethod
    async def reject(scope, send, status: int, message: str) -> None:
        from starlette.responses import JSONResponse

        async def nothing():
            return {"type": "http.disconnect"}

        await JSONResponse({"error": message}, status_code=status)(scope, nothing, send)


def load_predictor(run_dir: Path, backend: str, device: str | None, onnx_model: str = "auto"):
    """The run's Predictor (torch) or OnnxPredictor (its export/)."""
    if backend == "onnx":
        from mtl.inference.onnx_predict import OnnxPredictor

        return OnnxPredictor.from_export(run_dir, model=onnx_model, device=device)
    from mtl.inference.predictor import Predictor

    return Predictor.from_run(run_dir, device=device)


def records(predictor, texts: list[str], fold_probs: list[dict]) -> list[dict]:
    """One request's answer: blend its rows of every fold, then the JSON records."""
    from mtl.inference.records import prediction_records

    return prediction_records(texts, predictor, predictor.blend(fold_probs))


class RunAPI(ls.LitAPI):
    """A run's predictor behind LitServe; one request is a list of texts."""

    def __init__(self, run_dir: Path, backend: str, onnx_model: str, **batching):
        super().__init__(**batching)
        self.run_dir, self.backend, self.onnx_model = run_dir, backend, onnx_model

    def setup(self, device):
        self.predictor = load_predictor(self.run_dir, self.backend, device, self.onnx_model)
        self.predictor.predict_proba(["warm up"])  # first-call allocations before traffic

    def decode_request(self, request):
        return list(request["texts"])  # RequestGuard has checked it

    def batch(self, inputs):
        return inputs

    def predict(self, requests):
        single = self.max_batch_size == 1  # then LitServe hands one request, not a list
        requests = [requests] if single else requests
        try:
            answers = self.answer(requests)
        except Exception:
            # LitServe fails every request of a batch that raises (Lightning-AI/LitServe#340), so
            # a batch that fails is predicted request by request: only a request that fails
            # alone gets an error.
            if len(requests) > 1:
                log.warning("a batch of %d requests failed; predicting each alone", len(requests))
            answers = [self.answer_alone(request) for request in requests]
        return answers[0] if single else answers

    def answer(self, requests: list[list[str]]) -> list[list[dict]]:
        texts = [t for request in requests for t in request]
        fold_probs = self.predictor.fold_probabilities(texts)  # one pass over every request
        answers, start = [], 0
        for request in requests:
            rows = slice(start, start + len(request))
            part = [{name: p[name][rows] for name in p} for p in fold_probs]
            answers.append(records(self.predictor, request, part))
            start += len(request)
        return answers

    def answer_alone(self, request: list[str]) -> list[dict] | Failure:
        try:
            return self.answer([request])[0]
        except NonFiniteError as err:  # the model's fault, not the request's
            log.error("%s", err)  # names the model's files: for the log, not for clients
            return Failure(
                500,
                "The model gave non-finite probabilities (NaN or inf) for these texts, so there "
                "is no answer to give; the server's log names the model.",
            )
        except PredictError as err:
            return Failure(422, str(err))
        except Exception as err:
            log.exception("a request failed on its own")
            return Failure(500, f"Prediction failed: {type(err).__name__}: {first_line(err)}")

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        if isinstance(output, Failure):  # a Response, not a raise: a raise fails the whole batch
            from starlette.responses import JSONResponse

            return JSONResponse({"error": output.message}, status_code=output.status)
        return {"predictions": output}


@dataclass(frozen=True)
class Failure:
    """One request's error, answered as {"error": message} with `status`."""

    status: int
    message: str


def serve(
    run_dir: str | Path,
    *,
    backend: str = "torch",
    onnx_model: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    accelerator: str = "auto",
    max_batch_size: int = 16,
    batch_timeout: float = 0.005,
    limits: Limits = Limits(),
    timeout: float = 30.0,
) -> None:
    """Serve the run until interrupted. The predictor is loaded in LitServe's worker."""
    from mtl.inference.onnx_predict import export_folder, providers

    run_dir = Path(run_dir)
    if backend == "onnx":
        export_folder(run_dir)  # a clear error now, not a worker crash later
        if accelerator == "auto":  # a GPU is no use to the CPU build of onnxruntime
            accelerator = "cuda" if providers("auto")[0] == "CUDAExecutionProvider" else "cpu"
    api = RunAPI(
        run_dir, backend, onnx_model, max_batch_size=max_batch_size, batch_timeout=batch_timeout
    )
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=1,
        timeout=timeout,
        middlewares=[(RequestGuard, {"path": "/predict", "limits": asdict(limits)})],
        model_metadata={
            "run": str(run_dir.resolve()),
            "backend": backend,
            "onnx_model": onnx_model if backend == "onnx" else None,
            "max_batch_size": max_batch_size,
            "limits": asdict(limits),
        },
    )
    server.run(host=host, port=port, log_level="warning", generate_client_file=False)
