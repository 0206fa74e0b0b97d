"""`--profile-step N`: where a training step's time goes, ours against the seed pipeline's, and
the ceiling that puts on `mtl_vs_seed_style` (issue 15).

    python scripts/benchmark.py --profile-step 40 data_dir=../shared/data --rows-per-task 1000 --out profile.json

Both paths run the benchmark's plain step (`PlainStep`: same model, loss, clipping, AdamW,
scheduler) on their own batches: ours from `make_loader` (length-grouped, dynamic padding), the
seed pipeline's padded to max_length. Per step: padded tokens and the seconds of each phase:
`batch` (fetch, to device), `forward` (model_step), `backward`, `clip` (with fp16, unscaling
too), `optimizer` (AdamW, weighting.project, scheduler), marked by PlainStep itself. A least-squares line through our steps, step = fixed + per_token ×
tokens, splits our step into the part that grows with the tokens and the part that does not.
Both paths train the same number of rows per step, so the throughput ratio is the ratio of mean
step times; the profile reports it with its ceilings: with our fixed part gone, and with our
tokens costing what the seed pipeline's cost.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from mtl.harness.bench.meter import synchronize, to_device
from mtl.harness.bench.paths import block_loader
from mtl.harness.bench.seed_style import seed_style_batches
from mtl.harness.bench.setup import PlainStep, Setup

PHASES = ("batch", "forward", "backward", "clip", "optimizer")


def profile_steps(step: PlainStep, stream, count: int, warmup: int) -> list[dict]:
    """`warmup` untimed steps, then `count` steps timed phase by phase: the batch fetch here,
    the rest at PlainStep's own phase marks (its `tick`), so the profile runs the same step."""
    device = step.device
    rows, marks = [], []

    def tick() -> None:
        synchronize(device)
        marks.append(time.perf_counter())

    for i in range(warmup + count):
        marks[:] = [time.perf_counter()]
        batch = to_device(next(stream), device)
        tick()
        step(batch, tick)
        if i >= warmup:
            mask = batch["attention_mask"]
            row = {name: marks[k + 1] - marks[k] for k, name in enumerate(PHASES)}
            row["tokens"] = int(mask.numel())
            row["real_tokens"] = int(mask.sum())
            rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Mean ms per phase and per step, mean padded tokens per step."""
    steps = np.array([sum(r[p] for p in PHASES) for r in rows])
    out = {f"{p}_ms": 1000 * float(np.mean([r[p] for r in rows])) for p in PHASES}
    out["step_ms"] = 1000 * float(steps.mean())
    out["tokens_per_step"] = float(np.mean([r["tokens"] for r in rows]))
    out["real_tokens_per_step"] = float(np.mean([r["real_tokens"] for r in rows]))
    out["steps"] = len(rows)
    return out


def fit_line(rows: list[dict]) -> dict:
    """step seconds = fixed + per_token × padded tokens (least squares over the steps)."""
    tokens = np.array([r["tokens"] for r in rows], dtype=float)
    seconds = np.array([sum(r[p] for p in PHASES) for r in rows])
    if np.ptp(tokens) == 0:
        return {"fixed_ms": None, "per_token_us": None, "r2": None}
    slope, intercept = np.polyfit(tokens, seconds, 1)
    predicted = intercept + slope * tokens
    r2 = 1 - float(np.sum((seconds - predicted) ** 2) / np.sum((seconds - seconds.mean()) ** 2))
    return {"fixed_ms": 1000 * float(intercept), "per_token_us": 1e6 * float(slope), "r2": r2}


def profile(setup: Setup, count: int, warmup: int = 3) -> dict:
    """Profile `count` steps of ours and of the seed pipeline; the ceilings on their ratio."""
    loader = block_loader(setup)
    loader.batch_sampler.size = warmup + count
    ours_rows = profile_steps(
        PlainStep(setup, setup.module(), warmup + count), iter(loader), count, warmup
    )
    seed_count = max(2, count // 4)  # its steps all look alike (one padded length)
    seed_rows = profile_steps(
        PlainStep(setup, setup.module(), warmup + seed_count),
        itertools.islice(seed_style_batches(setup), warmup + seed_count),
        seed_count,
        min(warmup, 2),
    )
    ours, seed = summarize(ours_rows), summarize(seed_rows)
    line = fit_line(ours_rows)
    ours.update(line)
    token_ms = ours["step_ms"] - line["fixed_ms"] if line["fixed_ms"] is not None else None
    seed_fixed_ms = seed["clip_ms"] + seed["optimizer_ms"]
    seed_per_token_us = 1000 * (seed["step_ms"] - seed_fixed_ms) / seed["tokens_per_step"]
    seed["per_token_us"] = seed_per_token_us
    ceilings = {
        "ratio_of_mean_steps": seed["step_ms"] / ours["step_ms"],
        "token_ratio": seed["tokens_per_step"] / ours["tokens_per_step"],
        "without_our_fixed_part": seed["step_ms"] / token_ms if token_ms else None,
        "at_seed_token_cost": seed["step_ms"]
        / (seed_fixed_ms + seed_per_token_us * ours["tokens_per_step"] / 1000),
        "our_step_ms_for_6x": seed["step_ms"] / 6,
    }
    return {"ours": ours, "seed_style": seed, "ceilings": ceilings}


def profile_table(result: dict) -> str:
    """The profile as a Markdown table (ms per step) and its ceilings."""
    ours, seed, ceil = result["ours"], result["seed_style"], result["ceilings"]
    lines = ["| phase, ms/step | ours | seed_style |", "|---|---:|---:|"]
    for name in (*PHASES, "step"):
        lines.append(f"| {name} | {ours[name + '_ms']:.1f} | {seed[name + '_ms']:.1f} |")
    lines.append(
        f"| padded tokens/step | {ours['tokens_per_step']:.0f} | {seed['tokens_per_step']:.0f} |"
    )
    if ours["fixed_ms"] is not None:
        lines.append(
            f"\nours: step ≈ {ours['fixed_ms']:.1f} ms + {ours['per_token_us']:.1f} µs × tokens "
            f"(R² {ours['r2']:.2f}); seed_style: {seed['per_token_us']:.1f} µs per token"
        )
    for key, value in ceil.items():
        if value is not None:
            lines.append(f"{key}: {value:.2f}")
    return "\n".join(lines)
