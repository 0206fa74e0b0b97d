"""scripts/tune.py end to end on the tiny BERT: a killed study resumes, the objective is blind to
the val file, k-fold trials are scored out of fold, pruning, the outputs, storage options."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers import REPO, tiny_model_overrides

from mtl.config import load_config

optuna = pytest.importorskip("optuna")

TUNE_YAML = REPO / "configs" / "tune.yaml"
# configs/tune.yaml's own values (pooling mean; lr_heads 1e-2 from the tiny overrides) lie inside:
# trial 0 is the config as given
SPACE = (
    "tune.space={optim.lr_heads: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}, "
    "backbone.pooling: {type: categorical, choices: [mean, cls]}}"
)


def tiny_args(backbone: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(TUNE_YAML), *tiny_model_overrides(backbone, data),
        "trainer.max_epochs=1", f"run.output_dir={out}", SPACE, *extra,
    ]  # fmt: skip


def tune(*argv: str) -> int:
    from mtl.cli.tune import main

    return main(list(argv))


def load(out: Path, name: str = "tune_sample", storage: str | None = None) -> optuna.Study:
    url = storage or f"sqlite:///{out / name / 'study.db'}"
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        url = optuna.storages.JournalStorage(JournalFileBackend(url))
    return optuna.load_study(study_name=name, storage=url)


def test_a_stopped_study_resumes_with_its_finished_trials_and_writes_its_outputs(
    tiny_backbone, data_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    args = tiny_args(tiny_backbone, data_dir, out)
    assert tune("--trials", "2", *args) == 0
    first = {t.number: t.datetime_complete for t in load(out).trials}
    assert len(first) == 2

    assert tune("--trials", "3", *args) == 0  # asks for 3: only one new trial
    trials = load(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert {t.number: t.datetime_complete for t in trials[:2]} == first  # kept, not rerun
    assert trials[0].user_attrs["default_config"]  # trial 0: the config as given
    assert trials[0].params == {"optim.lr_heads": 0.01, "backbone.pooling": "mean"}

    study_dir = out / "tune_sample"
    for n in range(3):
        assert (study_dir / f"trial_{n}" / "results.json").is_file()  # ordinary run folders
        assert any((study_dir / "tensorboard" / f"trial_{n}").glob("events.out.tfevents.*"))
    assert len(pd.read_csv(study_dir / "trials.csv")) == 3
    assert (study_dir / "history.png").stat().st_size > 0
    best = load(out).best_trial
    cfg = load_config(study_dir / "best.yaml")  # a complete config train.py accepts
    assert cfg.optim.lr_heads == pytest.approx(best.params["optim.lr_heads"])
    assert cfg.backbone.pooling == best.params["backbone.pooling"]
    assert cfg.run.name == "tune_sample-best" and cfg.tune.space  # can seed a narrower study
    report = (study_dir / "report.md").read_text()
    assert "## Val files (read here only)" in report and "| toxicity | f1_macro |" in report
    assert "Only 3 finished trial(s), fewer than TPE's 10 start-up trials" in report
    assert "best trial" in capsys.readouterr().out

    # a study stopped between trials draws what an uninterrupted one does
    straight = tmp_path / "straight"
    assert tune("--trials", "3", "--no-report", *tiny_args(tiny_backbone, data_dir, straight)) == 0
    assert [t.params for t in load(straight).trials] == [t.params for t in trials]

    # the same study with another search is refused, and left as it was
    narrower = SPACE.replace("high: 1.0e-1", "high: 5.0e-2")
    assert tune("--trials", "4", *args, narrower) == 2
    assert "holds trials of another config or search" in capsys.readouterr().err
    assert len(load(out).trials) == 3


def changed_val_files(data_dir: Path, to: Path) -> Path:
    """The fixture data with every val file's labels flipped and half its rows dropped."""
    shutil.copytree(data_dir, to)
    for task in ("toxicity", "emotion", "sentiment"):
        path = to / f"{task}_val.csv"
        frame = pd.read_csv(path).iloc[::2]
        labels = [c for c in frame.columns if c != "text"]
        frame[labels] = 1 - frame[labels]
        frame.to_csv(path, index=False)
    return to


def test_the_objective_is_blind_to_the_val_file(tiny_backbone, data_dir, tmp_path):
    other_data = changed_val_files(data_dir, tmp_path / "data")
    values, val_scores = [], []
    for data, out in ((data_dir, tmp_path / "a"), (other_data, tmp_path / "b")):
        assert tune("--trials", "2", *tiny_args(tiny_backbone, data, out)) == 0
        trials = load(out).trials
        values.append([(t.params, t.value) for t in trials])
        val_scores.append(
            json.loads((out / "tune_sample/trial_1/results.json").read_text())["score"]
        )
    assert values[0] == values[1]  # same trials, same objective values, to the last bit
    assert val_scores[0] != val_scores[1]  # while the val files' own scores did change


