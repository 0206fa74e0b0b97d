"""The serving path (`--serve RUN`): the run's ONNX export against its PyTorch Predictor.

    python scripts/benchmark.py --serve checkpoints/default --data-dir ../shared/data --out bench_serve.json

On the same texts, in one process: `Predictor.from_run` (PyTorch fp32, batched, length-sorted,
every fold blended), `OnnxPredictor` fp32 and int8 (export/ of the run; scripts/export.py), and
the export folder's own runtime on int8 (`mtl_onnx.py`, loaded from the folder).
Speed: texts/s of `predict_proba` (best of --repeats passes over --predict-texts texts, backends
interleaved so that load from other processes hits them alike), ratios against PyTorch, file
sizes. Parity on every task's val file (from --data-dir when it holds a file of that name, else
the run's own): fp32 vs PyTorch max abs probability difference; int8 vs fp32 label agreement,
per label decision and per text; each task's primary metric under all three.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtl.errors import PredictError
from mtl.inference.int8_check import label_agreement as agreement
from mtl.inference.onnx_predict import load_runtime as folder_runtime
from mtl.io import write_json
from mtl.model.metrics import score_arrays


def val_rows(cfg, meta, data_dir: Path | None, limit: int) -> tuple[Path, list[str], np.ndarray]:
    """(file, texts, labels) of one task's val file: (N,) class index or (N, C) multi-hot."""
    from mtl.data.files import resolve_path

    task = cfg.tasks[meta.name]
    if not task.val:
        return None, [], None
    path = resolve_path(cfg, task.val)
    if data_dir is not None and (data_dir / path.name).is_file():
        path = data_dir / path.name
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""]).head(limit)
    texts = frame[task.text_column].astype(str).tolist()
    if meta.multilabel:
        return path, texts, frame[list(task.label_columns)].to_numpy(dtype=int)
    index = {str(c): i for i, c in enumerate(meta.classes)}
    return path, texts, np.array([index[str(v)] for v in frame[task.label_columns[0]]])


def time_backends(backends: dict, texts: list[str], repeats: int) -> dict:
    """texts/s of each backend's `predict_proba(texts)`: best of `repeats` interleaved passes,
    with the ratio to backends["torch_fp32"]."""
    seconds = {name: [] for name in backends}
    for predictor in backends.values():
        predictor.predict_proba(texts[: 2 * predictor.batch_size])  # warm-up
    for _ in range(repeats):
        for name, predictor in backends.items():
            start = time.perf_counter()
            predictor.predict_proba(texts)
            seconds[name].append(time.perf_counter() - start)
    speed = {
        name: {
            "texts": len(texts),
            "seconds_best": round(min(s), 3),
            "seconds_all": [round(x, 3) for x in s],
            "texts_per_s": round(len(texts) / min(s), 1),
        }
        for name, s in seconds.items()
    }
    base = speed["torch_fp32"]["texts_per_s"]
    for entry in speed.values():
        entry["vs_torch_fp32"] = round(entry["texts_per_s"] / base, 2)
    return speed


