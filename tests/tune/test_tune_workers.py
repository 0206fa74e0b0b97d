"""scripts/tune.py as separate processes: a worker killed mid-trial, two workers on one study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO
from test_tune_study import load, tiny_args, tune

pytestmark = pytest.mark.slow


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "scripts/tune.py", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_trial_killed_mid_fold_is_marked_failed_and_continued_in_its_folder(
    tiny_backbone, data_dir, tmp_path, caplog
):
    out = tmp_path / "out"
    args = tiny_args(
        tiny_backbone, data_dir, out,
        "trainer.max_epochs=6", "early_stopping.enabled=false", "tune.pruner=none",
    )  # fmt: skip
    worker = start(["--trials", "1", *args])
    fold = out / "tune_sample" / "trial_0" / "fold_0"
    wait_for(fold / "last.ckpt", worker)  # the first epoch is done: kill it mid-fold
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert load(out).trials[0].state.name == "RUNNING"  # what a kill leaves in the storage

    with caplog.at_level("INFO", logger="mtl"):
        assert tune("--trials", "1", *args) == 0  # the same command again
    killed, retry = load(out).trials
    assert killed.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert retry.params == killed.params and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["run_dir"] == "trial_0"  # continued where it stopped ...
    assert "fold 0: resuming from" in caplog.text  # ... from its last.ckpt, not from epoch 0
    assert (fold / "metrics.json").is_file()


def test_two_workers_on_one_study_share_its_trials(tiny_backbone, data_dir, tmp_path):
    out = tmp_path / "out"
    args = ["--trials", "3", *tiny_args(tiny_backbone, data_dir, out)]
    workers = [start(args) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), [log[-2000:] for log in logs]
    trials = load(out).trials
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    assert 3 <= len(finished) <= 4 and len(finished) == len(trials)  # at most one extra
    folders = [t.user_attrs["run_dir"] for t in finished]
    assert len(set(folders)) == len(folders)  # every trial its own run folder
    study_dir = out / "tune_sample"
    assert all((study_dir / f / "results.json").is_file() for f in folders)
    assert "## Val files" in (study_dir / "report.md").read_text()
