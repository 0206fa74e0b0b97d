"""Combine whatever folds of a run are finished: OOF, thresholds, blended test predictions, report.

    python scripts/blend.py checkpoints/<run>

Use after running folds as separate jobs (`python scripts/train.py --folds 0,2`); says which
folds are missing.
"""

import sys

from mtl.cli.blend import main

if __name__ == "__main__":
    sys.exit(main())
