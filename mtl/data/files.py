"""Task files → `TaskData`: the table readers (CSV / TSV / Parquet / JSON Lines), the row container,
path resolution and seeded row caps."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from box import Box

from mtl.errors import DataError
from mtl.io import FILE_FORMATS, undecodable_at

log = logging.getLogger(__name__)
# format (mtl.io.FILE_FORMATS) → (path, text encoding (None: UTF-8; Parquet stores its own) → frame)
READERS: dict[str, Callable[[Path, str | None], pd.DataFrame]] = {
    "csv": lambda p, enc: pd.read_csv(p, keep_default_na=False, na_values=[""], encoding=enc),
    "tsv": lambda p, enc: pd.read_csv(
        p, sep="\t", keep_default_na=False, na_values=[""], encoding=enc
    ),
    "parquet": lambda p, enc: pd.read_parquet(p),
    "jsonl": lambda p, enc: pd.read_json(p, lines=True, encoding=enc),
}
SPLITS = ("train", "val", "test")


@dataclass
class TaskData:
    """One split of one task: texts, token ids and labels, row-aligned."""

    task: str
    split: str
    path: Path
    rows: np.ndarray  # (N,) 0-based data-row numbers in the source file
    texts: list[str]
    input_ids: list[np.ndarray]  # N arrays of int32, unpadded
    labels: (
        np.ndarray | None
    )  # (N,) int64 class index, or (N, C) float32 multi-hot; None if unlabeled
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: np.ndarray) -> TaskData:
        index = np.asarray(index, dtype=np.int64)
        return TaskData(
            task=self.task,
            split=self.split,
            path=self.path,
            rows=self.rows[index],
            texts=[self.texts[i] for i in index],
            input_ids=[self.input_ids[i] for i in index] if self.input_ids else [],
            labels=None if self.labels is None else self.labels[index],
            groups=None if self.groups is None else self.groups[index],
        )


def resolve_path(cfg: Box, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else Path(cfg.data_dir).expanduser() / path


def read_table(path: Path, key: str, encoding: str | None = None) -> pd.DataFrame:
    """Read one task file; `key` is the config key that named it, for the error message."""
    if not path.is_file():
        raise DataError(
            f"File not found: {path} (from config key '{key}'). Fix the path or data_dir."
        )
    reader = READERS.get(FILE_FORMATS.get(path.suffix.lower()))
    if reader is None:
        raise DataError(
            f"Cannot read {path} (config key '{key}'): unknown extension '{path.suffix}'. "
            f"Use one of {', '.join(FILE_FORMATS)}."
        )
    try:
        frame = reader(path, encoding)
    except UnicodeError as err:
        raise DataError(undecodable(path, key, encoding, err)) from None
    except pd.errors.EmptyDataError:
        raise DataError(
            f"File {path} (config key '{key}') is empty: it needs a header and data rows."
        ) from None
    except (ValueError, pd.errors.ParserError, OSError) as err:
        raise DataError(f"Cannot parse {path} (config key '{key}'): {err}") from None
    if len(frame) == 0:
        raise DataError(f"File {path} (config key '{key}') has a header but no data rows.")
    return frame


def undecodable(path: Path, key: str, encoding: str | None, err: UnicodeError) -> str:
    codec = encoding or "utf-8"
    task = key.split(".")[1] if key.count(".") >= 2 else "<task>"
    return (
        f"File {path} (config key '{key}') cannot be read as {codec} text: "
        f"{undecodable_at(path, codec, err)} Save the file as UTF-8 (e.g. iconv -f cp1252 -t "
        f"utf-8 old.csv > new.csv), or set tasks.{task}.encoding to the encoding it was saved in "
        f"(e.g. tasks.{task}.encoding=cp1252)."
    )


def cap_rows(part: TaskData, cap: int, seed: int) -> TaskData:
    """A seeded random subset of `cap` rows (`data.max_train_rows` / `max_eval_rows`), in file order.

    Seeded by the seed, the task's name and the split, not the task's position in the config, so
    a task keeps the same rows in a single-task and a multi-task run."""
    key = zlib.crc32(f"{part.task}/{part.split}".encode())
    rng = np.random.default_rng([seed, key])
    keep = np.sort(rng.choice(len(part), size=cap, replace=False))
    log.info(
        "%s: using a random %d of %d %s rows (max_%s_rows); %d dropped",
        part.path,
        cap,
        len(part),
        part.split,
        "train" if part.split == "train" else "eval",
        len(part) - cap,
    )
    return part.subset(keep)
