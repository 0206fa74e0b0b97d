"""What a study leaves in its folder: best.yaml, trials.csv, history.png, importances.png,
TensorBoard hparams per trial, and report.md — the only place val files are read, for the best
trial and the default config side by side."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import optuna
from box import Box
from optuna.trial import TrialState

from mtl.config import config_from_dict, save_config, to_dict
from mtl.errors import MTLError, first_line
from mtl.io import atomic_write, write_csv, write_text
from mtl.tune.objective import objective_value, rows_note, trial_config
from mtl.tune.space import get_key, set_key
from mtl.tune.study import FINISHED, TPE_STARTUP_TRIALS, StudyContext

log = logging.getLogger(__name__)

DEFAULT_RUN = "default"  # the study's config as given: the report's baseline run folder


def best_config(ctx: StudyContext) -> Box | None:
    """The study's config with the best trial's values: a complete config for train.py."""
    best = best_trial(ctx.study)
    if best is None:
        return None
    raw = to_dict(ctx.base)
    for key, value in best.params.items():
        set_key(raw, key, value)
    raw["run"]["name"] = f"{ctx.study.study_name}-best"
    return config_from_dict(raw)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def write_trials(ctx: StudyContext) -> None:
    frame = ctx.study.trials_dataframe()
    if not frame.empty:
        write_csv(ctx.study_dir / "trials.csv", frame)


def write_plots(ctx: StudyContext) -> dict[str, float]:
    """history.png and importances.png; returns the importances (empty if too few trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.visualization import matplotlib as oplt

    importances: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is "experimental"
        target = f"{ctx.base.tune.metric} on the rows that choose"
        plots = {
            "history.png": lambda: oplt.plot_optimization_history(ctx.study, target_name=target)
        }
        try:
            evaluator = FanovaImportanceEvaluator(seed=ctx.base.seed)
            importances = get_param_importances(ctx.study, evaluator=evaluator)
            plots["importances.png"] = lambda: oplt.plot_param_importances(
                ctx.study,
                evaluator=FanovaImportanceEvaluator(seed=ctx.base.seed),
                target_name=target,
            )
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            log.info("no parameter importances yet: %s", err)
        for name, plot in plots.items():
            try:
                ax = plot()
            except (ValueError, RuntimeError) as err:
                log.info("%s not drawn: %s", name, err)
                continue
            fig = ax.figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            atomic_write(
                ctx.study_dir / name, lambda tmp, f=fig: f.savefig(tmp, format="png", dpi=110)
            )
            plt.close(fig)
    return dict(importances)


def write_hparams(ctx: StudyContext) -> None:
    """TensorBoard's HPARAMS view: one run per finished trial under <study>/tensorboard/."""
    from torch.utils.tensorboard import SummaryWriter

    for trial in ctx.study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
    ):
        folder = ctx.study_dir / "tensorboard" / f"trial_{trial.number}"
        if folder.is_dir():
            continue  # written once
        hparams = {k: ("null" if v is None else v) for k, v in trial.params.items()}
        hparams["state"] = trial.state.name.lower()
        value = trial.value if trial.value is not None else math.nan
        with SummaryWriter(log_dir=str(folder)) as writer:
            writer.add_hparams(hparams, {"objective": value}, run_name=".")


def default_run(ctx: StudyContext) -> tuple[Path, float]:
    """The study's config as given: its trial (trial 0 when the space holds its values) or, when
    it has none that completed, a run trained now in <study>/default/. → (run folder, objective)."""
    from mtl.run.train import train

    for trial in ctx.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get("default_config"):
            return ctx.study_dir / trial.user_attrs["run_dir"], trial.value
    cfg = trial_config(ctx.base, {}, ctx.study_dir, DEFAULT_RUN)
    results = train(cfg)
    return ctx.study_dir / DEFAULT_RUN, objective_value(
        cfg, ctx.study_dir / DEFAULT_RUN, results, cfg.tune.metric
    )


def write_outputs(ctx: StudyContext, report: bool, command: str) -> Path | None:
    """Every output; with `report`, also report.md (training the default config if no trial is it)."""
    write_trials(ctx)
    importances = write_plots(ctx)
    write_hparams(ctx)
    best_cfg = best_config(ctx)
    if best_cfg is not None:
        save_config(best_cfg, ctx.study_dir / "best.yaml")
    if not report or best_cfg is None:
        return None
    default_dir, default_value = default_run(ctx)
    best = best_trial(ctx.study)
    best_dir = ctx.study_dir / best.user_attrs["run_dir"]
    text = report_markdown(
        ctx, command, best, _results(best_dir), _results(default_dir), default_dir, default_value,
        importances,
    )  # fmt: skip
    return write_text(ctx.study_dir / "report.md", text)


