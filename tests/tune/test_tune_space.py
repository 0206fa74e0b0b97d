"""The `tune:` section and scripts/tune.py's refusals: every bad entry or option stops with one clear
paragraph (exit code 2) before any trial, and writes nothing."""

from __future__ import annotations

import pytest
from helpers import REPO, tiny_model_overrides

from mtl.config import load_config
from mtl.errors import ConfigError
from mtl.tune.space import Param, search_space

TUNE_YAML = REPO / "configs" / "tune.yaml"


def space(entry: str) -> list[str]:
    return [f"tune.space={{{entry}}}"]


def test_the_sample_study_config_loads_for_train_py_and_declares_a_space():
    cfg = load_config(TUNE_YAML)
    keys = [p.key for p in search_space(cfg.to_dict())]
    assert keys == ["optim.lr_backbone", "optim.lr_heads", "backbone.pooling", "trainer.max_epochs"]
    assert load_config(REPO / "configs" / "default.yaml").tune.space == {}  # the default: none


@pytest.mark.parametrize(
    "entry, says",
    [
        ("optim.lr_bakbone: {type: float, low: 1.0e-5, high: 1.0e-3}", "Did you mean 'optim.lr_backbone'"),
        ("optim: {type: float, low: 1.0, high: 2.0}", "a section of the config, not a key"),
        ("tasks.emo.gamma: {type: float, low: 0.0, high: 2.0}", "no task 'emo'"),
        ("tasks.emotion.train: {type: categorical, choices: [a.csv]}", "the task's data"),
        ("seed: {type: int, low: 1, high: 3}", "selection rows"),
        ("cv.n_splits: {type: int, low: 1, high: 3}", "which rows choose"),
        ("data.val_fraction: {type: float, low: 0.1, high: 0.2}", "selection rows"),
        ("optim.lr_backbone: {type: float, low: 3.0e-4, high: 2.0e-5}", "greater than high"),
        ("optim.lr_backbone: {type: float, low: 0.0, high: 1.0e-3, log: true}", "needs low > 0"),
        ("optim.lr_backbone: {type: float, low: -1.0e-5, high: 1.0e-3, log: true}", "needs low > 0"),
        ("backbone.pooling: {type: categorical, choices: []}", "non-empty list"),
        ("backbone.pooling: {type: categorical, choices: [mean, mean]}", "repeat a value"),
        ("backbone.pooling: {type: categorical, choices: [mean, max]}", "could try 'max'"),
        ("optim.lr_backbone: {type: float, low: .nan, high: 1.0e-3}", "finite number"),
        ("optim.lr_backbone: {type: float, low: 1.0e-5, high: .inf}", "finite number"),
        ("optim.lr_backbone: {type: float, low: -1.0, high: 1.0e-3}", "could try -1.0"),
        ("trainer.max_epochs: {type: int, low: 0, high: 3}", "could try 0"),
        ("trainer.max_epochs: {type: int, low: 1.5, high: 3}", "whole number"),
        ("trainer.max_epochs: {type: float, low: 1, high: 3}", "must be int"),
        ("optim.lr_backbone: {type: float, low: 1.0e-5, hgh: 1.0e-3}", "Did you mean 'high'"),
        ("optim.lr_backbone: {type: real, low: 1.0e-5, high: 1.0e-3}", "type must be one of"),
        ("optim.lr_backbone: 1.0e-4", "must be a mapping with a type"),
        ("optim.lr_backbone: {type: float, low: 1.0e-5, high: 1.0e-3, log: true, step: 1.0e-5}", "not both"),
        ("trainer.max_epochs: {type: int, low: 1, high: 3, step: 0}", "greater than 0"),
        ("optim.betas: {type: categorical, choices: [[0.9, 0.99]]}", "choices must be text"),
    ],
)  # fmt: skip
def test_a_bad_space_entry_is_refused_when_the_config_loads(entry, says):
    with pytest.raises(ConfigError) as err:
        load_config(TUNE_YAML, space(entry))
    key = entry.split(":")[0]
    assert f"tune.space.{key}" in str(err.value) and says in str(err.value)


