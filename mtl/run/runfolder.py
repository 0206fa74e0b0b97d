"""A run folder's identity and locks: what its folds were trained with, and who is writing it.

`fingerprint.json` records every setting that changes what a fold trains or predicts (data
contents by SHA-256, row caps, seed, folds, model, optimisation, trainer keys). A rerun or a fold
job whose identity differs is refused while the folder holds finished or interrupted folds, so a
run never mixes folds of two configs; a folder with no fold work yet simply starts over.

Locks are advisory `flock`s, released by the kernel when their process dies, so a killed run
never blocks the next one: `run_lock` (held for the few seconds that check and write the
folder's identity, and while the finished folds are blended; fold jobs of one run wait for each
other) and `fold_lock` (held while a fold
trains; a second process that wants the same fold stops with a message naming the holder).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from box import Box

from mtl.config import DEFAULTS, TASK_DEFAULTS, load_config, to_dict
from mtl.errors import ConfigError, MTLError, first_line
from mtl.io import file_sha256, read_json_object, write_json

log = logging.getLogger(__name__)

IDENTITY_FILE = "fingerprint.json"
SPLIT_FILES = ("train", "val", "test")
# Task keys that change only the blend of finished folds (results.json, the blended tables), so a
# finished run takes a new value without retraining (docs/calibration.md)
TASK_KEYS_NOT_FINGERPRINTED = ("calibration",)
# Keys that do not change what a fold trains or predicts: where the run is written, which of its
# folds this process runs, how finished folds are blended (redone from the fold files every
# time), logging, and the hardware it runs on (a requeued job may land on another node type).
NOT_FINGERPRINTED = (
    "run",
    "data_dir",
    "cv.folds",
    "cv.blend",
    "cv.threshold_bootstrap",  # decides thresholds in the blend, after training
    "data.num_workers",
    "data.cache_dir",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "gradient.log_every_n_steps",  # monitoring leaves the training bit for bit as it is
    "trainer.accelerator",
    "trainer.devices",
    "trainer.strategy",
    "trainer.num_nodes",
    "tune",  # scripts/tune.py's search space: it chooses configs, a run trains one
)


class RunFolderBusy(MTLError):
    """Another process holds the lock on this run folder or fold."""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _fingerprinted(key: str) -> bool:
    parts = key.split(".")
    if parts[0] == "tasks" and len(parts) == 3 and parts[2] in SPLIT_FILES:
        return False  # the file's contents are fingerprinted instead: data may move
    if parts[0] == "tasks" and len(parts) == 3 and parts[2] in TASK_KEYS_NOT_FINGERPRINTED:
        return False
    return not any(key == k or key.startswith(k + ".") for k in NOT_FINGERPRINTED)


def run_identity(cfg: Box, files: bool = True) -> dict:
    """Settings that define the run's folds and training, and the SHA-256 of every task file."""
    from mtl.data.files import resolve_path

    settings = {k: v for k, v in flatten(to_dict(cfg)).items() if _fingerprinted(k)}
    settings["task_order"] = list(cfg.tasks)
    contents = {}
    if files:
        for name, spec in cfg.tasks.items():
            for split in SPLIT_FILES:
                if spec[split]:
                    path = resolve_path(cfg, spec[split])
                    contents[f"tasks.{name}.{split}"] = {
                        "path": str(path),
                        "sha256": file_sha256(path),
                    }
    identity = {"settings": settings, "files": contents} if files else {"settings": settings}
    # through JSON, so values compare equal to the stored ones (tuples, numpy scalars, ...)
    return json.loads(json.dumps(identity, default=str))


def has_fold_work(run_dir: Path) -> bool:
    """A finished fold (metrics.json) or an interrupted one (a checkpoint) is work to protect."""
    return any(run_dir.glob("fold_*/metrics.json")) or any(run_dir.glob("fold_*/*.ckpt"))


def _default_of(key: str) -> Any:
    parts = key.split(".")
    node: Any = TASK_DEFAULTS if parts[0] == "tasks" and len(parts) == 3 else DEFAULTS
    for part in parts[2:] if node is TASK_DEFAULTS else parts:
        if not isinstance(node, dict) or part not in node:
            return "<unset>"
        node = node[part]
    return json.loads(json.dumps(node, default=str))


def identity_differences(before: dict, now: dict) -> list[str]:
    changes = []
    old, new = before.get("settings", {}), now.get("settings", {})
    for key in sorted(new):  # a key this version no longer has cannot change what it trains
        # a key added since the folder was written counts as its default (what was trained)
        was = old.get(key, _default_of(key))
        if was != new[key]:
            changes.append(f"{key} was {was!r}, now {new[key]!r}")
    if "files" in before:  # absent in folders written before fingerprints
        old_files, new_files = before["files"], now.get("files", {})
        for key in sorted(set(old_files) | set(new_files)):
            was, is_ = old_files.get(key), new_files.get(key)
            if was is None or is_ is None:
                changes.append(
                    f"{key} was {'none' if was is None else was['path']}, now "
                    f"{'none' if is_ is None else is_['path']}"
                )
            elif was["sha256"] != is_["sha256"]:
                changes.append(
                    f"the contents of {key} ({is_['path']}) changed since the folds were built "
                    f"(sha256 {was['sha256'][:12]}…, now {is_['sha256'][:12]}…)"
                )
    return changes


