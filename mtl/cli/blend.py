"""`scripts/blend.py RUN_DIR [overrides]`: blend the finished folds of a run folder
(mtl/run/cv.py), optionally with new values of the keys that change only the blend."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtl.config import load_config
from mtl.errors import MTLError
from mtl.run.cv import collect, headline
from mtl.runtime import setup_logging

# keys the blend of finished folds reads and training does not (mtl/run/runfolder.py leaves them
# out of the fingerprint): a finished run takes new values without retraining
BLEND_KEYS = ("cv.blend", "tasks.<task>.calibration")


def main(argv: list[str] | None = None) -> int:
    """`scripts/blend.py RUN_DIR [key=value ...]`: blend the finished folds of a run folder."""
    parser = argparse.ArgumentParser(
        description="Blend the finished folds of a run folder.",
        epilog="Overrides (saved to the run's config.yaml with the results): "
        + ", ".join(f"{k}=..." for k in BLEND_KEYS)
        + ", e.g. tasks.toxicity.calibration=temperature (docs/calibration.md).",
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="key.sub=value of " + ", ".join(BLEND_KEYS))
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
        if args.overrides:
            check_overrides(args.overrides, list(cfg.tasks), args.run_dir)
            cfg = load_config(args.run_dir / "config.yaml", args.overrides)
        # results.json, blended CSVs and report written together, or none (read-only, disk full)
        results = collect(cfg, args.run_dir, with_config=bool(args.overrides))
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


def check_overrides(overrides: list[str], tasks: list[str], run_dir: Path) -> None:
    """Only blend keys, and only of the run's tasks: anything else would change what the folds
    trained (scripts/train.py with another run.name) or add a task the folds never saw."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        parts = key.split(".")
        is_task_key = len(parts) == 3 and parts[0] == "tasks" and parts[2] == "calibration"
        if "=" not in item or not (key == "cv.blend" or is_task_key):
            raise MTLError(
                f"scripts/blend.py takes only overrides of the keys that change the blend of "
                f"finished folds ({', '.join(BLEND_KEYS)}), as key=value; got '{item}'. Other "
                f"settings change what the folds trained: train a new run (scripts/train.py "
                f"with another run.name)."
            )
        if is_task_key and parts[1] not in tasks:
            raise MTLError(
                f"Override '{item}': the run {run_dir} has no task '{parts[1]}' (its tasks: "
                f"{', '.join(tasks)})."
            )