def run_serve(
    run_dir: Path,
    data_dir: Path | None,
    count: int,
    repeats: int,
    rows: int,
    batch_size: int | None = None,
    ablation: bool = False,
) -> dict:
    from mtl.inference.export import RUNTIME_FILE
    from mtl.inference.onnx_predict import OnnxPredictor, export_folder
    from mtl.inference.predictor import Predictor

    threads = torch.get_num_threads()
    folder = export_folder(run_dir)
    options = dict(device="cpu", batch_size=batch_size)  # None: the Predictor's CPU default
    backends = {"torch_fp32": Predictor.from_run(run_dir, **options)}
    backends["onnx_fp32"] = OnnxPredictor.from_export(
        folder, model="fp32", threads=threads, **options
    )
    if "int8" in json.loads((folder / "predictor.json").read_text(encoding="utf-8"))["files"]:
        backends["onnx_int8"] = OnnxPredictor.from_export(
            folder, model="int8", threads=threads, **options
        )
        runtime = folder / RUNTIME_FILE
        if runtime.is_file():  # the folder's own runtime, as a machine without mtl runs it
            backends["portable_int8"] = folder_runtime(folder).ExportedModel(
                folder, "int8", device="cpu", batch_size=batch_size, threads=threads
            )
    reference = backends["torch_fp32"]
    files = {}
    for meta in reference.metas.values():
        path, texts, labels = val_rows(reference.cfg, meta, data_dir, rows)
        if texts:
            files[meta.name] = (path, texts, labels)
    pool = [t for _, texts, _ in files.values() for t in texts]
    speed_texts = [pool[i] for i in np.random.default_rng(0).permutation(len(pool))[:count]]

    speed = time_backends(backends, speed_texts, repeats)

    parity = {}
    for task, (path, texts, labels) in files.items():
        meta = reference.metas[task]
        every_task = {name: p.predict_proba(texts) for name, p in backends.items()}
        probs = {name: v[task] for name, v in every_task.items()}
        decided = {name: backends[name].labels(v)[task] for name, v in every_task.items()}
        entry = {"file": str(path), "rows": len(texts)}
        entry["fp32_max_abs_prob_diff_vs_torch"] = float(
            np.abs(probs["onnx_fp32"] - probs["torch_fp32"]).max()
        )
        entry["fp32_labels_equal_torch"] = decided["onnx_fp32"] == decided["torch_fp32"]
        cut = reference.thresholds.get(task)
        entry["primary_metric"] = meta.primary_metric
        entry["score"] = {
            name: score_arrays(meta, v, labels, cut)[meta.primary_metric]
            for name, v in probs.items()
        }
        if "onnx_int8" in probs:
            per_label, per_text = agreement(
                decided["onnx_int8"], decided["onnx_fp32"], meta.multilabel, list(meta.classes)
            )
            entry["int8_label_agreement_vs_fp32"] = per_label
            entry["int8_text_agreement_vs_fp32"] = per_text
            entry["int8_max_abs_prob_diff_vs_fp32"] = float(
                np.abs(probs["onnx_int8"] - probs["onnx_fp32"]).max()
            )
            entry["int8_metric_drop_vs_fp32"] = (
                entry["score"]["onnx_fp32"] - entry["score"]["onnx_int8"]
            )
        if "portable_int8" in probs:
            entry["portable_max_abs_prob_diff_vs_onnx_int8"] = float(
                np.abs(probs["portable_int8"] - probs["onnx_int8"]).max()
            )
            entry["portable_labels_equal_onnx_int8"] = (
                decided["portable_int8"] == decided["onnx_int8"]
            )
        parity[task] = entry

    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    sizes = {
        name: entry["bytes"] for name, entry in manifest["files"].items() if name.endswith(".onnx")
    }
    checkpoint_bytes = sum(p.stat().st_size for p in reference.sources)
    result = {
        "run": str(run_dir),
        "export": str(folder),
        "folds": len(reference.models),
        "blend": reference.blend_method,
        "threads": threads,
        "batch_size": reference.batch_size,
        "speed": speed,
        "parity": parity,
        "file_bytes": sizes,
        "checkpoint_bytes_total": checkpoint_bytes,
        "fused_operators": manifest.get("fused_operators"),
    }
    if ablation:
        from mtl.harness.bench.onnx_ablation import onnx_ablation

        if "onnx_int8" not in backends:
            raise PredictError(
                f"--onnx-ablation compares int8 models; {folder} has none. "
                f"Re-export with: python scripts/export.py {run_dir} --quantize int8"
            )
        result["ablation"] = onnx_ablation(
            run_dir, folder, reference, speed_texts, repeats, threads
        )
    return result


def serve_benchmark(args) -> dict:
    """The whole `--serve` run: hardware, the measurements, the JSON at --out, a short table."""
    from mtl.harness.bench.report import hardware

    began = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "command": "python scripts/benchmark.py " + " ".join(args.argv),
        "hardware": hardware(torch.device("cpu"), None, "CPU: MFU not reported"),
    }
    result.update(
        run_serve(
            Path(args.serve),
            args.data_dir,
            args.predict_texts,
            args.repeats,
            args.val_rows,
            args.batch_size,
            args.onnx_ablation,
        )
    )
    result["wall_seconds"] = round(time.perf_counter() - began, 1)
    out = write_json(args.out, result)
    for name, entry in result["speed"].items():
        print(f"{name:<11} {entry['texts_per_s']:>8.1f} texts/s  x{entry['vs_torch_fp32']:.2f}")
    for task, entry in result["parity"].items():
        print(
            f"{task:<11} fp32 max|diff| {entry['fp32_max_abs_prob_diff_vs_torch']:.1e}  "
            f"int8 agreement {entry.get('int8_label_agreement_vs_fp32', float('nan')):.4f}  "
            f"{entry['primary_metric']} {entry['score']}"
        )
    if "ablation" in result:
        for name, entry in result["ablation"]["speed"].items():
            print(
                f"ablation {name:<27} {entry['texts_per_s']:>8.1f} texts/s  x{entry['vs_torch_fp32']:.2f}"
            )
        op = result["ablation"]["op"]
        print(
            f"ablation one op, ({op['rows']}, {op['hidden']}) floats, us per call: {op['us_per_call']}"
        )
    print(f"wrote {out}")
    return result