def stored_identity(run_dir: Path) -> dict | None:
    """The folder's recorded identity; for a folder written before fingerprints, its config.yaml's
    settings (no file contents); None for a new folder."""
    path = run_dir / IDENTITY_FILE
    if path.is_file():
        stored, problem = read_json_object(path, "settings")
        if stored is not None:
            return stored
        raise ConfigError(
            f"Cannot read {path} ({problem}), so this run folder's folds cannot be checked "
            f"against the current config and data. Use another run.name, or delete the folder "
            f"(or, if you are sure the config and data are unchanged, just {path}) to start over."
        )
    if (run_dir / "config.yaml").is_file():
        try:
            return run_identity(load_config(run_dir / "config.yaml"), files=False)
        except MTLError:
            return None
    return None


def fold_assignment_change(run_dir: Path, folds: pd.DataFrame) -> list[str]:
    """The folds computed now against the folder's folds.csv: the same settings and data can
    still give other folds after an mtl upgrade that builds them differently."""
    path = run_dir / "folds.csv"
    if not path.is_file():
        return []
    try:
        saved = pd.read_csv(path)[list(folds.columns)]
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return [f"{path} cannot be read, so the folds cannot be checked"]
    now = folds.reset_index(drop=True)
    if saved.shape == now.shape and (saved.to_numpy() == now.to_numpy()).all():
        return []
    moved = (
        int((saved["fold"].to_numpy() != now["fold"].to_numpy()).sum())
        if saved.shape == now.shape
        else abs(len(saved) - len(now))
    )
    return [
        f"the fold assignment differs from {path} ({moved} rows; another mtl version may build "
        f"folds differently)"
    ]


def check_and_record(
    cfg: Box, run_dir: Path, identity: dict, write: bool, folds: pd.DataFrame | None = None
) -> None:
    """Refuse a run whose identity (or fold assignment) differs from the folder's while the
    folder holds fold work; otherwise record it (a folder with no fold work starts over)."""
    work = has_fold_work(run_dir)
    try:
        before = stored_identity(run_dir)
    except ConfigError:
        if work:
            raise
        before = None  # unreadable, but nothing trained yet: start over
    changes = identity_differences(before, identity) if before is not None else []
    if work and folds is not None:
        changes += fold_assignment_change(run_dir, folds)
    if changes and work:
        shown = "; ".join(changes[:5]) + (
            f"; and {len(changes) - 5} more" if len(changes) > 5 else ""
        )
        raise ConfigError(
            f"Run folder {run_dir} holds folds trained with other settings or data: {shown}. "
            f"Resuming or adding folds would mix runs that no single config produced. Run with "
            f"the folder's settings and data again (see its config.yaml), use another run.name "
            f"(e.g. run.name={cfg.run.name}_2), or delete the folder to start over."
        )
    if changes:
        log.info("run folder %s has no finished or interrupted fold: starting over", run_dir)
    if write:
        write_json(run_dir / IDENTITY_FILE, identity)


# --- locks ------------------------------------------------------------------------------------


def _holder() -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"pid {os.getpid()} on {socket.gethostname()} since {stamp}"


@contextmanager
def _flock(path: Path, wait: bool, busy: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no locking
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open_lock_file(path)
    except OSError as err:  # a read-only folder or file system, a full disk, no permission
        raise MTLError(
            f"Cannot open the lock file {path}: {type(err).__name__}: {first_line(err)}. mtl takes "
            f"it before it writes into the run folder {path.parent}, so nothing there was "
            f"changed. Make the folder writable (or free disk space) and run the command again."
        ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunFolderBusy(busy.format(holder=holder)) from None
        try:  # the holder's name only informs a waiting process: a full disk must not stop us
            handle.seek(0)
            handle.truncate()
            handle.write(_holder() + "\n")
            handle.flush()
        except OSError:
            pass
        yield
    finally:
        with contextlib.suppress(OSError):  # a buffered holder line that cannot be flushed
            handle.close()  # closing releases the lock


def open_lock_file(path: Path):
    """Opened for writing the holder's name: never deleted, as unlinking races with flock."""
    return open(path, "a+", encoding="utf-8")


def run_lock(run_dir: Path):
    """Held while a process checks and writes the run folder's identity, and while it blends the
    finished folds (seconds each), so fold jobs of one run take turns."""
    return _flock(run_dir / ".lock", wait=True, busy="")


def fold_lock(run_dir: Path, fold: int):
    """Held while fold `fold` trains; a second process wanting it stops with a clear message."""
    return _flock(
        run_dir
        / f".fold_{fold}.lock",  # beside the fold folder: Lightning warns on a non-empty one
        wait=False,
        busy=(
            f"Fold {fold} of run folder {run_dir} is being trained by another process "
            f"({{holder}}). Wait for it to finish and run the same command again (finished folds "
            f"are skipped), or train other folds meanwhile with --folds."
        ),
    )
