"""`scripts/compare.py`: train configs × seeds and write one table, or pair runs already tabulated.
The comparison itself: mtl/harness/compare.py."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mtl.errors import ConfigError, MTLError
from mtl.harness.compare import compare, read_reports
from mtl.harness.compare_table import paired
from mtl.runtime import setup_logging


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """`key=value` words are overrides wherever they stand (after --seeds too)."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return [a for a in argv if a not in overrides], overrides


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    rest, overrides = split_argv(argv)
    parser = argparse.ArgumentParser(
        description="Train configs × seeds and write one table of validation scores.",
        epilog="key=value overrides (anywhere) apply to every run, e.g. data_dir=../shared/data",
    )
    parser.add_argument("--configs", nargs="+", type=Path, help="YAML configs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument(
        "--output-dir", type=Path, default=Path("checkpoints/compare"), help="run folders go here"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/table.md"))
    parser.add_argument(
        "--json",
        nargs="+",
        type=Path,
        default=[Path("docs/results/compare.json")],
        help="where the runs are written (one file); with --paired, one or more files to read",
    )
    parser.add_argument(
        "--paired",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        help="no training: print seed-paired differences A − B (config stems) from --json",
    )
    args = parser.parse_args(rest)
    if not args.configs and not args.paired:
        parser.error("give --configs (train and tabulate) or --paired A B (read --json)")
    if args.configs and not args.paired:
        if len(args.json) > 1:
            parser.error("--json takes one file when training (several only with --paired)")
        args.json = args.json[0]
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = parse_args(argv)
    setup_logging()
    command = "python scripts/compare.py " + " ".join(shlex.quote(a) for a in argv)
    if args.paired:
        try:
            print(paired(read_reports(args.json), args.paired), end="")
        except (OSError, ConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        report = compare(args, overrides, command)
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(Path(args.out).read_text(encoding="utf-8"))
    print(f"table: {args.out}; per run: {args.json}")
    return 0 if len(report["runs"]) == report["runs_planned"] else 1
