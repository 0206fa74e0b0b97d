"""Combine whatever folds of a run are finished: OOF, thresholds, blended test predictions, report.

    python scripts/blend.py checkpoints/<run>
    python scripts/blend.py checkpoints/<run> tasks.toxicity.calibration=temperature  # recalibrate

Use after running folds as separate jobs (`python scripts/train.py --folds 0,2`); says which
folds are missing. Overrides of the blend's own keys (tasks.<t>.calibration, cv.blend) refit
a finished run without retraining and are saved to its config.yaml (docs/calibration.md).
"""

import sys

from mtl.cli.blend import main

if __name__ == "__main__":
    sys.exit(main())
