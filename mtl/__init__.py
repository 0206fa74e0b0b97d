"""mtl: multi-task text classification with one shared encoder.

    from mtl import MultiTaskDataModule, load_config
    cfg = load_config("configs/default.yaml", ["cv.n_splits=3"])
    dm = MultiTaskDataModule(cfg); dm.setup("fit"); dm.set_fold(2)

Names load on first use, so `import mtl` stays light (no torch import until one is needed).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtl.config import load_config
    from mtl.data.datamodule import MultiTaskDataModule
    from mtl.inference.predictor import Predictor
    from mtl.model.module import MultiTaskModule

_HOMES = {
    "Predictor": "mtl.inference.predictor",
    "MultiTaskDataModule": "mtl.data.datamodule",
    "MultiTaskModule": "mtl.model.module",
    "load_config": "mtl.config",
}
__all__ = ["MultiTaskDataModule", "MultiTaskModule", "Predictor", "load_config"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mtl' has no attribute '{name}'")
