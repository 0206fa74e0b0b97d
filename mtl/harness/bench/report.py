"""The report: hardware, MFU peaks, the headline ratios against their targets, the table."""

from __future__ import annotations

import numpy as np
import torch

from mtl.model.gradients import AGGREGATORS
from mtl.runtime import hardware as runtime_hardware
from mtl.runtime import load_averages

TRAIN_PATHS = ("mtl", "bare_pytorch", "seed_style", "bound")
DEFAULT_PATHS = TRAIN_PATHS + ("predict",)
# the multi-task methods' cost: `mtl` with one config change each (mtl/harness/bench/paths.py),
# opt-in through --paths; each is reported as <path>_vs_mtl, its samples/s over equal weighting's
METHOD_PATHS = {
    "mtl_famo": ["loss_weighting=famo"],
    **{f"mtl_{name}": [f"gradient.aggregator={name}"] for name in AGGREGATORS[1:]},  # not "none"
    "mtl_monitor": ["gradient.log_every_n_steps=1"],
    # issue 23's speed recipe: the base-size MPNet (`bash scripts/install.sh mpnet`) on the same
    # batches (tokenized by the config's tokenizer: MiniLM's and MPNet's are both the uncased
    # WordPiece vocabulary, so the token counts match), against MiniLM in the config's precision
    "mtl_bf16": ["trainer.precision=bf16-mixed"],
    "mpnet": ["backbone.name=mpnet"],
    "mpnet_bf16": ["backbone.name=mpnet", "trainer.precision=bf16-mixed"],
    "mpnet_bf16_frozen": [
        "backbone.name=mpnet",
        "trainer.precision=bf16-mixed",
        "backbone.freeze_embeddings=true",
    ],
    # the embeddings and the lower half of MPNet's 12 layers frozen: backward stops at layer 7
    "mpnet_bf16_freeze6": [
        "backbone.name=mpnet",
        "trainer.precision=bf16-mixed",
        "backbone.freeze_layers=6",
    ],
}
ALL_PATHS = DEFAULT_PATHS + tuple(METHOD_PATHS)

# Dense bf16 tensor-core peaks (no sparsity), by the substring of torch.cuda.get_device_name.
# First match wins, so the specific names come first.
# Not Lightning's `get_available_flops` (2.6.6): it has no plain "NVIDIA H200" (None, issue
# Lightning-AI/pytorch-lightning#20660), gives sparse peaks for H100 NVL (#21677, fixed for 2.7 by
# #21743), reads "L40S" as an L4 (121 TFLOP/s) and has no A10: our MFU numbers would change.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),  # same compute as H100 SXM
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)

TARGETS = {
    "mtl_vs_seed_style": (">=", 6.0),  # issue 15 (was 4.5)
    "mtl_vs_bound": (">=", 0.95),  # issue 15 (was 0.9)
    "lightning_overhead": ("<=", 0.05),
    "mtl_padded_token_share": ("<=", 0.10),
    "predict_vs_naive": (">=", 3.0),
}


def load_average() -> float | None:
    """The 1-minute load average: other processes on the machine compete for its cores."""
    averages = load_averages()
    return None if averages is None else round(averages[0], 2)


def hardware(device: torch.device, peak: float | None, peak_source: str | None) -> dict:
    """`mtl.runtime.hardware`, with the MFU peak and the load when the benchmark began."""
    return {
        **runtime_hardware(device),
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "load_average_start": load_averages(),
    }


def peak_flops(device: torch.device, precision: str, override_tflops: float | None):
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "CPU: MFU not reported"
    if not str(precision).startswith("bf16"):
        return None, f"no peak tabulated for precision {precision}; pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS:
        if key in name:
            return value, f"{key} bf16 dense {value / 1e12:.0f} TFLOP/s"
    return None, f"unknown GPU '{name}'; pass --peak-tflops"


RATIO_PATHS = {  # ratio → (its path, the path it is compared to), per block
    "mtl_vs_seed_style": ("mtl", "seed_style"),
    "mtl_vs_bound": ("mtl", "bound"),
    "bare_vs_bound": ("bare_pytorch", "bound"),
    "lightning_overhead": ("mtl", "bare_pytorch"),  # 1 − mtl/bare
}


