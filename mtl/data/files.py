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

from mtl.errors import DataError, first_rows
from mtl.io import FILE_FORMATS, undecodable_at

log = logging.getLogger(__name__)
# format (mtl.io.FILE_FORMATS) → (path, text encoding (None: UTF-8; Parquet stores its own),
# text column or None) → frame. The text column is read as written: CSV / TSV read it as strings
# (not "4.50" → 4.5), JSON Lines keep the JSON types (pandas' dtype inference turned the texts
# "1", "2" into ints), so `non_text_rows` sees what the file really holds.
READERS: dict[str, Callable[[Path, str | None, str | None], pd.DataFrame]] = {
    "csv": lambda p, enc, text: pd.read_csv(
        p, keep_default_na=False, na_values=[""], encoding=enc, dtype=_as_text(text)
    ),
    "tsv": lambda p, enc, text: pd.read_csv(
        p, sep="\t", keep_default_na=False, na_values=[""], encoding=enc, dtype=_as_text(text)
    ),
    "parquet": lambda p, enc, text: pd.read_parquet(p),
    "jsonl": lambda p, enc, text: pd.read_json(
        p, lines=True, encoding=enc, dtype=False, convert_dates=False
    ),
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


def _as_text(column: str | None) -> dict | None:
    return None if column is None else {column: str}


def read_table(
    path: Path, key: str, encoding: str | None = None, text_column: str | None = None
) -> pd.DataFrame:
    """Read one task file; `key` is the config key that named it, for the error message. With
    `text_column`, that column must hold text (or be empty) in every row."""
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
        frame = reader(path, encoding, text_column)
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
    if text_column is not None and text_column in frame.columns:
        refuse_non_text(frame[text_column], path, key)
    return frame


_KINDS = {dict: "an object", list: "a list", bool: "a boolean"}


def non_text_rows(column: pd.Series) -> np.ndarray:
    """0-based rows whose cell is neither text nor missing (a JSON object, list, number, ...)."""
    return np.flatnonzero([not (isinstance(v, str) or _missing(v)) for v in column])


def refuse_non_text(column: pd.Series, path: Path, key: str) -> None:
    """A text cell that is an object, list or number is refused with its rows: stringified, it
    trained as "{'a': 1}" or "42" (issue 22, item 18). Missing cells (null, NaN) pass on to the
    empty-text rule (`data.on_bad_rows`)."""
    rows = non_text_rows(column)
    if len(rows) == 0:
        return
    first = column.iloc[rows[0]]
    kinds = sorted({_KINDS.get(type(v), "a number") for v in column.iloc[rows]})
    task = key.split(".")[1] if key.count(".") >= 2 else "<task>"
    raise DataError(
        f"File {path} (config key '{key}'): the text column '{column.name}' holds "
        f"{' / '.join(kinds)} instead of text in data rows {first_rows(rows + 1)} (1-based, "
        f"header not counted), e.g. {first!r}. Texts must be strings (in JSON Lines "
        f'"{column.name}": "42", not "{column.name}": 42 or an object); fix these rows, or set '
        f"tasks.{task}.text_column to the column that holds the texts."
    )


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array: not a missing cell
        return False


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
