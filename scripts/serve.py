"""Serve a trained run over HTTP with LitServe (PyTorch, or its ONNX export).

python scripts/serve.py checkpoints/default --port 8000                     # PyTorch, every fold blended
python scripts/serve.py checkpoints/default --backend onnx --port 8000      # after scripts/export.py
curl -s localhost:8000/predict -d '{"texts": ["I love this", "you idiot"]}'
curl -s localhost:8000/health
"""

import sys

from mtl.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
