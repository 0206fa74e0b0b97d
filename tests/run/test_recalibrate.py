"""Issue 26: a finished run takes a new tasks.<t>.calibration without retraining (scripts/train.py
or scripts/blend.py overrides), a run folder from before calibration included; calibration.png and
the TensorBoard scalars follow results.json (the key's checks: tests/config/test_calibration_config.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mtl.config import load_config

TASKS = ("toxicity", "emotion", "sentiment")


@pytest.fixture(scope="module")
def plain_run(tiny_backbone, data_dir, tmp_path_factory):
    """A finished 2-fold tiny run trained with calibration none for every task."""
    from helpers import tiny_overrides

    from mtl.run.train import train

    out = tmp_path_factory.mktemp("recal")
    cfg = load_config(
        "configs/default.yaml",
        tiny_overrides(tiny_backbone, data_dir, out)
        + [
            "cv.n_splits=2",
            "trainer.max_epochs=1",
            *(f"tasks.{t}.calibration=none" for t in TASKS),
        ],
    )
    results = train(cfg)
    return Path(cfg.run.output_dir) / cfg.run.name, results


@pytest.fixture
def run_copy(plain_run, tmp_path):
    folder, _ = plain_run
    copy = tmp_path / "runs" / folder.name
    shutil.copytree(folder, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["run"]["output_dir"] = str(copy.parent)
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def fold_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the fold folders with its bytes and mtime: what training would rewrite."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.glob("fold_*/*"))
        if p.is_file()
    }


def scalars(folder: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for events in folder.rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(f"{events.parent.name}:{tag}", []).extend(
                e.value for e in acc.Scalars(tag)
            )
    return out


def test_train_py_recalibrates_a_finished_run_without_retraining_a_fold(run_copy, capsys):
    from mtl.cli.train import main

    assert json.loads((run_copy / "results.json").read_text())["calibration"] == {}
    before = fold_state(run_copy)
    argv = ["--config", str(run_copy / "config.yaml"), "tasks.toxicity.calibration=vector"]
    assert main(argv) == 0, capsys.readouterr().err
    assert fold_state(run_copy) == before  # no checkpoint, metrics or prediction file touched
    results = json.loads((run_copy / "results.json").read_text())
    assert list(results["calibration"]) == ["toxicity"]
    assert set(results["calibration"]["toxicity"]["folds"]) == {"0", "1"}
    assert (
        yaml.safe_load((run_copy / "config.yaml").read_text())["tasks"]["toxicity"]["calibration"]
        == "vector"
    )


def test_blend_py_overrides_recalibrate_and_stay_in_the_runs_config(run_copy, capsys):
    from mtl.cli.blend import main

    before = fold_state(run_copy)
    assert main([str(run_copy), "tasks.emotion.calibration=temperature"]) == 0
    results = json.loads((run_copy / "results.json").read_text())
    assert results["calibration"]["emotion"]["method"] == "temperature"
    assert all(b == 0.0 for p in results["calibration"]["emotion"]["folds"].values() for b in p["bias"])  # fmt: skip
    assert main([str(run_copy)]) == 0  # the next blend keeps it: config.yaml says so
    assert (
        json.loads((run_copy / "results.json").read_text())["calibration"] == results["calibration"]
    )
    assert fold_state(run_copy) == before
    report = (run_copy / "report.md").read_text()
    assert "## Calibration" in report and "| emotion | temperature | val set (blended) |" in report
    assert (run_copy / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the scalars: one value per tag (a rerun replaces them), the numbers of results.json
    logged = scalars(run_copy / "tensorboard" / "calibration")
    metrics = results["calibration"]["emotion"]["metrics"]["valfile"]
    assert logged["uncalibrated:calibration/emotion/valfile/ece"] == [pytest.approx(metrics["before"]["ece"])]  # fmt: skip
    assert logged["calibrated:calibration/emotion/valfile/nll"] == [pytest.approx(metrics["after"]["nll"])]  # fmt: skip
    assert not any(p.name.startswith(".") for p in (run_copy / "tensorboard").iterdir())
    # back to none: no diagram, no scalars of an earlier blend
    assert main([str(run_copy), "tasks.emotion.calibration=none"]) == 0
    assert json.loads((run_copy / "results.json").read_text())["calibration"] == {}
    assert not (run_copy / "calibration.png").exists()
    assert not (run_copy / "tensorboard" / "calibration").exists()
    capsys.readouterr()


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("seed=3", "takes only overrides of the keys that change the blend"),
        ("tasks.emotion.threshold=tuned", "takes only overrides"),
        ("tasks.nosuch.calibration=none", "has no task 'nosuch'"),
        ("tasks.emotion.calibration=platt", "must be one of: none, temperature, vector"),
    ],
)
def test_blend_py_refuses_other_overrides_and_changes_nothing(run_copy, capsys, override, says):
    from mtl.cli.blend import main

    files = {p: p.read_bytes() for p in sorted(run_copy.rglob("*")) if p.is_file() and p.name != ".lock"}  # fmt: skip
    assert main([str(run_copy), override]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    now = {p: p.read_bytes() for p in sorted(run_copy.rglob("*")) if p.is_file() and p.name != ".lock"}  # fmt: skip
    assert now == files


def test_a_run_folder_from_before_calibration_blends_calibrated_and_resumes(run_copy, capsys):
    """Its config.yaml has no calibration key: the default (vector) applies; train.py accepts it."""
    from mtl.cli.blend import main as blend
    from mtl.cli.train import main as train

    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    for spec in config["tasks"].values():
        del spec["calibration"]
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = fold_state(run_copy)
    assert blend([str(run_copy)]) == 0
    results = json.loads((run_copy / "results.json").read_text())
    assert {e["method"] for e in results["calibration"].values()} == {"vector"}
    assert set(results["calibration"]) == set(TASKS)
    assert train(["--config", str(run_copy / "config.yaml")]) == 0, capsys.readouterr().err
    assert fold_state(run_copy) == before


def test_a_blend_killed_while_staging_its_scalars_leaves_nothing_the_next_blend_keeps(run_copy):
    """A dead writer's staged calibration folder in tensorboard/ is removed by the next blend."""
    from mtl.cli.blend import main
    from mtl.io import _HOST

    orphan = run_copy / "tensorboard" / f".calibration~{2**22 + 12345}@{_HOST}~x1"
    (orphan / "calibrated").mkdir(parents=True)
    assert main([str(run_copy), "tasks.toxicity.calibration=vector"]) == 0
    assert not orphan.exists()
    assert sorted(p.name for p in (run_copy / "tensorboard" / "calibration").iterdir()) == [
        "calibrated",
        "uncalibrated",
    ]
