"""Export a trained run to ONNX (every finished fold, its blend, thresholds, tokenizer), optionally int8.

python scripts/export.py checkpoints/default --format onnx                    # writes checkpoints/default/export/
python scripts/export.py checkpoints/default --format onnx --quantize int8    # plus fold_<k>.int8.onnx
"""

import sys

from mtl.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
