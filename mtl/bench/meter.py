"""Measuring: the step clock and token counts, peak memory, device helpers, the timed loop."""

from __future__ import annotations

import contextlib
import gc
import resource
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from mtl.bench.setup import PlainStep


class Meter:
    """Rows and tokens of the timed steps. Token counts stay on the device until the end (no sync)."""

    def __init__(self):
        self.real: list[torch.Tensor] = []
        self.padded = 0
        self.samples = 0
        self.steps = 0
        self.marks: list[float] = []  # CPU only: the clock at the start and after every timed step

    def mark(self, device: torch.device) -> None:
        if device.type == "cpu":  # on a GPU a per-step clock would need a sync every step
            self.marks.append(time.perf_counter())

    def record(self, attention_mask: torch.Tensor) -> None:
        self.real.append(attention_mask.sum())
        self.padded += attention_mask.numel()
        self.samples += attention_mask.shape[0]
        self.steps += 1

    def result(self, seconds: float) -> dict:
        real = int(torch.stack(self.real).sum().item()) if self.real else 0
        return {
            "steps": self.steps,
            "seconds": round(seconds, 4),
            "samples": self.samples,
            "samples_per_s": self.samples / seconds,
            "real_tokens": real,
            "padded_tokens": self.padded,
            "real_tokens_per_s": real / seconds,
            "padded_token_share": 1.0 - real / self.padded if self.padded else 0.0,
            "step_ms": 1000.0 * seconds / max(1, self.steps),
            **self.median(),
        }

    def median(self) -> dict:
        """Median step time: robust to bursts of load from other processes on the machine."""
        if len(self.marks) != self.steps + 1 or not self.steps:
            return {"median_step_ms": None, "samples_per_s_median_step": None}
        step = float(np.median(np.diff(self.marks)))
        return {
            "median_step_ms": 1000.0 * step,
            "samples_per_s_median_step": self.samples / self.steps / step,
        }


def _rss_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class MemoryProbe:
    """Peak memory of one path (see the mtl.bench package docstring for the method)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = None

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM (/proc/self/status, reset per path)"
        except OSError:
            self.method = "ru_maxrss (process lifetime, not reset)"
        self.base_kb = _rss_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        peak = _rss_kb("VmHWM") if self.method.startswith("VmHWM") else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.result = {
            "peak_rss_mb": peak / 1024,
            "peak_rss_delta_mb": (peak - self.base_kb) / 1024,
            "rss_method": self.method,
        }
        if self.device.type == "cuda":
            self.result["peak_cuda_allocated_mb"] = (
                torch.cuda.max_memory_allocated(self.device) / 2**20
            )
        return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def autocast(device: torch.device, precision: str):
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def timed_loop(step: PlainStep, batches: Iterator[dict], warmup: int, steps: int) -> dict:
    """Warm-up steps, then `steps` timed ones; each step includes fetching its batch."""
    meter = Meter()
    device = step.device
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
            meter.mark(device)
        batch = to_device(next(batches), device)
        if i >= warmup:
            meter.record(batch["attention_mask"])
        step(batch)
        if i >= warmup:
            meter.mark(device)
    synchronize(device)
    return meter.result(time.perf_counter() - start)


def epochs_of(loader) -> Iterator[dict]:
    """Our loader forever, advancing the sampler's epoch like Lightning does."""
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1
