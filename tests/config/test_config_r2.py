"""Config checks of issue 22: non-finite numbers (item 12), integer bounds and floats for integer
keys (item 21), path components under run.output_dir (item 20), monitor.metric / monitor.mode
(item 3). Every numeric key of the schema is tried, so a key added later is covered too."""

from __future__ import annotations

import pytest
import yaml

from mtl.config import DEFAULT_CONFIG, DEFAULTS, TASK_DEFAULTS, load_config
from mtl.config.schema import TYPES
from mtl.config.validate import _types_of
from mtl.errors import ConfigError


def config_error(*overrides: str, path=DEFAULT_CONFIG) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        elif key != "tasks":
            yield f"{prefix}{key}", value


def schema_keys():
    """(override key, allowed types) for every key of the schema, task keys on `toxicity`."""
    for key, default in _leaves(DEFAULTS):
        yield key, TYPES.get(key) or _types_of(default)
    for key, default in TASK_DEFAULTS.items():
        yield f"tasks.toxicity.{key}", TYPES.get(f"task.{key}") or _types_of(default)


NUMERIC = [k for k, allowed in schema_keys() if {int, float} & set(allowed) - {bool}]
INTEGER = [k for k, allowed in schema_keys() if int in allowed and float not in allowed]
NUMBER_LISTS = ["optim.betas", "tasks.toxicity.class_weights", "tasks.emotion.threshold"]


def test_the_schema_has_the_numeric_keys_these_tests_cover():
    assert {"optim.lr_backbone", "seed", "cv.n_splits", "tasks.toxicity.gamma"} <= set(NUMERIC)
    assert {"seed", "cv.n_splits", "data.batch_size", "trainer.max_epochs"} <= set(INTEGER)


# --- item 12: inf / nan ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan", "1e999"])
@pytest.mark.parametrize("key", NUMERIC)
def test_non_finite_numbers_are_refused_for_every_numeric_key(key, value):
    message = config_error(f"{key}={value}")
    assert f"'{key}'" in message


@pytest.mark.parametrize("key", NUMBER_LISTS)
def test_non_finite_numbers_inside_number_lists_are_refused(key):
    values = (
        "[.inf, 0.5]"
        if key != "tasks.emotion.threshold"
        else "[.nan, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]"
    )
    message = config_error(f"{key}={values}")
    assert f"'{key}'" in message and "finite" in message


def test_an_infinite_learning_rate_no_longer_passes_the_range_check():
    """The probe: optim.lr_backbone=.inf trained to NaN and the folds looked finished."""
    message = config_error("optim.lr_backbone=.inf")
    assert "'optim.lr_backbone' is inf" in message and "finite" in message


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.betas=[2, 0.9]", "optim.betas"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("tasks.toxicity.class_weights=[-1, 1]", "tasks.toxicity.class_weights"),
        ("tasks.emotion.threshold=-1", "tasks.emotion.threshold"),
        ("tasks.emotion.threshold=[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 2]", "tasks.emotion.threshold"),
    ],
)
def test_numbers_inside_list_keys_are_range_checked(override, key):
    assert f"'{key}'" in config_error(override)


# --- item 21: integer bounds, floats for integer keys ------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_seeds_outside_what_numpy_and_lightning_accept_are_refused(seed):
    message = config_error(f"seed={seed}")
    assert "'seed' must be in [0, 4294967295]" in message and str(seed) in message


def test_the_largest_seed_numpy_accepts_is_accepted():
    assert load_config(DEFAULT_CONFIG, [f"seed={2**32 - 1}"]).seed == 2**32 - 1


@pytest.mark.parametrize("key", INTEGER)
def test_huge_integers_are_refused_for_every_integer_key(key):
    assert f"'{key}'" in config_error(f"{key}={10**20}")


# seed and cv.threshold_bootstrap have their own, lower bounds (their tests check them)
OWN_BOUND = ("seed", "trainer.precision", "cv.threshold_bootstrap")


@pytest.mark.parametrize("key", [k for k in INTEGER if k not in OWN_BOUND])
def test_integer_keys_accept_values_up_to_the_bound_and_refuse_one_more(key):
    from mtl.config.schema import INT_MAX

    load_config(DEFAULT_CONFIG, [f"{key}={INT_MAX}"])
    assert f"'{key}'" in config_error(f"{key}={INT_MAX + 1}")


