"""`scripts/blend.py RUN_DIR`: blend the finished folds of a run folder (mtl/run/cv.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtl.config import load_config
from mtl.errors import MTLError
from mtl.run.cv import collect, headline
from mtl.runtime import setup_logging


def main(argv: list[str] | None = None) -> int:
    """`scripts/blend.py RUN_DIR`: blend the finished folds of a run folder."""
    parser = argparse.ArgumentParser(description="Blend the finished folds of a run folder.")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if (
            not (args.run_dir / "config.yaml").is_file()
            or not (args.run_dir / "tasks.json").is_file()
        ):
            raise MTLError(
                f"{args.run_dir} is not a run folder (no config.yaml / tasks.json). Pass checkpoints/<run>."
            )
        cfg = load_config(args.run_dir / "config.yaml")
        # results.json, blended CSVs and report written together, or none (read-only, disk full)
        results = collect(cfg, args.run_dir)
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    missing = results["missing_folds"]
    print(
        f"blended folds {results['folds']}"
        + (f"; missing folds {missing}" if missing else "; all folds present")
    )
    print(f"{headline(results)}; results in {args.run_dir / 'results.json'}")
    return 0
