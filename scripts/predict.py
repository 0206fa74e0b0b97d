"""Predict with a trained run: every finished fold blended, or one checkpoint.

python scripts/predict.py checkpoints/default --text "I love this" --text "you idiot"
python scripts/predict.py checkpoints/default --text "I love this" --format json
python scripts/predict.py checkpoints/default --input texts.csv --text-column text --output preds.csv
python scripts/predict.py --checkpoint checkpoints/default/fold_0/best.ckpt --text "hi" --device cpu
"""

import sys

from mtl.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