def block_ratios(paths: dict) -> dict[str, dict | None]:
    """Each ratio per block, between the two paths' turns in that block (mtl/harness/bench/interleave.py),
    as its median over blocks with min, max and quartiles; None where a path is missing."""
    out: dict[str, dict | None] = {}
    methods = {f"{name}_vs_mtl": (name, "mtl") for name in METHOD_PATHS if name in paths}
    for key, (ours, other) in {**RATIO_PATHS, **methods}.items():
        a, b = ((paths.get(name) or {}).get("blocks") or [] for name in (ours, other))
        per_block = [x["samples_per_s"] / y["samples_per_s"] for x, y in zip(a, b, strict=False)]
        if key == "lightning_overhead":
            per_block = [1.0 - r for r in per_block]
        if not per_block:
            out[key] = None
            continue
        q1, median, q3 = (float(v) for v in np.percentile(per_block, [25, 50, 75]))
        out[key] = {
            "median": median,
            "min": min(per_block),
            "max": max(per_block),
            "q1": q1,
            "q3": q3,
            "per_block": per_block,
        }
    return out


def ratios(paths: dict) -> dict:
    """The headline ratios: training ones as the median over blocks (block_ratios)."""
    values = {key: (spread or {}).get("median") for key, spread in block_ratios(paths).items()}
    predict = paths.get("predict") or {}
    batched = (predict.get("batched") or {}).get("texts_per_s")
    naive = (predict.get("naive") or {}).get("texts_per_s")
    values["predict_vs_naive"] = batched / naive if batched is not None and naive else None
    return values


def check_targets(result: dict) -> dict:
    values = dict(result["ratios"])
    values["mtl_padded_token_share"] = (result["paths"].get("mtl") or {}).get("padded_token_share")
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = values.get(key)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[key] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def spread_text(spread: dict | None) -> str:
    if not spread:
        return ""
    return (
        f" [per block: min {spread['min']:.3f}, quartiles {spread['q1']:.3f}–{spread['q3']:.3f}, "
        f"max {spread['max']:.3f}; {len(spread['per_block'])} blocks]"
    )


def table(result: dict) -> str:
    cuda = result["hardware"]["device"].startswith("cuda")
    memory_key = "peak_cuda_delta_mb" if cuda else "peak_rss_delta_mb"
    head = (
        "| path | samples/s (median block) | real tokens/s | padded share | ms/step mean (median) | "
        + ("peak CUDA Δ MiB" if cuda else "peak RSS Δ MiB")
        + " | MFU |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for name in TRAIN_PATHS + tuple(METHOD_PATHS):
        r = result["paths"].get(name)
        if not r:
            continue
        lines.append(
            f"| {name} | {r['samples_per_s_median_block']:.1f} | {r['real_tokens_per_s']:.0f} | "
            f"{r['padded_token_share']:.3f} | {r['step_ms']:.0f} ({fmt(r.get('median_step_ms'), '.0f')}) | "
            f"{fmt(r.get(memory_key), '.0f')} | "
            f"{fmt(r.get('mfu'), '.3f')} |"
        )
    predict = result["paths"].get("predict")
    if predict:
        for kind in ("batched", "naive"):
            r = predict[kind]
            lines.append(
                f"| predict_{kind} (texts/s) | {r['texts_per_s']:.1f} | {r['real_tokens_per_s']:.0f} | "
                f"{r['padded_token_share']:.3f} | — | {fmt(r.get(memory_key), '.0f')} | — |"
            )
    lines.append("")
    spreads = result.get("ratio_spread") or {}
    for key, t in result["targets"].items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(
            f"{key}: {fmt(t['value'], '.3f')} (target {t['target']}) {verdict}"
            + spread_text(spreads.get(key))
        )
    for key, spread in spreads.items():  # the methods' cost: samples/s relative to mtl
        if key.endswith("_vs_mtl") and spread:
            lines.append(f"{key}: {spread['median']:.3f}" + spread_text(spread))
    return "\n".join(lines)
