"""scripts/compare.py on tiny models and fixture data; data.max_train_rows / max_eval_rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, tiny_model_overrides

from mtl.cli.compare import main as compare_main
from mtl.config import load_config
from mtl.errors import ConfigError
from mtl.harness.compare_table import baseline_by_seed, run_threads

BENCH = REPO / "configs" / "benchmark"
CONFIGS = [BENCH / "mtl_uncertainty.yaml", BENCH / "single_sentiment.yaml"]


def shrink(backbone: Path, data: Path) -> list[str]:
    """The benchmark configs on the tiny BERT and the fixture CSVs: seconds per run."""
    return tiny_model_overrides(backbone, data) + [
        "data.max_train_rows=100",
        "data.max_eval_rows=30",
        "trainer.max_epochs=1",
    ]


def every_benchmark_config_loads():
    names = sorted(p.stem for p in BENCH.glob("*.yaml"))
    assert {
        "mtl_uncertainty",
        "mtl_equal",
        "mtl_dwa",
        "mtl_temperature",
        "mtl_random",
        "single_toxicity",
        "single_emotion",
        "single_sentiment",
    } <= set(names)
    return [load_config(p) for p in sorted(BENCH.glob("*.yaml"))]


def test_benchmark_configs_share_everything_but_the_variant():
    configs = every_benchmark_config_loads()
    mtl = load_config(BENCH / "mtl_uncertainty.yaml")
    for cfg in configs:
        assert cfg.cv.n_splits == 1 and cfg.backbone.name == "minilm"
        for key in ("data", "optim", "trainer", "backbone", "early_stopping"):
            assert cfg[key] == mtl[key], key
        for name, spec in cfg.tasks.items():
            assert spec == mtl.tasks[name]  # a single-task config trains the same task


def test_natural_proportion_configs_differ_only_in_each_task_s_row_budget():
    mtl = load_config(BENCH / "mtl_equal.yaml")
    paths = sorted((BENCH / "natural").glob("*.yaml"))
    assert {p.stem for p in paths} == {
        "mtl_equal",
        "mtl_equal_temperature",
        "single_toxicity",
        "single_emotion",
        "single_sentiment",
    }
    caps = {}
    for path in paths:
        cfg = load_config(path)
        assert cfg.data.max_train_rows is None
        assert {**cfg.data, "max_train_rows": 1500} == mtl.data, path.stem
        for key in ("optim", "trainer", "backbone", "early_stopping", "cv", "loss_weighting"):
            assert cfg[key] == mtl[key], (path.stem, key)
        assert cfg.sampling.mode == (
            "temperature" if "temperature" in path.stem else "proportional"
        )
        for name, spec in cfg.tasks.items():
            assert {**spec, "max_train_rows": None} == mtl.tasks[name]
            assert caps.setdefault(name, spec.max_train_rows) == spec.max_train_rows
        if len(cfg.tasks) > 1:
            assert list(cfg.tasks) == list(mtl.tasks)  # sentiment first: same held-out rows
    # the full training files' imbalance, 67,349 / 11,916 / 43,410 rows, at 5%
    assert caps == {"sentiment": 3370, "toxicity": 600, "emotion": 2170}


def test_the_full_data_study_trains_the_full_data_config_but_for_its_budget_keys():
    """configs/benchmark/full/tune_mtl_equal.yaml (RESULTS "Hyperparameter search") must search
    around the run it is compared with: the same config, but a row subset, a larger selection
    slice, one bf16 epoch and the search space (its best.yaml is retrained at full size)."""
    from mtl.config import to_dict
    from mtl.run.runfolder import flatten

    study_cfg = load_config(BENCH / "full" / "tune_mtl_equal.yaml")
    study = flatten(to_dict(study_cfg))
    equal = flatten(to_dict(load_config(BENCH / "full" / "mtl_equal.yaml")))
    differ = {k for k in study.keys() | equal.keys() if study.get(k) != equal.get(k)}
    assert {k for k in differ if not k.startswith("tune.")} == {
        "run.name",
        "data.max_train_rows",
        "data.val_fraction",
        "trainer.max_epochs",
        "trainer.precision",
    }
    assert study["cv.n_splits"] == 1 and study["cv.selection"] == "best"  # chosen off the val files
    for key, entry in study_cfg.tune.space.items():
        assert entry["low"] <= equal[key] <= entry["high"], key  # trial 0 is the hand-picked run


def test_full_data_configs_differ_only_in_weighting_and_tasks_and_select_off_the_val_files():
    paths = sorted(
        p for p in (BENCH / "full").glob("*.yaml") if not p.stem.startswith(("mpnet_", "tune_"))
    )
    assert {p.stem for p in paths} == {
        "mtl_equal",
        "mtl_uncertainty",
        "single_toxicity",
        "single_emotion",
        "single_sentiment",
    }
    mtl = load_config(BENCH / "full" / "mtl_equal.yaml")
    assert list(mtl.tasks) == ["sentiment", "toxicity", "emotion"]
    for path in paths:
        cfg = load_config(path)
        # every training row; the epoch and thresholds are chosen on held-out training rows
        assert cfg.data.max_train_rows is None and cfg.data.val_fraction > 0
        assert (cfg.cv.n_splits, cfg.cv.selection) == (1, "best")
        for key in ("data", "optim", "trainer", "backbone", "early_stopping", "sampling", "cv"):
            assert cfg[key] == mtl[key], (path.stem, key)
        for name, spec in cfg.tasks.items():
            assert spec == mtl.tasks[name], (path.stem, name)
            assert spec.max_train_rows is None
    assert mtl.tasks.emotion.threshold == "tuned"


def test_max_train_rows_and_max_eval_rows(tiny_cfg, caplog):
    from mtl.data.load import load_tasks
    from mtl.model.network import load_tokenizer

    full_cfg = tiny_cfg()
    tokenizer = load_tokenizer(full_cfg.backbone.name)
    full, _ = load_tasks(full_cfg, tokenizer)
    with caplog.at_level(logging.INFO, logger="mtl.data"):
        capped, _ = load_tasks(
            tiny_cfg("data.max_train_rows=50", "data.max_eval_rows=20"), tokenizer
        )
    for name in full:
        train, val = capped[name]["train"], capped[name]["val"]
        assert len(train) == 50 and len(val) == 20
        assert len(capped[name]["test"]) == len(full[name]["test"])  # test files are never capped
        assert np.all(np.diff(train.rows) > 0)  # a subset in file order
        whole = full[name]["train"]
        assert [whole.texts[r] for r in train.rows] == train.texts
        assert len(train.input_ids) == 50
    assert "using a random 50 of 120 train rows" in caplog.text and "70 dropped" in caplog.text
    # seeded by seed and task name, not by the task's position: a one-task run keeps the rows
    again, _ = load_tasks(tiny_cfg("data.max_train_rows=50", "tasks.toxicity=null"), tokenizer)
    assert np.array_equal(again["sentiment"]["train"].rows, capped["sentiment"]["train"].rows)
    other, _ = load_tasks(tiny_cfg("data.max_train_rows=50", "seed=7"), tokenizer)
    assert not np.array_equal(other["sentiment"]["train"].rows, capped["sentiment"]["train"].rows)
    # a cap above the file's size keeps every row
    big, _ = load_tasks(tiny_cfg("data.max_train_rows=1000"), tokenizer)
    assert len(big["toxicity"]["train"]) == len(full["toxicity"]["train"])
    for bad in ("data.max_train_rows=0", "data.max_eval_rows=true", "data.max_train_rows=1.5"):
        with pytest.raises(ConfigError, match="data.max_"):
            tiny_cfg(bad)


def test_a_task_s_own_max_train_rows_overrides_the_data_one(tiny_cfg):
    from mtl.data.load import load_tasks
    from mtl.model.network import load_tokenizer

    cfg = tiny_cfg("data.max_train_rows=50", "tasks.toxicity.max_train_rows=20")
    capped, _ = load_tasks(cfg, load_tokenizer(cfg.backbone.name))
    assert len(capped["toxicity"]["train"]) == 20
    assert len(capped["sentiment"]["train"]) == len(capped["emotion"]["train"]) == 50
    # seeded: the same rows again
    again, _ = load_tasks(cfg, load_tokenizer(cfg.backbone.name))
    assert np.array_equal(again["toxicity"]["train"].rows, capped["toxicity"]["train"].rows)
    for bad in ("tasks.toxicity.max_train_rows=0", "tasks.toxicity.max_train_rows=abc"):
        with pytest.raises(ConfigError, match="tasks.toxicity.max_train_rows"):
            tiny_cfg(bad)


def test_compare_writes_the_table_and_skips_finished_runs(
    tiny_backbone, data_dir, tmp_path, capsys
):
    out = tmp_path / "runs"
    table, report = tmp_path / "table.md", tmp_path / "compare.json"
    argv = [
        "--configs",
        *map(str, CONFIGS),
        "--seeds",
        "1",
        "2",
        *shrink(tiny_backbone, data_dir),  # overrides after --seeds, as in the docs
        "--output-dir",
        str(out),
        "--out",
        str(table),
        "--json",
        str(report),
    ]
    assert compare_main(argv) == 0
    first = json.loads(report.read_text())
    runs = {(r["config"], r["seed"]): r for r in first["runs"]}
    assert set(runs) == {(c, s) for c in ("mtl_uncertainty", "single_sentiment") for s in (1, 2)}
    assert all(r["status"] == "trained" and r["wall_clock_s"] > 0 for r in runs.values())
    assert set(runs["mtl_uncertainty", 1]["metrics"]) == {"sentiment", "toxicity", "emotion"}
    assert set(runs["single_sentiment", 1]["metrics"]) == {"sentiment"}
    assert set(runs["single_sentiment", 1]["metrics"]["sentiment"]) == {"accuracy", "f1_macro"}
    # the numbers are the run folder's own results.json: the clean val-set scores
    results = json.loads((out / "mtl_uncertainty-s2" / "results.json").read_text())
    assert (
        runs["mtl_uncertainty", 2]["metrics"]["emotion"]["f1_macro"]
        == results["tasks"]["emotion"]["valfile_blended"]["f1_macro"]
    )
    # capped rows; nothing is chosen (selection: last), so no selection slice; sentiment holds
    # out the same val rows in the multi-task and the single-task run
    assert runs["mtl_uncertainty", 1]["train_rows"]["toxicity"] == {
        "train": 100, "selection": 0, "val_set_held_out": 0
    }  # fmt: skip
    assert runs["mtl_uncertainty", 1]["train_rows"]["sentiment"] == {
        "train": 80, "selection": 0, "val_set_held_out": 20
    }  # fmt: skip
    for seed in (1, 2):
        held = [
            pd.read_csv(out / f"{name}-s{seed}" / "folds.csv").query("task == 'sentiment'")
            for name in ("mtl_uncertainty", "single_sentiment")
        ]
        assert held[0].reset_index(drop=True).equals(held[1].reset_index(drop=True))

    stats = first["table"]["mtl_uncertainty"]["metrics"]["toxicity/f1_macro"]
    values = [runs["mtl_uncertainty", s]["metrics"]["toxicity"]["f1_macro"] for s in (1, 2)]
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert first["hardware"]["usable_cores"] >= 1 and first["hardware"]["torch"]

    text = table.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = lines[0]
    for column in ("toxicity macro-F1", "emotion macro-F1", "sentiment acc", "sentiment macro-F1"):
        assert column in header
    assert "wall-clock / run, s: median (min–max)" in header
    row = next(line for line in lines if line.startswith("| mtl_uncertainty |"))
    assert row.count(" ± ") == 4  # four metrics
    walls = sorted(runs["mtl_uncertainty", s]["wall_clock_s"] for s in (1, 2))
    assert f"({walls[0]:.0f}–{walls[1]:.0f})" in row
    assert f"{stats['mean']:.4f} ± {stats['std']:.4f}" in row
    single = next(line for line in lines if line.startswith("| single_sentiment |"))
    assert single.count("—") == 2  # no toxicity, no emotion
    assert "majority-class baseline" in text and "Hardware:" in text and "1,2" in row

    # rerun: nothing retrains, the same table comes back
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/fold_0/*")}
    assert compare_main(argv) == 0
    second = json.loads(report.read_text())
    assert [r["status"] for r in second["runs"]] == ["skipped"] * 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/fold_0/*")} == stamps
    assert second["table"] == first["table"]
    assert table.read_text().split("Runs:")[0] == text.split("Runs:")[0]

    # seed-paired differences, read from the JSON (no training)
    capsys.readouterr()
    assert (
        compare_main(["--paired", "mtl_uncertainty", "single_sentiment", "--json", str(report)])
        == 0
    )
    lines = [x for x in capsys.readouterr().out.splitlines() if "mtl_uncertainty − " in x]
    assert len(lines) == 2  # sentiment accuracy and macro-F1: the tasks both configs have
    diffs = [
        runs["mtl_uncertainty", s]["metrics"]["sentiment"]["accuracy"]
        - runs["single_sentiment", s]["metrics"]["sentiment"]["accuracy"]
        for s in (1, 2)
    ]
    assert f"{diffs[0]:+.4f}, {diffs[1]:+.4f}" in lines[0]

    # the two configs tabulated apart (two JSONs) pair the same; a run given twice is refused
    parts = []
    for config in ("mtl_uncertainty", "single_sentiment"):
        part = tmp_path / f"{config}.json"
        part.write_text(json.dumps({"runs": [r for r in first["runs"] if r["config"] == config]}))
        parts.append(str(part))
    pair = ["--paired", "mtl_uncertainty", "single_sentiment", "--json"]
    assert compare_main(pair + parts) == 0
    split = [x for x in capsys.readouterr().out.splitlines() if "mtl_uncertainty − " in x]
    assert split == lines
    assert compare_main(pair + [parts[0], str(report)]) == 2
    assert "also in an earlier --json" in capsys.readouterr().err

    # the same folders with another budget would mix settings in one table: refused up front
    changed = [a if a != "data.max_train_rows=100" else "data.max_train_rows=90" for a in argv]
    assert compare_main(changed) == 2


def test_the_baseline_row_has_one_value_per_seed_however_many_configs_share_a_task():
    rows = [
        {"seed": seed, "baseline": {"sentiment": {"accuracy": acc}, "toxicity": tox}}
        for seed, acc in ((1, 0.5), (2, 0.6))
        for tox in ({"f1_macro": 0.4}, {})  # a multi-task and a single-sentiment config
    ]
    assert baseline_by_seed(rows) == {
        "sentiment/accuracy": [0.5, 0.6],
        "toxicity/f1_macro": [0.4, 0.4],
    }


def test_the_shared_cpu_check_uses_the_threads_a_run_trained_with():
    # a table rewritten later with other thread settings must not re-judge finished runs
    assert run_threads({"torch_threads": 2}, {"torch_threads": 1}) == 2
    assert run_threads({"torch_threads": None}, {"torch_threads": 4}) == 4  # older runs


def test_the_frozen_embeddings_ablation_changes_one_key_of_mtl_equal():
    from mtl.config import to_dict

    base = to_dict(load_config(BENCH / "mtl_equal.yaml"))
    frozen = to_dict(load_config(BENCH / "ablation" / "mtl_equal_frozen_embeddings.yaml"))
    assert frozen["backbone"].pop("freeze_embeddings") is True
    assert base["backbone"].pop("freeze_embeddings") is False
    assert frozen["run"].pop("name") == "mtl_equal_frozen_embeddings"
    base["run"].pop("name")
    assert frozen == base


def test_full_data_mpnet_configs_are_the_minilm_ones_with_the_base_model_backbone_lr_and_bf16():
    full = BENCH / "full"
    for mpnet in sorted(full.glob("mpnet_*.yaml")):
        minilm = full / mpnet.name.replace("mpnet_single_", "single_").replace("mpnet_", "mtl_")
        cfg, base = load_config(mpnet), load_config(minilm)
        assert cfg.run.name == "full_" + mpnet.stem
        assert (cfg.backbone.name, cfg.trainer.precision) == ("mpnet", "bf16-mixed")
        assert 2e-5 <= cfg.optim.lr_backbone <= 5e-5  # the usual range for base-size encoders
        cfg.run, cfg.backbone.name = base.run, base.backbone.name
        cfg.optim.lr_backbone, cfg.trainer.precision = (
            base.optim.lr_backbone,
            base.trainer.precision,
        )
        assert cfg == base, mpnet.stem  # nothing else differs
    assert {p.stem for p in full.glob("mpnet_*.yaml")} == {
        "mpnet_equal",
        "mpnet_single_toxicity",
        "mpnet_single_emotion",
        "mpnet_single_sentiment",
    }