@pytest.mark.parametrize("value, hint", [("3.0", "whole number"), ("1e20", "reads 1e20 as text")])
@pytest.mark.parametrize("key", ["cv.n_splits", "seed", "data.batch_size", "trainer.max_epochs"])
def test_floats_for_integer_keys_are_refused_saying_a_whole_number_is_needed(key, value, hint):
    message = config_error(f"{key}={value}")
    assert f"'{key}'" in message and hint in message


@pytest.fixture
def tiny_args(tiny_backbone, data_dir, tmp_path):
    """Factory: CLI arguments for a one-task tiny run under tmp_path/out, plus `extra` (tiny and
    one batch, so that before the fixes these tests fail in seconds instead of training)."""
    from helpers import tiny_overrides

    def make(*extra: str) -> list[str]:
        return tiny_overrides(tiny_backbone, data_dir, tmp_path / "out") + [
            "tasks.emotion=null",
            "tasks.sentiment=null",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            *extra,
        ]

    return make


@pytest.mark.parametrize(
    "bad", ["cv.n_splits=1e20", "cv.n_splits=100000000000000000000", "seed=-1", "seed=4294967296"]
)
def test_cli_refuses_bad_integers_before_anything_is_created(tiny_args, tmp_path, capsys, bad):
    """The probe: seed=4294967296 failed with a traceback after the run folder was created."""
    from mtl.cli.train import main

    assert main(tiny_args(bad)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Config key") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --- item 20: names that become path components ------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "..", ".", "/tmp/x", "a/b", "a\\b", "", "  "])
def test_run_names_that_leave_the_output_dir_are_refused(name):
    message = config_error(f"run.name={name}")
    assert "'run.name'" in message
    assert "plain name" in message or name.strip() == ""  # "  " reads as null: a type error


def test_plain_run_names_with_dots_are_fine():
    assert load_config(DEFAULT_CONFIG, ["run.name=v1..2_final.run"]).run.name == "v1..2_final.run"


def test_the_cli_writes_nothing_outside_the_output_dir(tiny_args, tmp_path, capsys):
    from mtl.cli.train import main

    out = tmp_path / "a" / "b"
    assert main(tiny_args(f"run.output_dir={out}", "run.name=../../escaped")) == 2
    assert "'run.name'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("task", ["../evil", "a/b", ".."])
def test_task_names_that_would_leave_the_run_folder_are_refused(tmp_path, task):
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["tasks"] = {task: raw["tasks"]["toxicity"]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert f"'tasks.{task}'" in config_error(path=path)


# --- item 3: monitor.metric and monitor.mode -------------------------------------------------


@pytest.mark.parametrize(
    "metric, mode",
    [
        ("score", "max"),
        ("loss", "min"),
        ("toxicity/loss", "min"),
        ("toxicity/f1_macro", "max"),
        ("toxicity/auroc", "max"),
        ("emotion/f1_joy", "max"),
        ("emotion/exact_match", "max"),
    ],
)
def test_monitor_mode_follows_the_metric(metric, mode):
    assert load_config(DEFAULT_CONFIG, [f"monitor.metric={metric}"]).monitor.mode == mode


def test_an_explicit_mode_that_agrees_with_the_metric_is_kept():
    cfg = load_config(DEFAULT_CONFIG, ["monitor.metric=loss", "monitor.mode=min"])
    assert cfg.monitor.mode == "min"


@pytest.mark.parametrize(
    "metric, mode", [("loss", "max"), ("emotion/loss", "max"), ("score", "min")]
)
def test_a_mode_that_contradicts_the_metric_is_refused(metric, mode):
    message = config_error(f"monitor.metric={metric}", f"monitor.mode={mode}")
    assert (
        "'monitor.mode'" in message
        and f"monitor.mode={'min' if mode == 'max' else 'max'}" in message
    )


@pytest.mark.parametrize(
    "metric, hint",
    [
        ("toxicity/f1", "toxicity/f1_macro"),
        ("emotion/f1_happy", None),
        ("sentiment/auc", None),
        ("val/score", None),
    ],
)
def test_unknown_monitor_metrics_are_refused_at_config_time(metric, hint):
    message = config_error(f"monitor.metric={metric}")
    assert "'monitor.metric'" in message and repr(metric) in message
    if hint:
        assert f"Did you mean '{hint}'" in message


def test_a_dropped_tasks_metric_is_refused():
    message = config_error("tasks.sentiment=null", "monitor.metric=sentiment/accuracy")
    assert "'monitor.metric'" in message


def test_checkpoint_and_early_stopping_minimise_a_monitored_loss(tmp_path):
    """Where the mode is used: the fold's ModelCheckpoint and EarlyStopping (mtl/run/fit.py)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from mtl.run.fit import make_trainer

    cfg = load_config(
        DEFAULT_CONFIG,
        ["monitor.metric=loss", f"run.output_dir={tmp_path}", "trainer.accelerator=cpu",
         "trainer.devices=1", "trainer.enable_progress_bar=false"],
    )  # fmt: skip
    trainer = make_trainer(cfg, tmp_path / "fold_0", tmp_path, 0)
    chosen = [  # LastCheckpoint (last.ckpt every epoch, item 15) monitors nothing
        c
        for c in trainer.callbacks
        if isinstance(c, ModelCheckpoint | EarlyStopping) and c.monitor is not None
    ]
    assert len(chosen) == 2
    assert all(c.monitor == "val/loss" and c.mode == "min" for c in chosen)


def test_a_stored_config_with_the_resolved_mode_loads_again(tmp_path):
    """A run folder's config.yaml holds the resolved mode; reloading it (resume, predict) works."""
    from mtl.config import config_from_dict, to_dict

    cfg = load_config(DEFAULT_CONFIG, ["monitor.metric=toxicity/loss"])
    assert config_from_dict(to_dict(cfg)).monitor.mode == "min"


# --- keys Lightning would refuse only when a fold's Trainer is built -------------------------


def test_precision_choices_are_the_ones_lightning_accepts():
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT  # private: the test guards drift

    from mtl.config.schema import CHOICES

    def flat(hint):
        return [x for a in typing.get_args(hint) for x in (flat(a) if typing.get_args(a) else [a])]

    assert set(CHOICES["trainer.precision"]) == set(flat(_PRECISION_INPUT))


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.precision=-1", "trainer.precision"),
        ("trainer.precision=inf", "trainer.precision"),
        ("trainer.devices=0", "trainer.devices"),
        ("trainer.devices=-5", "trainer.devices"),
        ("trainer.devices=inf", "trainer.devices"),
        ("trainer.devices=[]", "trainer.devices"),
        ("cv.folds=inf", "cv.folds"),
        ("cv.folds=x,1", "cv.folds"),
        ("cv.folds=[-1]", "cv.folds"),
        ("cv.folds=[0.5]", "cv.folds"),
    ],
)
def test_trainer_and_fold_keys_lightning_would_reject_are_config_errors(override, key):
    assert f"'{key}'" in config_error(override)