def test_a_metric_no_task_reports_is_refused_with_the_close_spelling():
    with pytest.raises(ConfigError, match="Did you mean 'emotion/f1_joy'"):
        load_config(TUNE_YAML, ["tune.metric=emotion/f1_jy"])
    assert load_config(TUNE_YAML, ["tune.metric=emotion/f1_joy"]).tune.metric == "emotion/f1_joy"


def test_task_keys_of_existing_tasks_can_be_searched():
    cfg = load_config(TUNE_YAML, space("tasks.emotion.gamma: {type: float, low: 0.0, high: 3.0}"))
    assert search_space(cfg.to_dict()) == [Param("tasks.emotion.gamma", "float", 0.0, 3.0)]


def test_contains_says_whether_the_study_could_draw_the_config_s_own_value():
    lr = Param("optim.lr_backbone", "float", 1e-5, 1e-3, log=True)
    assert lr.contains(1e-4) and not lr.contains(1e-2)
    epochs = Param("trainer.max_epochs", "int", 1, 5, step=2)
    assert epochs.contains(3) and not epochs.contains(2) and not epochs.contains(True)
    pooling = Param("backbone.pooling", "categorical", choices=("mean", "cls"))
    assert pooling.contains("cls") and not pooling.contains("pooler")


# --- the command line -------------------------------------------------------------------------


def tune(tmp_path, *argv: str) -> int:
    from mtl.cli.tune import main

    return main(["--config", str(TUNE_YAML), f"run.output_dir={tmp_path / 'out'}", *argv])


@pytest.mark.parametrize("trials", ["0", "-1"])
def test_trials_below_one_are_refused_and_nothing_is_written(tmp_path, capsys, trials):
    pytest.importorskip("optuna")
    assert tune(tmp_path, "--trials", trials) == 2
    assert "--trials" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["..", "../escape", "a/b", ".hidden", "", "x/../y"])
def test_a_study_name_that_is_not_one_folder_name_is_refused(tmp_path, capsys, name):
    pytest.importorskip("optuna")
    assert tune(tmp_path, "--trials", "1", "--study", name) == 2
    assert "Study name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()


def test_a_folder_tune_py_did_not_make_is_never_written_into(
    tmp_path, capsys, tiny_backbone, data_dir
):
    pytest.importorskip("optuna")
    run = tmp_path / "out" / "mine"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    argv = ["--trials", "1", "--study", "mine", *tiny_model_overrides(tiny_backbone, data_dir)]
    assert tune(tmp_path, *argv) == 2
    assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["cv.selection=last"], "there are none"),
        (["trainer.devices=2"], "one process on one device"),
        (["cv.n_splits=2", "cv.folds=0"], "Drop cv.folds"),
        (["tune.space={}"], "tune.space is empty"),
    ],
)
def test_a_config_a_study_cannot_run_is_refused_before_any_trial(tmp_path, capsys, overrides, says):
    pytest.importorskip("optuna")
    assert tune(tmp_path, "--trials", "1", *overrides) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unusable_storage_is_one_clear_error(tmp_path, capsys, tiny_backbone, data_dir):
    pytest.importorskip("optuna")
    argv = ["--trials", "1", *tiny_model_overrides(tiny_backbone, data_dir)]
    assert tune(tmp_path, *argv, "--storage", "nosuchdriver://host/db") == 2
    assert "Cannot open the study storage" in capsys.readouterr().err
    assert tune(tmp_path, *argv, "--storage", str(tmp_path)) == 2  # a folder, not a journal file
    assert "Cannot open the study storage" in capsys.readouterr().err
    config = tmp_path / "my.yaml"  # an input given as the journal: never appended to
    config.write_text("seed: 1\n")
    assert tune(tmp_path, *argv, "--storage", str(config)) == 2
    assert "not an Optuna journal file" in capsys.readouterr().err
    assert config.read_text() == "seed: 1\n"


def test_without_optuna_tune_py_says_how_to_install_it_and_train_py_configs_still_load(
    tmp_path, capsys, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)  # what an install without the extra has
    assert tune(tmp_path, "--trials", "1") == 2
    assert "pip install -e '.[tune]'" in capsys.readouterr().err
    assert load_config(TUNE_YAML).tune.space  # the tune: section needs no optuna
