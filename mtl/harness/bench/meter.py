"""Measuring: the step clock and token counts per block, peak memory, device helpers."""

from __future__ import annotations

import contextlib
import gc
import resource
import time

import numpy as np
import torch


class Meter:
    """One path's timed steps, block by block: rows, tokens, the clock. Token counts stay on the
    device until the end (no sync); on a GPU the clock reads only at block ends (after a sync)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.real: list[torch.Tensor] = []
        self.padded = 0
        self.samples = 0
        self.steps = 0
        self.step_seconds: list[float] = []  # CPU only: a per-step clock would sync a GPU
        self.blocks: list[dict] = []

    def start_block(self) -> None:
        synchronize(self.device)
        self._block = (time.perf_counter(), self.samples, self.steps)
        self._last = self._block[0]

    def record(self, attention_mask: torch.Tensor) -> None:
        self.real.append(attention_mask.sum())
        self.padded += attention_mask.numel()
        self.samples += attention_mask.shape[0]
        self.steps += 1

    def step_done(self) -> None:
        if self.device.type == "cpu":
            now = time.perf_counter()
            self.step_seconds.append(now - self._last)
            self._last = now

    def end_block(self) -> None:
        synchronize(self.device)
        began, samples, steps = self._block
        seconds = time.perf_counter() - began
        samples = self.samples - samples
        self.blocks.append(
            {
                "steps": self.steps - steps,
                "samples": samples,
                "seconds": round(seconds, 4),
                "samples_per_s": samples / seconds,
            }
        )

    def result(self) -> dict:
        seconds = sum(b["seconds"] for b in self.blocks)
        real = int(torch.stack(self.real).sum().item()) if self.real else 0
        median_step = float(np.median(self.step_seconds)) if self.step_seconds else None
        return {
            "steps": self.steps,
            "seconds": round(seconds, 4),
            "samples": self.samples,
            "samples_per_s": self.samples / seconds,
            "samples_per_s_median_block": float(
                np.median([b["samples_per_s"] for b in self.blocks])
            ),
            "real_tokens": real,
            "padded_tokens": self.padded,
            "real_tokens_per_s": real / seconds,
            "padded_token_share": 1.0 - real / self.padded if self.padded else 0.0,
            "step_ms": 1000.0 * seconds / max(1, self.steps),
            "median_step_ms": None if median_step is None else 1000.0 * median_step,
            "blocks": self.blocks,
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
    """Peak memory of one path (see the mtl.harness.bench package docstring for the method)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = None

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_cuda = torch.cuda.memory_allocated(self.device)
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
            peak_cuda = torch.cuda.max_memory_allocated(self.device)
            self.result["peak_cuda_allocated_mb"] = peak_cuda / 2**20
            self.result["peak_cuda_delta_mb"] = (peak_cuda - self.base_cuda) / 2**20
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
