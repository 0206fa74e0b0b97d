"""`scripts/train.py` and the `mtl-train` console script: train the multi-task model (mtl/run/train.py)."""

from __future__ import annotations

import argparse
import sys

from mtl.config import DEFAULT_CONFIG, load_config
from mtl.errors import MTLError
from mtl.run.cv import headline
from mtl.run.train import folds_to_run, run_dir_of, train
from mtl.runtime import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the multi-task model.",
        epilog="Overrides: key.sub=value, e.g. trainer.max_epochs=1 tasks.toxicity.train=/path/tox.csv",
    )
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--folds", default=None, help="run only these folds, e.g. 0,2 (for cluster jobs)"
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        overrides = list(args.overrides) + ([f"cv.folds={args.folds}"] if args.folds else [])
        cfg = load_config(args.config or DEFAULT_CONFIG, overrides)
        folds_to_run(cfg)
        results = train(cfg)
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if results:  # empty on the other ranks of a multi-process run
        print(f"done: {headline(results)}; run folder {run_dir_of(cfg)}")
    return 0
