"""scripts/benchmark.py end to end on a tiny random model. Speeds are never asserted here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from mtl.bench.report import TARGETS, check_targets, peak_flops, ratios

ROOT = Path(__file__).resolve().parent.parent
RATIO_KEYS = ("mtl_vs_seed_style", "mtl_vs_bound", "lightning_overhead", "predict_vs_naive")


def test_smoke_benchmark_runs_end_to_end_and_writes_the_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--smoke", "--bert-base", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

    for key in RATIO_KEYS:
        value = result["ratios"][key]
        assert isinstance(value, float) and math.isfinite(value), (key, value)
    hardware = result["hardware"]
    for key in ("cpu_model", "logical_cores", "torch", "torch_threads", "device"):
        assert hardware[key] not in (None, ""), key
    assert hardware["torch"] == torch.__version__

    paths = result["paths"]
    assert set(paths) == {"mtl", "bare_pytorch", "seed_style", "bound", "predict"}
    for name in ("mtl", "bare_pytorch", "seed_style", "bound"):
        r = paths[name]
        assert r["steps"] == result["setup"]["steps"]  # the same number of timed steps
        assert r["samples_per_s"] > 0 and r["real_tokens_per_s"] > 0
        assert 0.0 <= r["padded_token_share"] < 1.0
        assert r["peak_rss_mb"] > 0
        if hardware["gpu"] is None:
            assert r["mfu"] is None  # MFU only against a GPU's peak
    # mtl, bare_pytorch and bound train on exactly the same rows; the seed pipeline pads to max_length
    assert paths["mtl"]["real_tokens"] == paths["bare_pytorch"]["real_tokens"]
    assert paths["mtl"]["real_tokens"] == paths["bound"]["real_tokens"]
    assert paths["mtl"]["samples"] == paths["bound"]["samples"]
    seed = paths["seed_style"]
    assert (
        seed["padded_tokens"]
        == seed["samples"] * result["setup"]["max_length"]
        == seed["samples"] * 128
    )  # --bert-base fixes max_length at 128
    # batched inference returns what the one-at-a-time loop returns
    assert paths["predict"]["max_abs_prob_diff"] < 1e-3
    assert paths["predict"]["batched"]["texts"] == result["setup"]["predict_texts"]
    assert set(result["targets"]) == set(TARGETS)
    assert result["complete"] is True
    assert "mtl_vs_seed_style" in done.stdout  # the printed table


def test_ratios_and_targets_tolerate_missing_paths():
    assert all(v is None for v in ratios({}).values())
    partial = {"mtl": {"samples_per_s": 90.0}, "bare_pytorch": {"samples_per_s": 100.0}}
    values = ratios(partial)
    assert math.isclose(values["lightning_overhead"], 0.1)
    assert values["mtl_vs_seed_style"] is None
    targets = check_targets({"ratios": values, "paths": partial})
    assert targets["lightning_overhead"]["met"] is False
    assert targets["mtl_vs_bound"]["met"] is None


def test_peak_flops_is_only_claimed_for_a_known_gpu():
    assert peak_flops(torch.device("cpu"), "32-true", None)[0] is None
    assert peak_flops(torch.device("cpu"), "bf16-mixed", 100.0)[0] == 100e12
