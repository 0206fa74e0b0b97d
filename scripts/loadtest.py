"""Bounded localhost load test of the HTTP API: concurrent clients × requests, throughput, p50/p99.

python scripts/loadtest.py checkpoints/default --backend onnx --clients 8 --requests 200   # starts and stops the server
python scripts/loadtest.py --url http://127.0.0.1:8000 --clients 8 --requests 200          # a server already running
"""

import sys

from mtl.cli.loadtest import main

if __name__ == "__main__":
    sys.exit(main())