def _results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.is_file():
        raise MTLError(
            f"{path} is missing, so report.md cannot show that run's val-file scores. Was the "
            "trial run on a machine that does not share this study folder? Rerun there, or copy "
            "the trial folder here, then run the same command again."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MTLError(
            f"Cannot read {path} ({first_line(err)}). Delete that run folder's results.json and "
            "run the same command again: the run's finished folds are blended again."
        ) from None


def report_markdown(
    ctx, command, best, best_results, default_results, default_dir, default_value, importances
) -> str:
    study, base = ctx.study, ctx.base
    states = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"`{command}`",
        "",
        f"Storage: `{ctx.storage}`. Trials: {states[TrialState.COMPLETE]} complete, "
        f"{states[TrialState.PRUNED]} pruned, {states[TrialState.FAIL]} failed"
        + (f", {states[TrialState.RUNNING]} still running" if states[TrialState.RUNNING] else "")
        + f"; sampler TPE seeded from seed {base.seed}, pruner {base.tune.pruner}."
        + startup_note(sum(states[s] for s in FINISHED)),
        "",
        f"Objective: `{base.tune.metric}` ({base.tune.direction}) on {rows_note(base)}. Every "
        "choice of the study was made on these rows; no trial's val-file or test-file score was "
        "read until this report.",
        "",
        "## Best trial",
        "",
        f"Trial {best.number} (`{best.user_attrs['run_dir']}/`): objective {best.value:.4f}; "
        f"the default config (`{default_dir.name}/`) on the same rows: {_fmt(default_value)}"
        + (" — the search found nothing better." if best.user_attrs.get("default_config") else "."),
        "",
        "| key | default config | best trial |",
        "|---|---|---|",
    ]
    default_raw = to_dict(base)
    lines += [
        f"| `{k}` | {_value(get_key(default_raw, k))} | {_value(v)} |"
        for k, v in best.params.items()
    ]
    if importances:
        lines += ["", "## What mattered", "", "fANOVA importance of each key over the complete trials "
                  "(sums to 1; `importances.png`):", "", "| key | importance |", "|---|---|"]  # fmt: skip
        lines += [f"| `{k}` | {v:.3f} |" for k, v in importances.items()]
    lines += ["", "## Val files (read here only)", "", "| task | metric | default config | best trial |", "|---|---|---|---|"]  # fmt: skip
    for task, entry in best_results["tasks"].items():
        best_scores = entry.get("valfile_blended") or {}
        default_scores = default_results["tasks"].get(task, {}).get("valfile_blended") or {}
        for metric in (m for m in best_scores if not _per_label(m, best_scores)):
            lines.append(
                f"| {task} | {metric} | {_fmt(default_scores.get(metric))} | {_fmt(best_scores[metric])} |"
            )
    lines.append(
        f"| **mean primary (headline)** | | {_fmt(default_results.get('score'))} | "
        f"{_fmt(best_results.get('score'))} |"
    )
    lines += [
        "",
        "One run each: a difference smaller than one seed's spread is not a finding. Compare both "
        f"configs over seeds with `python scripts/compare.py --configs {ctx.study_dir / 'best.yaml'} "
        "<your config> --seeds 1 2 3`.",
        "",
        "Plots: `history.png`, `importances.png`; every trial: `trials.csv`; TensorBoard's HPARAMS "
        f"tab: `tensorboard --logdir {ctx.study_dir / 'tensorboard'}`.",
        "",
    ]
    return "\n".join(lines)


def startup_note(finished: int) -> str:
    """What a study too small for TPE can and cannot say (empty when TPE had started)."""
    if finished >= TPE_STARTUP_TRIALS:
        return ""
    return (
        f" **Only {finished} finished trial(s), fewer than TPE's {TPE_STARTUP_TRIALS} start-up "
        "trials: every trial's values (but the default config's) were seeded random draws, a "
        "random search rather than TPE's, and "
        "the importances below rest on too few trials to be more than noise.** Add trials with "
        f"`--trials {TPE_STARTUP_TRIALS + 10}` or more (the study continues where it is)."
    )


def _per_label(metric: str, scores: dict) -> bool:
    return metric.startswith("f1_") and metric not in ("f1_macro", "f1_micro")


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else f"`{value}`"


def _fmt(value) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
    )
