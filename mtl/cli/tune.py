"""`scripts/tune.py`: an Optuna study over the config's `tune.space` (mtl/tune/, docs/tune.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mtl.config import load_config, to_dict
from mtl.errors import ConfigError, MTLError
from mtl.runtime import setup_logging

TUNE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tune.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Search the config's tune.space with Optuna; the objective is the rows that "
        "choose (selection rows or out-of-fold), never a val or test file.",
        epilog="Overrides: key.sub=value, applied to the study's config (e.g. trainer.max_epochs=1).",
    )
    parser.add_argument("--config", default=None, help=f"YAML config (default: {TUNE_CONFIG})")
    parser.add_argument(
        "--trials", type=int, required=True,
        help="finished (complete or pruned) trials the study should hold; a rerun adds the rest",
    )  # fmt: skip
    parser.add_argument("--study", default=None, help="study name (default: the config's run.name)")
    parser.add_argument(
        "--storage", default=None,
        help="Optuna RDB URL or journal file path (default: <run.output_dir>/<study>/study.db)",
    )  # fmt: skip
    parser.add_argument(
        "--no-report", action="store_true",
        help="run trials only (many workers); a last run without it writes best.yaml, report.md",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    return parser.parse_intermixed_args(argv)  # key=value before and after the options


def check_tunable(cfg) -> None:
    """What a study needs beyond a valid config: something to search, rows that choose, one
    process per trial."""
    if not cfg.tune.space:
        raise ConfigError(
            "The config's tune.space is empty: declare the keys to search, e.g.\n"
            "  tune:\n    space:\n      optim.lr_backbone: {type: float, low: 2.0e-5, high: 3.0e-4, log: true}\n"
            "(see configs/tune.yaml and docs/tune.md)."
        )
    if cfg.cv.n_splits <= 1 and cfg.cv.selection != "best":
        raise ConfigError(
            "tune.py scores each trial on the rows that choose, and with cv.n_splits=1 and "
            "cv.selection=last there are none (only the val files, which a study must not read). "
            "Use cv.selection=best (a held-out data.val_fraction chooses) or k-fold (cv.n_splits>1, "
            "scored out of fold)."
        )
    if cfg.cv.folds is not None:
        raise ConfigError(
            f"cv.folds={cfg.cv.folds!r}: a trial trains every fold (its objective is out-of-fold). "
            "Drop cv.folds; run many workers instead (docs/tune.md)."
        )
    t = cfg.trainer
    many = (isinstance(t.devices, int) and t.devices > 1) or (
        isinstance(t.devices, list) and len(t.devices) > 1
    )
    if many or t.num_nodes > 1 or t.strategy not in ("auto", "single_device"):
        raise ConfigError(
            f"trainer.devices={t.devices!r}, num_nodes={t.num_nodes}, strategy={t.strategy!r}: a "
            "trial runs in one process on one device (DDP would re-run the whole study in every "
            "process). Run one tune.py worker per device on a shared storage instead (docs/tune.md)."
        )


def check_data(cfg) -> None:
    """Read, check and tokenize the data once, before the study is opened: a missing file or a
    bad column stops here, not in trial 0 (the token cache then serves every trial)."""
    from mtl.data.datamodule import MultiTaskDataModule

    MultiTaskDataModule(cfg).setup("fit")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    command = "python scripts/tune.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        try:
            import optuna
        except ImportError:
            raise MTLError(
                "scripts/tune.py needs Optuna: pip install -e '.[tune]' (or bash scripts/install.sh tune)."
            ) from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        from mtl.tune.outputs import write_outputs
        from mtl.tune.space import search_space
        from mtl.tune.storage import check_study_folder, check_study_name
        from mtl.tune.study import open_study, optimise

        if args.trials < 1:
            raise ConfigError(
                f"--trials {args.trials}: give the number of finished trials the study should "
                "hold, at least 1 (a rerun with the same number only rewrites the outputs)."
            )
        base = load_config(args.config or TUNE_CONFIG, args.overrides)
        check_tunable(base)
        space = search_space(to_dict(base))
        name = check_study_name(base.run.name if args.study is None else args.study)
        study_dir = Path(base.run.output_dir) / name
        check_study_folder(study_dir)
        check_data(base)
        ctx = open_study(base, space, name, study_dir, args.storage)
        states = optimise(ctx, args.trials)
        report = write_outputs(ctx, report=not args.no_report, command=command)
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(ctx, states, report))
    return 0


def summary(ctx, states, report) -> str:
    from mtl.tune.outputs import best_trial

    shown = ", ".join(
        f"{n} {s.name.lower()}" for s, n in sorted(states.items(), key=lambda x: x[0].value) if n
    )
    best = best_trial(ctx.study)
    line = f"study {ctx.study.study_name}: {shown or 'no trials'}"
    if best is not None:
        line += (
            f"; best trial {best.number}: {ctx.base.tune.metric} {best.value:.4f} on the rows "
            f"that choose; {ctx.study_dir / 'best.yaml'}"
        )
    if report is not None:
        line += f"; val files of the best trial and the default config: {report}"
    return line
