"""Numbers in the config: finite, whole where a count is meant, inside the bounds libraries take.

Used by mtl/config/validate.py on every value (`refuse_non_finite`, `whole_number_hint`) and on
the merged config (`check_number_lists`). The ranges of single numbers are data: `RANGES`,
`INT_MAX` and `SEED_MAX` in mtl/config/schema.py."""

from __future__ import annotations

import math
from typing import Any

from mtl.errors import ConfigError


def refuse_non_finite(path: str, value: Any) -> None:
    """inf / nan anywhere in a value (a number, or a list of them) is a ConfigError naming the
    key: `optim.lr_backbone=.inf` passed the range check (at least 0) and trained to NaN, whose
    folds then scored 0.0 and broke the blend (issue 22, item 12)."""
    numbers = value if isinstance(value, list) else [value]
    for number in numbers:
        if isinstance(number, float) and not math.isfinite(number):
            where = f"holds {number!r}" if isinstance(value, list) else f"is {number!r}"
            raise ConfigError(
                f"Config key '{path}' {where}; numbers in the config must be finite (no inf or "
                f"nan). Give an ordinary number."
            )


def whole_number_hint(value: Any, allowed: tuple) -> str:
    """For an integer key given a float (`cv.n_splits=3.0`) or what YAML reads as text (`1e20`):
    say that a whole number is needed, and why YAML did not read one."""
    if int not in allowed or float in allowed or isinstance(value, bool):
        return ""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return (
            f" YAML reads {value} as text, not a number; write the whole number in digits (e.g. 5)."
        )
    if isinstance(value, float):
        return " A whole number is needed (e.g. 5, not 5.0)."
    return ""


def check_number_lists(cfg: dict) -> None:
    """The numbers inside list keys, which RANGES (one number per key) cannot describe."""
    betas = cfg["optim"]["betas"]
    if len(betas) != 2 or not all(_number(b) and 0.0 <= b < 1.0 for b in betas):
        raise ConfigError(
            f"Config key 'optim.betas' must be two numbers in [0, 1) (AdamW's beta1, beta2), "
            f"got {betas!r}."
        )
    for name, spec in cfg["tasks"].items():
        weights = spec["class_weights"]
        if isinstance(weights, list) and not all(_number(w) and w >= 0 for w in weights):
            raise ConfigError(
                f"Config key 'tasks.{name}.class_weights' must hold numbers of at least 0 (one per "
                f"class), got {weights!r}."
            )
        cuts = spec["threshold"]
        cuts = cuts if isinstance(cuts, list) else [cuts] if _number(cuts) else []
        if not all(_number(c) and 0.0 <= c <= 1.0 for c in cuts):
            raise ConfigError(
                f"Config key 'tasks.{name}.threshold' must be 'tuned', a probability in [0, 1], or "
                f"a list of them (one per label), got {spec['threshold']!r}."
            )


def check_fold_and_device_lists(cfg: dict) -> None:
    """`cv.folds` and `trainer.devices` take a number, a list or text; parsed here, so `--folds x`
    or `trainer.devices=0` is a config error rather than a traceback when the folds start."""
    folds = cfg["cv"]["folds"]
    if folds is not None:
        items = folds if isinstance(folds, list) else [folds]
        if isinstance(folds, str):
            items = [x for x in folds.replace(" ", "").split(",") if x != ""]
            items = [int(x) if x.lstrip("-").isdigit() else x for x in items]
        if not items or not all(_whole(k) and k >= 0 for k in items):
            raise ConfigError(
                f"Config key 'cv.folds' (or --folds) must name folds by number, e.g. 0 or 0,2 or "
                f"[0, 2]; got {folds!r}."
            )
    devices = cfg["trainer"]["devices"]
    text = devices.replace(" ", "") if isinstance(devices, str) else None
    ok = (
        (_whole(devices) and (devices == -1 or devices >= 1))
        or (isinstance(devices, list) and devices and all(_whole(d) and d >= 0 for d in devices))
        or text == "auto"
        or (text is not None and text not in ("", "0") and all(
            x.lstrip("-").isdigit() for x in text.rstrip(",").split(",")
        ))
    )  # fmt: skip
    if not ok:
        raise ConfigError(
            f"Config key 'trainer.devices' must be 'auto', a number of devices (1 or more; -1 = "
            f"all), or a list of device indices such as [0, 1]; got {devices!r}."
        )


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
