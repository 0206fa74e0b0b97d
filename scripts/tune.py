"""Search hyperparameters with Optuna; the objective never reads a val or test file (docs/tune.md).

python scripts/tune.py --trials 4                              # configs/tune.yaml, the bundled sample
python scripts/tune.py --config my.yaml --trials 40 trainer.max_epochs=2
python scripts/tune.py --config my.yaml --trials 40 --storage study.journal --no-report   # a worker
"""

import sys

from mtl.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
