"""Issue 12, "nothing lost, nothing silently wrong": one test (or table row) per failure a hostile
new user found. Each case failed before the fix: a silent wrong result, lost work, an unsafe load
or a traceback. Run-folder cases drive `mtl.run.train` on the tiny BERT; none trains for long.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import run_train_script, tiny_overrides

from mtl.cli.train import main
from mtl.config import DEFAULT_CONFIG, load_config
from mtl.data.load import load_tasks
from mtl.errors import CheckpointError, ConfigError, DataError
from mtl.model.network import load_tokenizer


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT_CONFIG, list(overrides))
    return str(info.value)


def exit_2(capsys, argv: list[str]) -> str:
    """`mtl.cli.train.main` exits 2 with one `error:` paragraph and no traceback; returns it."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def args(tiny_backbone, data_dir, tmp_path):
    def make(*extra: str) -> list[str]:
        return tiny_overrides(tiny_backbone, data_dir, tmp_path / "out") + list(extra)

    return make


# --- 1. YAML 1.1 booleans: class names and other text stay strings ---------------------------


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("tasks.toxicity.classes=[NOT, OFF]", ("tasks", "toxicity", "classes"), ["NOT", "OFF"]),
        ("tasks.toxicity.classes=[no, yes]", ("tasks", "toxicity", "classes"), ["no", "yes"]),
        ("tasks.toxicity.classes=[n, y]", ("tasks", "toxicity", "classes"), ["n", "y"]),
        ("run.name=off", ("run", "name"), "off"),
        ("tasks.toxicity.label_columns=[ON]", ("tasks", "toxicity", "label_columns"), ["ON"]),
        # where a bool is meant, the YAML 1.1 words still work
        ("early_stopping.enabled=no", ("early_stopping", "enabled"), False),
        ("trainer.deterministic=on", ("trainer", "deterministic"), True),
    ],
)
def test_yaml_1_1_boolean_words_stay_text_where_text_is_meant(override, key, expected):
    cfg = load_config(DEFAULT_CONFIG, [override])
    value = cfg
    for part in key:
        value = value[part]
    assert value == expected


def test_class_names_from_a_yaml_file_stay_strings_and_survive_the_saved_config(tmp_path):
    from mtl.config import save_config

    path = tmp_path / "cfg.yaml"
    path.write_text(
        "tasks:\n  toxicity: {type: binary, train: t.csv, classes: [NOT, OFF]}\n"
        "  sentiment: {type: multiclass, train: s.csv, classes: [no, yes, Off]}\n"
    )
    cfg = load_config(path)
    assert cfg.tasks.toxicity.classes == ["NOT", "OFF"]
    assert cfg.tasks.sentiment.classes == ["no", "yes", "Off"]
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert again.tasks.toxicity.classes == ["NOT", "OFF"]


def test_a_true_false_word_in_a_text_key_is_an_error_saying_to_quote_it():
    message = config_error("run.name=true")
    assert "'run.name'" in message and "quote it" in message


TRAIN_ONLY = ("tasks.toxicity.val=null", "tasks.toxicity.test=null")


@pytest.fixture
def named_labels(data_dir, tmp_path) -> Path:
    """The toxicity fixture with OLID's label names: NOT / OFF."""
    frame = pd.read_csv(data_dir / "toxicity_train.csv")
    frame["label"] = frame["label"].map({0: "NOT", 1: "OFF"})
    path = tmp_path / "olid.csv"
    frame.to_csv(path, index=False)
    return path


def test_readme_named_classes_load_as_two_classes(tiny_cfg, tiny_backbone, named_labels):
    cfg = tiny_cfg(
        f"tasks.toxicity.train={named_labels}", "tasks.toxicity.classes=[NOT, OFF]", *TRAIN_ONLY
    )
    data, metas = load_tasks(cfg, load_tokenizer(str(tiny_backbone)))
    assert metas["toxicity"].classes == ["NOT", "OFF"]
    assert len(data["toxicity"]["train"]) == 120  # nothing dropped, nothing refused


