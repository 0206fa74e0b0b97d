"""Input tables for prediction, read in chunks (CSV, TSV, Parquet, JSON Lines), and the loop of
`predict_file` (its output side: mtl/inference/outputs.py)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from mtl.errors import PredictError, first_line
from mtl.inference.checks import (
    as_texts,  # noqa: F401  (mtl/portable.py's comments point here)
    empty_positions,
    refuse_column_clashes,
    warn_empty_texts,
)
from mtl.inference.outputs import (
    output_format,
    span,
    write_frames,  # noqa: F401  (mtl/harness/bench imports it from here)
    write_table,
)
from mtl.io import FILE_FORMATS, undecodable_at

DEFAULT_CHUNK_SIZE = 10_000  # rows read, predicted and written at a time by predict_file


class TableSource:
    """An input file read in chunks of `chunk_size` rows; can be read more than once.

    CSV / TSV cells are kept as text, exactly as in the file (empty cells stay ""); a blank
    line is a row with an empty text (that is how a one-column file stores one). Every chunk
    has the first chunk's columns, in its order: a JSON Lines chunk without a key the first
    chunk has gets empty cells (as one chunk of the whole file would); one without the text
    column or with a key the first chunk lacks is refused.
    """

    def __init__(self, path: str | Path, text_column: str, chunk_size: int = DEFAULT_CHUNK_SIZE):
        self.path = Path(path)
        self.text_column = text_column
        self.chunk_size = int(chunk_size)
        if self.chunk_size < 1:
            raise PredictError(f"The chunk size must be a positive integer, got {chunk_size}.")
        if not self.path.is_file():
            raise PredictError(f"Input file not found: {self.path}.")
        self.format = FILE_FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise PredictError(
                f"Cannot read {self.path}: unknown extension '{self.path.suffix}'. "
                f"Use one of {', '.join(FILE_FORMATS)}."
            )
        self.total_rows = None
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                meta = pq.ParquetFile(self.path).metadata
            except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
                raise PredictError(
                    f"Cannot read {self.path} as Parquet: {first_line(err)}"
                ) from None
            self.total_rows = meta.num_rows
            self._check_columns(meta.schema.to_arrow_schema().names)
        elif self.format in ("csv", "tsv"):
            self._check_columns(self._csv_header(), missing_ok=True)  # pandas renames a, a → a.1

    def _csv_header(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8-sig", newline="") as handle:
                return next(csv.reader(handle, delimiter="," if self.format == "csv" else "\t"), [])
        except (UnicodeDecodeError, csv.Error):
            return []  # chunks() says what is wrong with the file

    def _check_columns(self, columns, missing_ok: bool = False) -> None:
        columns = list(columns)
        repeated = sorted({c for c in columns if c and columns.count(c) > 1})
        if repeated:
            raise PredictError(
                f"Input file {self.path} has more than one column named {repeated}: the output "
                "would keep only one of them, or rename the others. Give every column its own "
                "name."
            )
        if self.text_column not in columns and not missing_ok:
            raise PredictError(
                f"Input file {self.path} has no column '{self.text_column}' (the text column); "
                f"its columns are {columns}. Pass --text-column with one of them."
            )

    def _raw_chunks(self) -> Iterator[pd.DataFrame]:
        if self.format in ("csv", "tsv"):
            yield from pd.read_csv(
                self.path,
                sep="," if self.format == "csv" else "\t",
                chunksize=self.chunk_size,
                dtype=str,
                keep_default_na=False,
                skip_blank_lines=False,  # a one-column file writes an empty text as a blank line
            )
        elif self.format == "jsonl":
            yield from pd.read_json(self.path, lines=True, chunksize=self.chunk_size, dtype=False)
        else:
            import pyarrow.parquet as pq

            handle = pq.ParquetFile(self.path)
            empty = True
            for batch in handle.iter_batches(batch_size=self.chunk_size):
                empty = False
                yield batch.to_pandas()
            if empty:
                yield handle.schema_arrow.empty_table().to_pandas()

    def chunks(self) -> Iterator[tuple[int, pd.DataFrame]]:
        """(0-based row of the chunk's first row, chunk), with the first chunk's columns."""
        reader = self._raw_chunks()
        columns, start = None, 0
        while True:
            try:
                chunk = next(reader)
            except StopIteration:
                break
            except pd.errors.EmptyDataError:
                raise PredictError(
                    f"Input file {self.path} is empty: it needs a header with a "
                    f"'{self.text_column}' column."
                ) from None
            except UnicodeDecodeError as err:
                raise PredictError(
                    f"Input file {self.path} is not UTF-8 text: "
                    f"{undecodable_at(self.path, 'utf-8', err)} Save it as UTF-8 (e.g. iconv -f "
                    f"cp1252 -t utf-8 old.csv > new.csv) and predict again."
                ) from None
            except (ValueError, pd.errors.ParserError, OSError) as err:
                raise PredictError(f"Cannot parse {self.path}: {first_line(err)}") from None
            if columns is None:
                self._check_columns(chunk.columns)
                columns = list(chunk.columns)
            else:
                chunk = self._conform(chunk, columns, start)
            yield start, chunk
            start += len(chunk)
        if columns is None:
            raise PredictError(
                f"Input file {self.path} is empty: it has no rows and no '{self.text_column}' column."
            )

    def _conform(self, chunk: pd.DataFrame, columns: list[str], start: int) -> pd.DataFrame:
        rows = f"{span(start, len(chunk))} of {self.path} (1-based)"
        fix = (
            f"Give every row the same keys, or pass a --chunk-size above the file's row count "
            f"(now {self.chunk_size}) to read it as one chunk."
        )
        if self.text_column not in chunk.columns:
            raise PredictError(
                f"The text column '{self.text_column}' is missing from {rows}, a later chunk "
                f"of the file. {fix}"
            )
        new = [c for c in chunk.columns if c not in columns]
        if new:
            raise PredictError(
                f"Key(s) {new} first appear in {rows}: the output's columns are set by the "
                f"first chunk of {self.chunk_size} rows. {fix}"
            )
        return chunk.reindex(columns=columns)  # a missing key: empty cells

    def texts(self, chunk: pd.DataFrame, start: int = 0) -> list[str]:
        """The chunk's texts; `start`: its first row's 0-based row in the file, for errors."""
        column = self.text_column
        return as_texts(
            chunk[column].tolist(),
            where=lambda i: f"row {start + i + 1} of {self.path} (column '{column}')",
        )


def predict_table(
    predictor,
    source: TableSource,
    output_path: Path,
    batch_size: int | None,
    progress: bool | None,
    prefix: str = "",
) -> int:
    """`Predictor.predict_file`: every chunk of `source` through `predictor`, the input's columns
    plus the prediction columns (named with `prefix`) written to `output_path` atomically;
    returns the row count."""
    from tqdm.auto import tqdm

    empty: list[int] = []  # positions of empty texts over the whole file
    output_format(output_path)  # an unknown extension: refused before any work
    bar = tqdm(
        total=source.total_rows,
        unit="rows",
        desc=f"predicting {source.path.name}",
        disable=None if progress is None else not progress,
    )

    def chunks() -> Iterator[pd.DataFrame]:
        outputs = [prefix + c for c in predictor.output_columns()]
        for start, chunk in source.chunks():
            if start == 0:  # the first chunk; later ones have its columns
                refuse_column_clashes(source.path, list(chunk.columns), outputs, prefix)
            texts = source.texts(chunk, start)
            empty.extend(start + i for i in empty_positions(texts))
            probs = predictor.blend(predictor.fold_probabilities(texts, batch_size, bar.update))
            predictions = predictor.frame(probs).add_prefix(prefix).set_axis(chunk.index)
            yield pd.concat([chunk, predictions], axis=1)

    try:
        rows = write_table(output_path, chunks())
    finally:
        bar.close()
    warn_empty_texts(empty, rows, f"in {source.path}")
    return rows
