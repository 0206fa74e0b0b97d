"""scripts/benchmark.py end to end on a tiny random model. Speeds are never asserted here."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from mtl.harness.bench.interleave import block_orders
from mtl.harness.bench.report import TARGETS, block_ratios, check_targets, peak_flops, ratios

ROOT = Path(__file__).resolve().parents[2]
RATIO_KEYS = ("mtl_vs_seed_style", "mtl_vs_bound", "lightning_overhead", "predict_vs_naive")


def run_smoke_benchmark(out: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`scripts/benchmark.py --smoke FLAGS --out OUT` in a subprocess: (process, its JSON)."""
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--smoke", *flags, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_smoke_benchmark_runs_end_to_end_and_writes_the_json(tmp_path):
    done, result = run_smoke_benchmark(tmp_path / "bench.json", "--bert-base")

    for key in RATIO_KEYS:
        value = result["ratios"][key]
        assert isinstance(value, float) and math.isfinite(value), (key, value)
    hardware = result["hardware"]
    for key in ("cpu_model", "logical_cores", "torch", "torch_threads", "device"):
        assert hardware[key] not in (None, ""), key
    assert hardware["torch"] == torch.__version__

    paths = result["paths"]
    setup = result["setup"]
    train_paths = ("mtl", "bare_pytorch", "seed_style", "bound")
    assert set(paths) == {*train_paths, "predict"}
    assert setup["timed_steps_per_path"] == setup["blocks"] * setup["block_steps"]
    # blocks rotate the order: with 4 blocks of 4 paths, each path runs once in every position
    assert [b["order"] for b in result["schedule"]][:2] == [
        list(train_paths),
        [*train_paths[1:], "mtl"],
    ]
    for name in train_paths:
        r = paths[name]
        assert r["steps"] == setup["timed_steps_per_path"]  # the same number of timed steps
        assert len(r["blocks"]) == setup["blocks"] == 4
        assert sorted(b["position"] for b in r["blocks"]) == [0, 1, 2, 3]
        assert all(b["steps"] == setup["block_steps"] for b in r["blocks"])
        assert r["samples_per_s"] > 0 and r["real_tokens_per_s"] > 0
        assert 0.0 <= r["padded_token_share"] < 1.0
        assert r["peak_rss_mb"] > 0
        if hardware["gpu"] is None:
            assert r["mfu"] is None  # MFU only against a GPU's peak
    # mtl, bare_pytorch and bound train on exactly the same rows; the seed pipeline pads to max_length
    assert paths["mtl"]["real_tokens"] == paths["bare_pytorch"]["real_tokens"]
    assert paths["mtl"]["real_tokens"] == paths["bound"]["real_tokens"]
    assert paths["mtl"]["samples"] == paths["bound"]["samples"]
    # ... block by block, so the per-block ratios compare the same work
    per_block = {n: [b["samples"] for b in paths[n]["blocks"]] for n in train_paths}
    assert per_block["mtl"] == per_block["bare_pytorch"] == per_block["bound"]
    # every training ratio is the median of per-block ratios, with its spread
    for key in ("mtl_vs_seed_style", "mtl_vs_bound", "bare_vs_bound", "lightning_overhead"):
        spread = result["ratio_spread"][key]
        assert len(spread["per_block"]) == setup["blocks"]
        assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
        assert math.isclose(spread["median"], result["ratios"][key])
    mtl_over_bare = [
        a["samples_per_s"] / b["samples_per_s"]
        for a, b in zip(paths["mtl"]["blocks"], paths["bare_pytorch"]["blocks"], strict=True)
    ]
    assert math.isclose(
        result["ratios"]["lightning_overhead"], 1 - statistics.median(mtl_over_bare)
    )
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


def blocks(*speeds: float) -> dict:
    return {"blocks": [{"samples_per_s": v} for v in speeds]}


def test_ratios_are_medians_of_per_block_ratios_and_tolerate_missing_paths():
    assert all(v is None for v in ratios({}).values())
    # block 2 is disturbed (mtl 60 there): a ratio of totals would move, the median does not
    partial = {"mtl": blocks(90, 60, 90), "bare_pytorch": blocks(100, 100, 100)}
    values = ratios(partial)
    assert math.isclose(values["lightning_overhead"], 0.1)
    spread = block_ratios(partial)["lightning_overhead"]
    assert math.isclose(spread["max"], 0.4) and math.isclose(spread["min"], 0.1)
    assert values["mtl_vs_seed_style"] is None
    targets = check_targets({"ratios": values, "paths": partial})
    assert targets["lightning_overhead"]["met"] is False
    assert targets["mtl_vs_bound"]["met"] is None