def mismatched_drop(args, named_labels: Path, *extra: str) -> list[str]:
    """Classes that miss the file's positive label 'OFF', with on_bad_rows=drop."""
    return args(
        f"tasks.toxicity.train={named_labels}",
        "tasks.toxicity.classes=[NOT, offensive]",
        *TRAIN_ONLY,
        "data.on_bad_rows=drop",
        *extra,
    )


def test_drop_refuses_to_drop_a_whole_class(capsys, args, named_labels):
    # a class list that misses the file's positive label: before, drop trained a one-class model
    message = exit_2(capsys, mismatched_drop(args, named_labels, "data.max_dropped_fraction=1.0"))
    assert "['offensive']" in message and "no training rows" in message
    assert "'OFF' (" in message  # the labels that were dropped, so the mismatch is visible
    assert str(named_labels) in message


def test_drop_refuses_more_than_the_stated_share_of_a_file(capsys, args, named_labels):
    message = exit_2(capsys, mismatched_drop(args, named_labels))
    assert "data.max_dropped_fraction=0.1" in message
    assert "of 120 rows" in message and str(named_labels) in message


# --- 9, 10. values that crashed mid-run or were accepted silently ----------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("optim.lr_backbone=-2e-5", "optim.lr_backbone"),
        ("optim.lr_heads=-1", "optim.lr_heads"),
        ("optim.lr_log_vars=-0.1", "optim.lr_log_vars"),
        ("cv.n_splits=0", "cv.n_splits"),
        ("cv.n_splits=-3", "cv.n_splits"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("optim.warmup_ratio=1.2", "optim.warmup_ratio"),
        ("backbone.dropout=1.0", "backbone.dropout"),
        ("data.max_dropped_fraction=2", "data.max_dropped_fraction"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
        ("tasks.toxicity.gamma=-1", "tasks.toxicity.gamma"),
        ("tasks.toxicity.encoding=utf-99", "tasks.toxicity.encoding"),
    ],
)
def test_out_of_range_values_are_config_errors_naming_the_key(override, key):
    message = config_error(override)
    assert f"'{key}'" in message


def test_max_epochs_0_through_the_entry_point_exits_2(capsys, args):
    message = exit_2(capsys, args("trainer.max_epochs=0"))
    assert "'trainer.max_epochs'" in message


# --- 11. non-UTF-8 files name the row and the fix; `encoding` reads them ----------------------


@pytest.fixture
def latin1_file(data_dir, tmp_path) -> Path:
    frame = pd.read_csv(data_dir / "toxicity_train.csv")
    frame.loc[6, "text"] = "café you idiot"
    path = tmp_path / "latin1.csv"
    frame.to_csv(path, index=False, encoding="latin-1")
    return path


def test_non_utf8_file_names_the_row_and_the_fix(capsys, args, latin1_file):
    message = exit_2(capsys, args(f"tasks.toxicity.train={latin1_file}", *TRAIN_ONLY))
    assert str(latin1_file) in message and "'tasks.toxicity.train'" in message
    assert "byte 0xe9 on line 8 (data row 7" in message
    assert "Save the file as UTF-8" in message and "tasks.toxicity.encoding" in message


def test_encoding_key_reads_a_non_utf8_file(tiny_cfg, tiny_backbone, latin1_file):
    cfg = tiny_cfg(
        f"tasks.toxicity.train={latin1_file}", "tasks.toxicity.encoding=latin-1", *TRAIN_ONLY
    )
    data, _ = load_tasks(cfg, load_tokenizer(str(tiny_backbone)))
    assert data["toxicity"]["train"].texts[6] == "café you idiot"


def test_config_module_is_the_one_yaml_reader():
    # yaml_load parses like the config loader; a plain safe_load would read OFF as False
    from mtl.config import yaml_load

    assert yaml_load("[NOT, OFF]") == ["NOT", "OFF"]
    assert yaml.safe_load("[NOT, OFF]") == ["NOT", False]


