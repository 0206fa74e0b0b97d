"""The DataModule alone: reads, tokenizes and assigns folds itself, and serves fold k's loaders."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO

TASKS = ("toxicity", "emotion", "sentiment")


def loader_rows(loader) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for batch in loader:
        for name, found in batch["rows"].items():
            rows.setdefault(name, []).extend(found.tolist())
    return rows


def test_the_notebook_snippet_serves_a_training_batch_of_fold_2(
    tiny_backbone, data_dir, tmp_path, monkeypatch
):
    """The README's notebook use, verbatim, on a configs/default.yaml pointed at fixture data."""
    config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    config["data_dir"] = str(data_dir)
    config["backbone"]["name"] = str(tiny_backbone)  # the packaged MiniLM works too, slower
    config["data"]["max_length"] = 32  # the tiny BERT has 64 positions
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)

    from mtl import MultiTaskDataModule, load_config

    cfg = load_config("configs/default.yaml", ["cv.n_splits=3"])
    dm = MultiTaskDataModule(cfg); dm.setup("fit"); dm.set_fold(2)  # noqa: E702  # fmt: skip
    batch = next(iter(dm.train_dataloader()))

    assert batch["input_ids"].shape[0] == cfg.data.batch_size
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert set(batch["rows"]) == set(TASKS)


def test_fold_k_trains_on_exactly_the_rows_folds_csv_keeps_out_of_fold_k(tiny_cfg):
    from mtl import MultiTaskDataModule
    from mtl.run.train import prepare

    cfg = tiny_cfg("cv.n_splits=3")
    run_dir, _ = prepare(cfg)  # writes folds.csv into the run folder, trains nothing
    folds = pd.read_csv(run_dir / "folds.csv")
    dm = MultiTaskDataModule(cfg)
    dm.setup("fit")
    for k in range(3):
        dm.set_fold(k)
        trained, validated = loader_rows(dm.train_dataloader()), loader_rows(dm.val_dataloader())
        for task in TASKS:
            mine = folds[folds.task == task]
            assert sorted(trained[task]) == sorted(mine[mine.fold != k].row), (k, task)
            assert sorted(validated[task]) == sorted(mine[mine.fold == k].row), (k, task)


def test_predict_loaders_serve_the_folds_rows_the_val_files_and_the_test_files(tiny_cfg):
    from mtl import MultiTaskDataModule

    dm = MultiTaskDataModule(tiny_cfg("cv.n_splits=2"))
    dm.setup("predict")
    dm.set_fold(1)
    assert dm.predict_kinds() == ["val", "valfile", "test"]
    served = dict(zip(dm.predict_kinds(), dm.predict_dataloader(), strict=True))
    _, val_parts = dm.fold_parts()
    test = loader_rows(dm.test_dataloader())
    for task in TASKS:
        assert sorted(loader_rows(served["val"])[task]) == sorted(val_parts[task].rows)
        n_val = len(pd.read_csv(Path(dm.cfg.data_dir) / f"{task}_val.csv"))
        assert sorted(loader_rows(served["valfile"])[task]) == list(range(n_val))
        n_test = len(pd.read_csv(Path(dm.cfg.data_dir) / f"{task}_test.csv"))
        assert (
            sorted(loader_rows(served["test"])[task]) == sorted(test[task]) == list(range(n_test))
        )


def test_setup_reads_once_and_set_fold_refuses_a_fold_that_does_not_exist(tiny_cfg):
    from mtl import MultiTaskDataModule
    from mtl.errors import ConfigError

    dm = MultiTaskDataModule(tiny_cfg("cv.n_splits=2"))
    dm.setup("fit")
    data = dm.data
    dm.prepare_data()  # Lightning calls both again for validate / predict: nothing is re-read
    dm.setup("validate")
    assert dm.data is data
    with pytest.raises(ConfigError, match="fold 2 does not exist"):
        dm.set_fold(2)
