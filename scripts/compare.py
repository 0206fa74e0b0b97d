"""Multi-task vs single-task quality: train configs × seeds, write one table (logic: mtl/harness/compare.py).

python scripts/compare.py --configs configs/benchmark/mtl_uncertainty.yaml \
    configs/benchmark/single_sentiment.yaml --seeds 1 2 3 data_dir=../shared/data \
    --output-dir checkpoints/compare --out docs/results/table.md --json docs/results/compare.json

Re-running the same command skips finished runs and resumes an interrupted one.
"""

import sys

from mtl.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
