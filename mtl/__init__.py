"""mtl: multi-task text classification with one shared encoder.

`from mtl import Predictor` loads the prediction API on first use, so `import mtl` stays light
(no torch import until a predictor is needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtl.predict import Predictor

__all__ = ["Predictor"]


def __getattr__(name: str):
    if name == "Predictor":
        from mtl.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'mtl' has no attribute '{name}'")
