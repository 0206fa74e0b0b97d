"""Training and inference throughput: ours vs the seed notebook's pipeline, in one run.

    python scripts/benchmark.py --smoke --out /tmp/bench.json
    python scripts/benchmark.py data_dir=../shared/data --rows-per-task 1000 --out docs/bench_cpu.json

See mtl/harness/bench/__init__.py for what each path measures.
"""

import sys

from mtl.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
