"""Train the multi-task model.

python scripts/train.py                                   # configs/default.yaml
python scripts/train.py --config my.yaml trainer.max_epochs=1 tasks.toxicity.train=/data/tox.csv
python scripts/train.py --folds 0,2                       # only these folds (cluster jobs)
"""

import sys

from mtl.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
