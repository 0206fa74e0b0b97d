"""`cv.threshold_bootstrap` (issue 26): how many bootstrap resamples check each tuned threshold;
a whole number from 0 (off) to 10000, refused with the key named otherwise."""

from __future__ import annotations

import pytest

from mtl.config import DEFAULT_CONFIG, load_config
from mtl.errors import ConfigError
from mtl.run.runfolder import run_identity


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT_CONFIG, list(overrides))
    return str(info.value)


def test_the_bootstrap_is_on_by_default_and_0_turns_it_off():
    assert load_config(DEFAULT_CONFIG, []).cv.threshold_bootstrap == 200
    assert load_config(DEFAULT_CONFIG, ["cv.threshold_bootstrap=0"]).cv.threshold_bootstrap == 0
    top = load_config(DEFAULT_CONFIG, ["cv.threshold_bootstrap=10000"])
    assert top.cv.threshold_bootstrap == 10000


@pytest.mark.parametrize("value", ["-1", "10001", "4294967296"])
def test_counts_outside_0_to_10000_are_refused_naming_the_key_and_the_range(value):
    message = config_error(f"cv.threshold_bootstrap={value}")
    assert message == (
        f"Config key 'cv.threshold_bootstrap' must be in [0, 10000] (bootstrap resamples of a "
        f"tuned threshold's rows; 0 = off), got {value}."
    )


@pytest.mark.parametrize(
    "value, says",
    [
        ("200.0", "A whole number is needed"),
        ("2.5", "A whole number is needed"),
        ("1e3", "YAML reads 1e3 as text"),
        ("many", "must be int, got 'many' (str)"),
        ("true", "must be int, got True (bool)"),
        ("null", "must be int, got None"),
        (".nan", "must be finite"),
    ],
)
def test_anything_but_a_whole_number_is_refused_naming_the_key(value, says):
    message = config_error(f"cv.threshold_bootstrap={value}")
    assert message.startswith("Config key 'cv.threshold_bootstrap'") and says in message


def test_a_misspelt_key_gets_the_close_spelling():
    assert "Did you mean 'threshold_bootstrap'?" in config_error("cv.threshold_boostrap=100")


def test_changing_it_does_not_change_the_runs_identity():
    """It only decides thresholds when the folds are blended: a finished run can be blended
    again with another count (scripts/blend.py) without being refused as another run."""
    before = run_identity(load_config(DEFAULT_CONFIG, []), files=False)
    after = run_identity(load_config(DEFAULT_CONFIG, ["cv.threshold_bootstrap=0"]), files=False)
    assert before == after
