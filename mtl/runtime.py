"""The process a command runs in: one log format, library noise turned down, the machine it ran on.

Every `main()` behind `scripts/*.py` starts with `setup_logging()`; results that report speed
record `hardware()`. The test suite ignores the same warnings (tests/conftest.py).
"""

from __future__ import annotations

import logging
import os
import platform
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

# Warnings that say nothing about a run of ours (regexes, as `warnings.filterwarnings` takes them).
IGNORED_WARNINGS = (
    ".*does not have many workers.*",
    ".*Precision.*is not supported by the model summary.*",
    ".*compute.*before.*update.*",
    # epoch-level logs are synced by torchmetrics before they are logged: identical on every rank
    ".*when logging on epoch level in distributed.*",
    ".*custom batch sampler.*for prediction.*",  # ours returns all rows
    ".*LeafSpec.*is deprecated.*",
    ".*number of training batches.*smaller than the logging interval.*",
    ".*litlogger.*",
    # mtl's TrainLoader does resume mid-epoch, from the loop's own count (mtl/data/sampling.py)
    ".*resuming from a checkpoint that ended before the epoch ended.*",
)
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
# With `strict` also these: the benchmark's output is its table
_LIGHTNING_LOGGERS = ("lightning.pytorch.accelerators.cuda", "lightning", "lightning.pytorch")


def quiet_libraries(strict: bool = False) -> None:
    """Tokenizer fork warnings off, Lightning's rank-zero chatter to warnings only, known-harmless
    warnings ignored. `strict`: Lightning's own loggers to errors only, and every UserWarning it
    raises ignored too."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    level = logging.ERROR if strict else logging.WARNING
    for name in _RANK_ZERO_LOGGERS + (_LIGHTNING_LOGGERS if strict else ()):
        logging.getLogger(name).setLevel(level)
    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if strict:
        warnings.filterwarnings("ignore", category=UserWarning, module="lightning")


def setup_logging(level: int = logging.INFO, strict: bool = False) -> None:
    """What every command line does first: our log lines at `level`, the libraries quieted."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    quiet_libraries(strict)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_averages() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (other processes competing for the cores)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def hardware(device: torch.device | None = None) -> dict:
    """The machine and library versions a measurement ran on. `device`: the one it ran on
    (default: the first GPU when there is one)."""
    import lightning
    import torch
    import transformers

    if device is None:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    cuda = device.type == "cuda"
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
    }
