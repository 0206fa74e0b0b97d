"""Issue 26: the config key tasks.<t>.calibration: its default, its choices, a clear refusal, and
its place outside the run's fingerprint (a finished run takes a new value without retraining)."""

from __future__ import annotations

import pytest

from mtl.config import load_config
from mtl.errors import ConfigError

TASKS = ("toxicity", "emotion", "sentiment")


def test_the_calibration_key_is_not_part_of_the_runs_fingerprint():
    from mtl.run.runfolder import run_identity

    cfg = load_config("configs/default.yaml")
    settings = run_identity(cfg, files=False)["settings"]
    assert not [k for k in settings if k.endswith(".calibration")]
    assert "tasks.toxicity.threshold" in settings  # task keys that train are still in it


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("temp", "must be one of: none, temperature, vector; got 'temp'"),
        ("null", "must be one of: none, temperature, vector; got None. Did you mean 'none'?"),
        ("Vector", "got 'Vector'. Did you mean 'vector'?"),
        ("1", "must be null or str, got 1 (int)"),
    ],
)
def test_a_bad_calibration_value_is_refused_naming_the_key_and_the_choices(value, says):
    with pytest.raises(ConfigError, match="tasks.toxicity.calibration") as err:
        load_config("configs/default.yaml", [f"tasks.toxicity.calibration={value}"])
    assert says in str(err.value)


def test_calibration_defaults_to_vector_and_takes_each_method():
    cfg = load_config("configs/default.yaml")
    assert {cfg.tasks[t].calibration for t in TASKS} == {"vector"}
    for method in ("none", "temperature", "vector"):
        cfg = load_config("configs/default.yaml", [f"tasks.emotion.calibration={method}"])
        assert cfg.tasks.emotion.calibration == method