@pytest.mark.parametrize(
    "override",
    ["trainer.devices=-1", "trainer.devices=[0]", "trainer.devices='0,1'", "cv.folds='0, 2'"],
)
def test_valid_device_and_fold_forms_still_load(override):
    load_config(DEFAULT_CONFIG, [override])


def test_a_checkpoint_trained_with_the_old_loss_max_pair_still_loads_to_predict():
    """Configs stored before the fix pair `loss` with `max`; predicting from them still works
    (the user's own config with that pair is refused above)."""
    from mtl.config import config_from_dict, to_dict

    stored = to_dict(load_config(DEFAULT_CONFIG, ["monitor.metric=loss"]))
    stored["monitor"]["mode"] = "max"
    assert config_from_dict(stored).monitor.mode == "max"


def test_a_checkpoint_of_a_run_with_a_nested_run_name_still_loads_to_predict():
    from mtl.config import config_from_dict, to_dict

    stored = to_dict(load_config(DEFAULT_CONFIG, []))
    stored["run"]["name"] = "exp/seed1"  # accepted before issue 22
    assert config_from_dict(stored).run.name == "exp/seed1"
    with pytest.raises(ConfigError, match="run.name"):
        load_config(DEFAULT_CONFIG, ["run.name=exp/seed1"])
