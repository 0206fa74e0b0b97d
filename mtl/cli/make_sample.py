"""`scripts/make_sample.py`: regenerate data/sample/ from the full datasets (mtl/harness/sample.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtl.harness.sample import make_sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate data/sample/ from the full datasets.")
    parser.add_argument("--source", default="../shared/data")
    parser.add_argument("--out", default="data/sample")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    args = parser.parse_args(argv)
    make_sample(Path(args.source), Path(args.out), args.train, args.val)
    return 0
