"""Regenerate data/sample/ (the bundled default-run data) from the full datasets in ../shared/data.

python scripts/make_sample.py --source ../shared/data --out data/sample
"""

import sys

from mtl.cli.make_sample import main

if __name__ == "__main__":
    sys.exit(main())