# --- run folders: a tiny one-task setup ---------------------------------------------------------

ONE_TASK = ("tasks.emotion=null", "tasks.sentiment=null", "trainer.max_epochs=1")


@pytest.fixture
def own_data(data_dir, tmp_path) -> Path:
    """A private copy of the fixture data, free to edit."""
    folder = tmp_path / "own_data"
    shutil.copytree(data_dir, folder)
    return folder


@pytest.fixture
def one_task(tiny_cfg, own_data):
    """Factory: a one-task config on the private data copy, run folder `tmp_path/tiny`."""

    def make(*extra: str):
        return tiny_cfg(f"data_dir={own_data}", *ONE_TASK, *extra)

    return make


def folder_of(cfg) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def fake_fold_work(cfg, fold: int = 0) -> None:
    """What an interrupted fold leaves: a last.ckpt (the check looks only at its presence)."""
    (folder_of(cfg) / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    (folder_of(cfg) / f"fold_{fold}" / "last.ckpt").write_bytes(b"")


# --- 2, 3. the folder's fingerprint: changed data, row caps or training keys are refused ------


@pytest.mark.parametrize(
    "first, second, named",
    [
        ("data.max_train_rows=64", "data.max_train_rows=96", "data.max_train_rows"),
        ("trainer.max_epochs=1", "trainer.max_epochs=3", "trainer.max_epochs"),
        ("optim.lr_heads=1e-2", "optim.lr_heads=1e-3", "optim.lr_heads"),
        ("seed=1", "seed=2", "seed"),
        ("cv.n_splits=2", "cv.n_splits=3", "cv.n_splits"),
        ("data.max_length=32", "data.max_length=16", "data.max_length"),
        ("tasks.toxicity.label_smoothing=0.0", "tasks.toxicity.label_smoothing=0.1", "label_"),
    ],
)
def test_a_changed_setting_is_refused_once_the_folder_holds_fold_work(
    one_task, first, second, named
):
    from mtl.run.train import prepare

    cfg = one_task("cv.n_splits=2", first)
    prepare(cfg)
    saved = (folder_of(cfg) / "config.yaml").read_text()
    fake_fold_work(cfg)
    with pytest.raises(ConfigError) as info:
        prepare(one_task("cv.n_splits=2", second))
    assert named in str(info.value) and str(folder_of(cfg)) in str(info.value)
    assert "run.name=tiny_2" in str(info.value)
    assert (folder_of(cfg) / "config.yaml").read_text() == saved  # still what was trained


def test_a_folder_from_before_fingerprints_is_checked_against_its_config_yaml(one_task):
    from mtl.run.train import prepare

    cfg = one_task("trainer.max_epochs=1")
    prepare(cfg)
    (folder_of(cfg) / "fingerprint.json").unlink()  # as an older mtl wrote it
    fake_fold_work(cfg)
    with pytest.raises(ConfigError, match="trainer.max_epochs was 1, now 2"):
        prepare(one_task("trainer.max_epochs=2"))
    prepare(cfg)  # the same settings resume, and the data hashes are recorded from now on
    assert (folder_of(cfg) / "fingerprint.json").is_file()


def test_a_config_key_added_by_a_newer_version_counts_as_its_default(one_task):
    import json

    from mtl.run.train import prepare

    cfg = one_task()
    prepare(cfg)
    fake_fold_work(cfg)
    path = folder_of(cfg) / "fingerprint.json"
    stored = json.loads(path.read_text())
    del stored["settings"]["data.max_dropped_fraction"]  # as a version without the key wrote it
    del stored["settings"]["tasks.toxicity.encoding"]
    stored["settings"]["data.retired_key"] = 3  # and one this version no longer has
    path.write_text(json.dumps(stored))
    prepare(cfg)  # resumes
    with pytest.raises(ConfigError, match="data.max_dropped_fraction was 0.1, now 0.5"):
        prepare(one_task("data.max_dropped_fraction=0.5"))


def test_an_edited_data_file_is_refused_naming_the_file(one_task, own_data):
    from mtl.run.train import prepare

    cfg = one_task("cv.n_splits=2")
    prepare(cfg)
    fake_fold_work(cfg)
    path = own_data / "toxicity_train.csv"
    frame = pd.read_csv(path)
    frame.loc[0, "label"] = 1 - frame.loc[0, "label"]
    frame.to_csv(path, index=False)
    with pytest.raises(ConfigError) as info:
        prepare(cfg)
    assert "contents of tasks.toxicity.train" in str(info.value) and str(path) in str(info.value)


def test_folds_built_differently_by_another_version_are_refused(one_task):
    from mtl.run.train import prepare

    cfg = one_task("cv.n_splits=2")
    prepare(cfg)
    fake_fold_work(cfg)
    saved = pd.read_csv(folder_of(cfg) / "folds.csv")
    saved.loc[:9, "fold"] = 1 - saved.loc[:9, "fold"]  # as if an older mtl had built the folds
    saved.to_csv(folder_of(cfg) / "folds.csv", index=False)
    with pytest.raises(ConfigError, match=r"fold assignment differs.*\(10 rows"):
        prepare(cfg)


def test_fold_jobs_with_different_row_caps_cannot_merge(one_task):
    # the case end to end: before, fold 1 trained on other rows and the OOF file merged
    from mtl.run.train import train

    train(one_task("cv.n_splits=2", "cv.folds=0", "data.max_train_rows=64"))
    with pytest.raises(ConfigError, match="data.max_train_rows was 64, now 96"):
        train(one_task("cv.n_splits=2", "cv.folds=1", "data.max_train_rows=96"))
    assert not (folder_of(one_task()) / "fold_1").exists()


def test_the_same_data_moved_elsewhere_and_other_hardware_keys_resume(one_task, own_data, tmp_path):
    from mtl.run.train import prepare

    cfg = one_task("cv.n_splits=2")
    prepare(cfg)
    fake_fold_work(cfg)
    moved = tmp_path / "moved"
    shutil.copytree(own_data, moved)
    prepare(one_task("cv.n_splits=2", f"data_dir={moved}", "cv.folds=1", "data.num_workers=1"))


# --- 4. a failed start leaves nothing that blocks the corrected rerun --------------------------


def test_a_failed_start_leaves_no_run_folder(one_task, own_data):
    from mtl.run.train import prepare

    cfg = one_task("cv.n_splits=500")  # more folds than rows: refused when folds are built
    with pytest.raises(DataError):
        prepare(cfg)
    assert not folder_of(cfg).exists()
    prepare(one_task("cv.n_splits=2"))  # the corrected command runs


def test_a_folder_without_fold_work_starts_over_with_new_settings(one_task):
    from mtl.run.train import prepare

    prepare(one_task("cv.n_splits=2", "trainer.max_epochs=1"))
    prepare(one_task("cv.n_splits=3", "trainer.max_epochs=2"))  # nothing trained yet: fine
    saved = load_config(folder_of(one_task()) / "config.yaml")
    assert saved.cv.n_splits == 3 and saved.trainer.max_epochs == 2


# --- 5. locks: one process per fold; stale locks do not block; fold jobs run side by side -----


def test_a_fold_being_trained_elsewhere_stops_a_second_run_with_a_message(one_task):
    from mtl.run.runfolder import RunFolderBusy, fold_lock
    from mtl.run.train import train

    cfg = one_task()
    folder_of(cfg).mkdir(parents=True)
    with fold_lock(folder_of(cfg), 0):  # flock conflicts between two opens, as across processes
        with pytest.raises(RunFolderBusy) as info:
            train(cfg)
    message = str(info.value)
    assert "Fold 0 of run folder" in message and f"pid {os.getpid()}" in message
    assert not (folder_of(cfg) / "csv").exists()  # no second set of logs


def test_a_stale_lock_file_of_a_killed_process_does_not_block(one_task):
    from mtl.run.train import train

    cfg = one_task()
    (folder_of(cfg) / "fold_0").mkdir(parents=True)
    (folder_of(cfg) / ".fold_0.lock").write_text("pid 999999 on elsewhere since long ago\n")
    (folder_of(cfg) / ".lock").write_text("pid 999999 on elsewhere since long ago\n")
    assert train(cfg)["folds"] == [0]


def test_a_lock_held_by_another_process_blocks_until_that_process_is_killed(one_task):
    import signal
    import subprocess
    import sys

    from mtl.run.runfolder import RunFolderBusy
    from mtl.run.train import train

    cfg = one_task()
    folder_of(cfg).mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from mtl.run.runfolder import fold_lock\n"
            f"with fold_lock(Path({str(folder_of(cfg))!r}), 0):\n"
            "    print('locked', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid} on"):
            train(cfg)
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed run: the kernel drops its lock
        holder.wait()
    assert train(cfg)["folds"] == [0]


