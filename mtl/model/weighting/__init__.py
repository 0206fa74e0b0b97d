"""Loss-weighting methods behind one interface. Add one: a file here and a line in `WEIGHTINGS`."""

from __future__ import annotations

from collections.abc import Callable

from box import Box

from mtl.model.weighting.base import LossWeighting
from mtl.model.weighting.dwa import DWAWeighting
from mtl.model.weighting.famo import FAMOWeighting
from mtl.model.weighting.random import RandomWeighting
from mtl.model.weighting.static import FixedWeighting
from mtl.model.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "LossWeighting",
    "FixedWeighting",
    "UncertaintyWeighting",
    "DWAWeighting",
    "RandomWeighting",
    "FAMOWeighting",
    "WEIGHTINGS",
    "build_weighting",
]

# `loss_weighting` name → (config, task names) → the method; the config accepts these names
WEIGHTINGS: dict[str, Callable[[Box, list[str]], LossWeighting]] = {
    "uncertainty": lambda cfg, names: UncertaintyWeighting(
        names, clamp=cfg.weighting.log_var_clamp
    ),
    "equal": lambda cfg, names: FixedWeighting(names),
    "fixed": lambda cfg, names: FixedWeighting(
        names, {name: spec.weight for name, spec in cfg.tasks.items()}
    ),
    "dwa": lambda cfg, names: DWAWeighting(names, temperature=cfg.weighting.dwa_temperature),
    "random": lambda cfg, names: RandomWeighting(names, seed=cfg.seed),
    "famo": lambda cfg, names: FAMOWeighting(
        names, lr=cfg.weighting.famo_lr, decay=cfg.weighting.famo_decay
    ),
}


def build_weighting(cfg: Box) -> LossWeighting:
    return WEIGHTINGS[cfg.loss_weighting](cfg, list(cfg.tasks))