def test_block_orders_rotate_so_every_path_runs_in_every_position():
    orders = block_orders(["a", "b", "c"], 4)
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    for name in "abc":
        assert sorted(order.index(name) for order in orders[:3]) == [0, 1, 2]


def test_mtl_and_bare_pytorch_train_alike_block_by_block(tiny_cfg):
    """Each block of `mtl` is a fresh Trainer.fit: it must continue the same AdamW state, LR
    schedule and batch stream, so after the same blocks it holds bare_pytorch's weights."""
    from mtl.harness.bench.meter import Meter
    from mtl.harness.bench.paths import LightningPath, Plan, bare_path
    from mtl.harness.bench.setup import Setup

    setup = Setup(tiny_cfg(), None)
    plan = Plan(warmup=2, blocks=2, block_steps=2)
    weights, tokens = {}, {}
    for name, build in (("mtl", LightningPath), ("bare_pytorch", bare_path)):
        path = build(setup, plan)
        path.run(plan.warmup, 0)
        meter = Meter(setup.device)
        for _ in range(plan.blocks):
            path.run(plan.lead_in, plan.block_steps, meter)
        module = path.module if name == "mtl" else path.step.module
        weights[name] = torch.cat([p.detach().flatten() for p in module.parameters()])
        tokens[name] = meter.result()["real_tokens"]
    assert tokens["mtl"] == tokens["bare_pytorch"] > 0
    assert torch.allclose(weights["mtl"], weights["bare_pytorch"], atol=1e-6)


def test_peak_flops_is_only_claimed_for_a_known_gpu():
    assert peak_flops(torch.device("cpu"), "32-true", None)[0] is None
    assert peak_flops(torch.device("cpu"), "bf16-mixed", 100.0)[0] == 100e12


def test_the_step_profile_times_the_plain_step_phase_by_phase(tiny_cfg):
    """profile_steps splits PlainStep into phases: the same batches must leave the same weights,
    and the seed pipeline's steps hold batch × max_length tokens, ours fewer."""
    from mtl.harness.bench.paths import block_loader
    from mtl.harness.bench.setup import PlainStep, Setup
    from mtl.harness.bench.step_profile import PHASES, profile, profile_steps, profile_table

    setup = Setup(tiny_cfg(), None)
    loader = block_loader(setup)
    loader.batch_sampler.size = 4
    batches = list(loader)
    timed, plain = PlainStep(setup, setup.module(), 4), PlainStep(setup, setup.module(), 4)
    torch.manual_seed(0)  # dropout draws alike
    rows = profile_steps(timed, iter(batches), count=3, warmup=1)
    torch.manual_seed(0)
    for batch in batches:
        plain(batch)
    assert len(rows) == 3 and all(r[p] >= 0 for r in rows for p in PHASES)
    assert [r["tokens"] for r in rows] == [b["attention_mask"].numel() for b in batches[1:]]
    for a, b in zip(timed.module.parameters(), plain.module.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)

    result = profile(setup, count=4, warmup=1)
    cfg = setup.cfg
    assert result["seed_style"]["tokens_per_step"] == cfg.data.batch_size * cfg.data.max_length
    assert 0 < result["ours"]["tokens_per_step"] < result["seed_style"]["tokens_per_step"]
    assert result["ceilings"]["token_ratio"] > 1
    assert all(math.isfinite(v) for v in result["ceilings"].values() if v is not None)
    assert "| optimizer |" in profile_table(result)


def test_profile_step_from_the_command_line(tmp_path):
    done, result = run_smoke_benchmark(tmp_path / "profile.json", "--profile-step", "3")
    assert set(result["profile"]) == {"ours", "seed_style", "ceilings"}
    assert result["profile"]["ours"]["steps"] == 3
    assert "seed_style" in done.stdout and "ratio_of_mean_steps" in done.stdout


def test_smoke_benchmark_prices_the_multi_task_methods_against_mtl(tmp_path):
    """FAMO, two aggregators and the conflict monitor as interleaved paths beside `mtl`."""
    methods = ("mtl_famo", "mtl_upgrad", "mtl_pcgrad", "mtl_monitor")
    _, result = run_smoke_benchmark(
        tmp_path / "bench.json", "--paths", ",".join(("mtl", *methods)), "--blocks", "2"
    )
    for name in methods:
        assert result["paths"][name]["steps"] == result["setup"]["timed_steps_per_path"]
        value = result["ratios"][f"{name}_vs_mtl"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
    assert "mtl_famo" in result["paths"] and "mtl_vs_seed_style" in result["ratios"]
