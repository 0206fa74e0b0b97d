"""Loss-weighting methods behind one interface. Add one: a file here and a line in `build_weighting`."""

from __future__ import annotations

from box import Box

from mtl.weighting.base import LossWeighting
from mtl.weighting.dwa import DWAWeighting
from mtl.weighting.random import RandomWeighting
from mtl.weighting.static import FixedWeighting
from mtl.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "LossWeighting",
    "FixedWeighting",
    "UncertaintyWeighting",
    "DWAWeighting",
    "RandomWeighting",
    "build_weighting",
]


def build_weighting(cfg: Box) -> LossWeighting:
    names = list(cfg.tasks)
    method = cfg.loss_weighting
    if method == "uncertainty":
        return UncertaintyWeighting(names, clamp=cfg.weighting.log_var_clamp)
    if method == "dwa":
        return DWAWeighting(names, temperature=cfg.weighting.dwa_temperature)
    if method == "random":
        return RandomWeighting(names, seed=cfg.seed)
    if method == "fixed":
        return FixedWeighting(names, {name: spec.weight for name, spec in cfg.tasks.items()})
    return FixedWeighting(names)  # equal