def test_a_k_fold_trial_is_scored_on_its_out_of_fold_predictions(tiny_backbone, data_dir, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(tiny_backbone, data_dir, out, "cv.n_splits=2", "tune.metric=emotion/f1_micro")
    assert tune("--trials", "1", "--no-report", *args) == 0
    results = json.loads((out / "tune_sample/trial_0/results.json").read_text())
    assert load(out).trials[0].value == results["tasks"]["emotion"]["oof"]["f1_micro"]
    assert not (out / "tune_sample/report.md").exists()  # --no-report: a worker's run


def test_a_pruned_trial_counts_as_finished_and_keeps_no_checkpoints(
    tiny_backbone, data_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    out = tmp_path / "out"
    assert tune("--trials", "1", "--no-report", *tiny_args(tiny_backbone, data_dir, out)) == 0
    (trial,) = load(out).trials
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [0]
    assert not list((out / "tune_sample/trial_0").rglob("*.ckpt"))


class FakeTrial:
    def __init__(self):
        self.reports = []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return False


def test_pruning_reports_each_fold_s_epochs_at_their_own_steps_and_only_while_fitting():
    import torch
    from lightning.pytorch.trainer.states import TrainerFn

    from mtl.tune.objective import SelectionPruning

    trial = FakeTrial()
    callback = SelectionPruning(trial, "val/score", epochs_per_fold=3)

    def trainer(fn, fold, epoch):
        return SimpleNamespace(
            sanity_checking=False,
            state=SimpleNamespace(fn=fn),
            callback_metrics={"val/score": torch.tensor(0.5)},
            datamodule=SimpleNamespace(fold=fold),
            current_epoch=epoch,
        )

    callback.on_validation_end(trainer(TrainerFn.FITTING, 0, 2), None)
    callback.on_validation_end(trainer(TrainerFn.FITTING, 1, 0), None)
    callback.on_validation_end(trainer(TrainerFn.VALIDATING, 1, 3), None)  # fit.py's final validate
    assert trial.reports == [(2, 0.5), (3, 0.5)]


def test_a_journal_file_storage_resumes_like_the_default(tiny_backbone, data_dir, tmp_path, capsys):
    out, journal = tmp_path / "out", str(tmp_path / "study.journal")
    args = tiny_args(tiny_backbone, data_dir, out, "--no-report", "--storage", journal)
    assert tune("--trials", "1", *args) == 0
    assert tune("--trials", "2", *args) == 0
    assert [t.number for t in load(out, storage=journal).trials] == [0, 1]
    assert not (out / "tune_sample" / "study.db").exists()
    # the folder's trials belong to the journal: the default storage would start trial 0 again
    assert tune("--trials", "2", *tiny_args(tiny_backbone, data_dir, out)) == 2
    assert "belongs to the storage" in capsys.readouterr().err


def test_a_trial_that_does_not_reach_a_finite_score_fails_and_the_study_goes_on(
    tiny_backbone, data_dir, tmp_path, monkeypatch
):
    import mtl.tune.study

    calls = iter([math.nan, 0.5])
    monkeypatch.setattr(mtl.tune.study, "run_trial", lambda *a, **k: next(calls))
    out = tmp_path / "out"
    assert tune("--trials", "1", "--no-report", *tiny_args(tiny_backbone, data_dir, out)) == 0
    assert [t.state.name for t in load(out).trials] == ["FAIL", "COMPLETE"]


def test_a_trial_stopped_by_ctrl_c_is_failed_and_queued_again_in_its_folder(
    tiny_backbone, data_dir, tmp_path, monkeypatch
):
    import mtl.tune.study

    def interrupted(trial, run_name, *args):
        trial.suggest_float("optim.lr_heads", 1e-3, 1e-1, log=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(mtl.tune.study, "run_trial", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        tune("--trials", "1", "--no-report", *tiny_args(tiny_backbone, data_dir, out))
    stopped, queued = load(out).trials
    assert stopped.state.name == "FAIL" and queued.state.name == "WAITING"
    # its values again (those it drew, and trial 0's queued ones it had not drawn yet) ...
    assert stopped.params == {"optim.lr_heads": 0.01}
    assert queued.system_attrs["fixed_params"] == {
        "optim.lr_heads": 0.01,
        "backbone.pooling": "mean",
    }
    assert queued.user_attrs["run_dir"] == "trial_0"  # ... in its folder
    assert queued.user_attrs["default_config"]  # still the config as given


def test_the_report_says_when_tpe_never_started_modelling():
    from mtl.tune.outputs import startup_note
    from mtl.tune.study import TPE_STARTUP_TRIALS

    assert "fewer than TPE's 10 start-up trials" in startup_note(TPE_STARTUP_TRIALS - 1)
    assert startup_note(TPE_STARTUP_TRIALS) == ""  # from here on TPE models: nothing to warn