def test_fold_jobs_of_one_run_train_side_by_side(one_task):
    from mtl.run.runfolder import fold_lock
    from mtl.run.train import train

    cfg = one_task("cv.n_splits=2", "cv.folds=0")
    folder_of(cfg).mkdir(parents=True)
    with fold_lock(folder_of(cfg), 1):  # another job is training fold 1
        assert train(cfg)["folds"] == [0]


# --- 7. every checkpoint mtl opens goes through the safe loader --------------------------------


class Hostile:
    """Unpickling this runs code: what a planted last.ckpt would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.fixture
def interrupted(one_task):
    """A one-fold run folder whose fold 0 has a last.ckpt to resume from (set by the test)."""
    from mtl.run.train import prepare

    cfg = one_task()
    prepare(cfg)
    (folder_of(cfg) / "fold_0").mkdir()
    return cfg, folder_of(cfg) / "fold_0" / "last.ckpt"


def test_a_hostile_last_ckpt_is_refused_even_when_torch_is_told_to_unpickle(
    interrupted, tmp_path, monkeypatch, capsys, args
):
    import torch

    cfg, last = interrupted
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": Hostile(marker)}, last)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    from mtl.run.train import train

    with pytest.raises(CheckpointError) as info:
        train(cfg)
    assert not marker.exists()
    assert "Cannot resume fold 0" in str(info.value) and f"delete {last}" in str(info.value)


def test_a_hostile_last_ckpt_through_the_train_script_exits_2_without_running_code(
    interrupted, tmp_path, monkeypatch
):
    import torch

    cfg, last = interrupted
    marker = tmp_path / "pwned"
    torch.save({"payload": Hostile(marker)}, last)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    done = run_train_script(["--config", str(folder_of(cfg) / "config.yaml")])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "error: Cannot resume fold 0" in done.stderr
    assert not marker.exists()


def test_a_truncated_last_ckpt_is_an_error_with_the_restart_option(interrupted, capsys):
    from mtl.cli.train import main as train_main

    cfg, last = interrupted
    last.write_bytes(b"PK\x03\x04 truncated")
    # the same config again, through the entry point
    code = train_main(["--config", str(folder_of(cfg) / "config.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "Cannot resume fold 0" in err and f"delete {last}" in err


def test_fsdp_vets_a_full_checkpoint_with_the_safe_loader_before_lightning_unpickles_it(
    tmp_path, monkeypatch
):
    # Lightning's FSDP opens full checkpoints with its own unrestricted unpickler
    import torch

    from mtl.run.fit import EncoderFSDP

    marker = tmp_path / "pwned"
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "payload": Hostile(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        EncoderFSDP().load_checkpoint(path)
    assert not marker.exists()


def test_training_and_resuming_load_every_checkpoint_with_weights_only(one_task, monkeypatch):
    import torch

    import mtl.run.fit
    from mtl.run.train import train

    loads = []
    real_load = torch.load

    def spy(*a, **kw):
        loads.append(kw.get("weights_only"))
        return real_load(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    cfg = one_task("trainer.max_epochs=2", "early_stopping.enabled=false")
    original = mtl.run.fit.make_trainer

    class StopAfterFirstEpoch(Exception):
        pass

    class Stop(mtl.run.fit.L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 0:
                raise StopAfterFirstEpoch

    monkeypatch.setattr(
        mtl.run.fit,
        "make_trainer",
        lambda c, f, r, k, callbacks=None: original(c, f, r, k, [Stop()]),
    )
    with pytest.raises(StopAfterFirstEpoch):
        train(cfg)
    monkeypatch.setattr(mtl.run.fit, "make_trainer", original)
    train(cfg)  # resumes from last.ckpt, validates and predicts with best.ckpt
    assert loads and all(w is True for w in loads), loads


# --- 8. permissions follow the umask; orphaned temp files are removed --------------------------


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_respect_the_umask(tmp_path, mask, mode):
    from mtl.io import write_json

    old = os.umask(mask)
    try:
        path = write_json(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_run_folder_files_and_tokenizer_are_readable_by_the_group(one_task):
    from mtl.run.train import prepare

    old = os.umask(0o002)
    try:
        prepare(one_task())
    finally:
        os.umask(old)
    folder = folder_of(one_task())
    for path in [folder / "config.yaml", folder / "folds.csv", folder / "tokenizer"]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o060 == 0o060 or path.is_dir(), path
    assert stat.S_IMODE((folder / "tokenizer").stat().st_mode) == 0o775
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o664 for p in (folder / "tokenizer").iterdir())


def test_orphaned_temp_files_of_killed_writers_are_removed(one_task):
    import socket
    import subprocess
    import sys

    from mtl.io import STALE_AFTER_S, tmp_prefix
    from mtl.run.train import prepare

    cfg = one_task()
    folder = folder_of(cfg)
    (folder / "fold_0").mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    host = tmp_prefix("x").split("@")[1].rstrip("~")
    orphan = folder / f".results.json~{dead}@{host}~abc123.tmp"
    fold_orphan = folder / "fold_0" / f".last.ckpt~{dead}@{host}~def456.tmp"
    old_style = folder / ".oof_toxicity.csv.k2j3h4.tmp"  # written before pids were in the name
    cache_orphan = Path(cfg.run.output_dir) / ".token_cache" / f".t-1.npz~{dead}@{host}~q.tmp"
    cache_orphan.parent.mkdir(parents=True, exist_ok=True)
    live = folder / f"{tmp_prefix('folds.csv')}xyz.tmp"  # this process: a write in progress
    for path in (orphan, fold_orphan, old_style, live, cache_orphan):
        path.write_text("partial")
    long_ago = time.time() - STALE_AFTER_S - 60
    os.utime(old_style, (long_ago, long_ago))
    prepare(cfg)
    assert not orphan.exists() and not old_style.exists() and not cache_orphan.exists()
    assert live.exists()
    from mtl.run.train import train

    train(cfg)
    assert not fold_orphan.exists()
    assert socket.gethostname()


# --- 9. a damaged fold_k/metrics.json; max_length beyond the backbone's positions ---------------


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_a_damaged_metrics_json_on_rerun_is_an_error_naming_the_fix(one_task, capsys, content):
    from mtl.cli.train import main as train_main
    from mtl.run.train import prepare

    cfg = one_task()
    prepare(cfg)
    (folder_of(cfg) / "fold_0").mkdir()
    (folder_of(cfg) / "fold_0" / "metrics.json").write_text(content)
    code = train_main(["--config", str(folder_of(cfg) / "config.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "metrics.json" in err and "Delete the folder" in err


def test_max_length_beyond_the_backbones_positions_is_a_config_error(capsys, args):
    message = exit_2(capsys, args("data.max_length=100"))  # the tiny BERT has 64 positions
    assert "'data.max_length' is 100" in message and "at most 64 tokens" in message


def test_position_limit_of_roberta_family_discounts_the_padding_offset(tmp_path):
    from transformers import RobertaConfig

    from mtl.model.network import position_limit

    RobertaConfig(max_position_embeddings=514, pad_token_id=1).save_pretrained(tmp_path)
    assert position_limit(str(tmp_path)) == 512


# --- 11. a class with fewer rows than folds is refused with its numbers (issue 22, item 22) ----


def test_a_class_rarer_than_the_folds_is_refused_with_the_numbers(one_task, own_data):
    from mtl.run.train import prepare

    path = own_data / "toxicity_train.csv"
    frame = pd.read_csv(path)
    positives = frame.index[frame["label"] == 1]
    frame.drop(positives[2:]).to_csv(path, index=False)  # 2 positive rows
    cfg = one_task("cv.n_splits=3")
    with pytest.raises(DataError) as info:
        prepare(cfg)
    message = str(info.value)
    assert "task 'toxicity'" in message and "class 1 has 2" in message
    assert "cv.n_splits=2 or fewer" in message
    assert not folder_of(cfg).exists()


# --- 6, 11. predict: the input is never overwritten; empty texts are called out ---------------


@pytest.fixture(scope="module")
def finished_run(tiny_backbone, data_dir, tmp_path_factory) -> Path:
    from mtl.run.train import train

    out = tmp_path_factory.mktemp("reliability_run")
    cfg = load_config(DEFAULT_CONFIG, tiny_overrides(tiny_backbone, data_dir, out) + list(ONE_TASK))
    train(cfg)
    return folder_of(cfg)


@pytest.mark.parametrize("same", ["identical", "relative", "hard link"])
def test_predict_output_equal_to_input_is_refused_and_the_input_kept(
    finished_run, tmp_path, monkeypatch, capsys, same
):
    from mtl.cli.predict import main as predict_main

    source = tmp_path / "texts.csv"
    source.write_text("text\nyou idiot\nthanks friend\n")
    target = {"identical": source, "relative": Path("texts.csv"), "hard link": tmp_path / "l.csv"}
    if same == "hard link":
        os.link(source, target[same])
    monkeypatch.chdir(tmp_path)
    code = predict_main([str(finished_run), "--input", str(source), "--output", str(target[same])])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "would replace your input" in err
    assert source.read_text() == "text\nyou idiot\nthanks friend\n"


def test_a_non_utf8_input_file_at_predict_time_names_the_row_and_the_fix(
    finished_run, tmp_path, capsys
):
    from mtl.cli.predict import main as predict_main

    source = tmp_path / "latin1.csv"
    source.write_bytes("text\nyou idiot\ncafé\n".encode("latin-1"))
    code = predict_main(
        [str(finished_run), "--input", str(source), "--output", str(tmp_path / "o.csv")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "byte 0xe9 on line 3 (data row 2" in err and "Save it as UTF-8" in err


def test_predictor_api_refuses_to_overwrite_its_input(finished_run, tmp_path):
    from mtl.errors import PredictError
    from mtl.inference.predictor import Predictor

    source = tmp_path / "texts.csv"
    source.write_text("text\nhello\n")
    with pytest.raises(PredictError, match="would replace your input"):
        Predictor.from_run(finished_run, device="cpu").predict_file(source, source)


def test_empty_texts_at_predict_time_are_warned_with_their_rows(finished_run, tmp_path, caplog):
    from mtl.inference.predictor import Predictor

    predictor = Predictor.from_run(finished_run, device="cpu")
    source = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["you idiot", "", "thanks", "   ", "nice"]}).to_csv(source, index=False)
    with caplog.at_level(logging.WARNING, logger="mtl"):
        predictor.predict_file(source, tmp_path / "out.csv", chunk_size=2)
        predictor.predict_proba(["fine", " "])
    warned = [r.getMessage() for r in caplog.records if "empty" in r.getMessage()]
    assert len(warned) == 2
    assert warned[0].startswith(f"2 of 5 texts in {source}") and "rows 2, 4" in warned[0]
    assert warned[1].startswith("1 of 2 texts given") and "rows 2" in warned[1]
