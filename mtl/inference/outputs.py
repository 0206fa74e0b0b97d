"""Prediction output files (CSV, TSV, Parquet, JSON Lines): written chunk by chunk to a temp file
renamed into place, with one-paragraph errors for what cannot be written."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mtl.errors import PredictError, first_line
from mtl.io import FILE_FORMATS


def span(start: int, n: int) -> str:
    """'row 3' or 'rows 3-9' (1-based) for `n` rows from 0-based `start`."""
    return f"row {start + 1}" if n == 1 else f"rows {start + 1}-{start + n}"


def output_format(path: Path) -> str:
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PredictError(
            f"Cannot write {path}: unknown extension '{path.suffix}'. "
            f"Use one of {', '.join(FILE_FORMATS)}."
        )
    return fmt


def _parquet_table(frame: pd.DataFrame, schema, first_row: int):
    """`frame` as an Arrow table with `schema` (the first chunk's, None for the first chunk): a
    clear error naming the column whose values cannot be stored with one type."""
    import pyarrow as pa

    rows = span(first_row, len(frame))
    one_type = (
        "a Parquet column holds values of one type. Make that column's values one type in every "
        "row (e.g. all strings), or write .jsonl / .csv output"
    )
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except pa.ArrowException as err:
        mixed = []
        for column in frame.columns:
            try:
                pa.Array.from_pandas(frame[column])
            except pa.ArrowException as why:
                mixed.append(f"'{column}' ({first_line(why).strip('(')})")
        raise PredictError(
            f"Column {', '.join(mixed) or first_line(err)} in {rows} cannot be written as "
            f"Parquet: {one_type}."
        ) from None
    if schema is None:
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowException, ValueError):
        old = {f.name: f.type for f in schema}
        changed = [f for f in table.schema if f.name in old and old[f.name] != f.type]
        described = "; ".join(
            f"'{f.name}' is {old[f.name]} before row {first_row + 1} but {f.type} in {rows}"
            for f in changed
        )
        if any(old[f.name] == pa.null() for f in changed):  # empty in every row of chunk 1
            one_type += (
                ", or pass a --chunk-size above the row count so that its type is read from "
                "every row at once"
            )
        raise PredictError(
            f"Column {described or '(types differ)'}, so it cannot be written as Parquet (the "
            f"first chunk sets each column's type): {one_type}."
        ) from None


def write_frames(tmp: str, fmt: str, frames: Iterable[pd.DataFrame]) -> int:
    """Write frames one after the other to `tmp` as one csv / tsv / jsonl / parquet file."""
    rows = 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        writer = None
        try:
            for frame in frames:
                table = _parquet_table(frame, None if writer is None else writer.schema, rows)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += len(frame)
        finally:
            if writer is not None:
                writer.close()
        return rows
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        for i, frame in enumerate(frames):
            if fmt == "jsonl":
                if len(frame):
                    handle.write(
                        frame.to_json(orient="records", lines=True, force_ascii=False).rstrip("\n")
                        + "\n"
                    )
            else:
                frame.to_csv(handle, index=False, header=i == 0, sep="," if fmt == "csv" else "\t")
            rows += len(frame)
    return rows


def write_table(path: Path, frames: Iterable[pd.DataFrame]) -> int:
    """Write `frames` to `path` (format from its extension) through a temp file renamed into
    place: a failed write leaves the old file as it was and no partial file. Temp files of
    earlier writes to `path` that were killed are removed first. Returns the row count."""
    from mtl.io import atomic_write, remove_orphaned_tmp

    fmt = output_format(path)
    try:
        remove_orphaned_tmp(path.parent, only=path.name)
    except OSError:  # a folder we may write to but not list: the write below says what is wrong
        pass
    rows: list[int] = []
    try:
        atomic_write(path, lambda tmp: rows.append(write_frames(tmp, fmt, frames)))
    except OSError as err:
        kept = f"the old {path.name} is unchanged" if path.exists() else "no partial file is left"
        # no room (disk full, quota, ulimit -f) is atomic_write's own MTLError, naming the file
        if err.errno is None:  # pyarrow's write errors carry no errno
            fix = "Check the free space on that disk and that its folder is writable"
        else:
            fix = "Check that its folder is writable (or pass another --output)"
        raise PredictError(
            f"Cannot write {path}: {err.strerror or first_line(err)} "
            f"({errno.errorcode.get(err.errno, 'OSError')}). Nothing was written: {kept}. "
            f"{fix}, then predict again."
        ) from None
    return rows[0]
