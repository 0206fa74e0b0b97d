"""Input and output tables for prediction, read and written in chunks (CSV, TSV, Parquet, JSON Lines)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from mtl.errors import PredictError, first_line, first_rows
from mtl.io import FILE_FORMATS, undecodable_at

log = logging.getLogger(__name__)


DEFAULT_CHUNK_SIZE = 10_000  # rows read, predicted and written at a time by predict_file


def as_texts(texts: Iterable) -> list[str]:
    """A list of str: a lone string is one text; None / NaN become ""."""
    if isinstance(texts, str):
        return [texts]
    out = []
    for t in texts:
        if t is None or (isinstance(t, float) and math.isnan(t)):
            out.append("")
        else:
            out.append(t if isinstance(t, str) else str(t))
    return out


def empty_positions(texts: list[str]) -> list[int]:
    """0-based positions of texts that are empty or only whitespace."""
    return [i for i, t in enumerate(texts) if not t.strip()]


def warn_empty_texts(positions: list[int], total: int, source: str) -> None:
    """An empty text still gets probabilities (the model's prior), which look like a confident
    prediction about nothing: say so, with the numbers."""
    if positions:
        log.warning(
            "%d of %d texts %s are empty or whitespace only (rows %s, 1-based): the model still "
            "assigns them labels, which say nothing about any text. Remove those rows, or ignore "
            "their predictions.",
            len(positions),
            total,
            source,
            first_rows(p + 1 for p in positions),
        )


def refuse_overwriting_input(input_path: str | Path, output_path: str | Path) -> None:
    """Writing predictions over the input file would silently replace the user's data."""
    source, target = Path(input_path), Path(output_path)
    same = source.resolve() == target.resolve()
    if not same and source.exists() and target.exists():
        same = os.path.samefile(source, target)  # a hard link or another path to the same file
    if same:
        suggestion = target.with_name(f"{target.stem}_predictions{target.suffix}")
        raise PredictError(
            f"--output {target} is the input file {source}: writing the predictions there would "
            f"replace your input. Pass another output path, e.g. --output {suggestion}."
        )


def join_columns(chunk: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Input columns, then prediction columns (a same-named input column is replaced)."""
    kept = chunk.drop(columns=[c for c in predictions.columns if c in chunk.columns])
    return pd.concat([kept, predictions.set_axis(chunk.index)], axis=1)


def output_format(path: Path) -> str:
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PredictError(
            f"Cannot write {path}: unknown extension '{path.suffix}'. "
            f"Use one of {', '.join(FILE_FORMATS)}."
        )
    return fmt


class TableSource:
    """An input file read in chunks of `chunk_size` rows; can be read more than once.

    CSV / TSV cells are kept as text, exactly as in the file (empty cells stay ""); a blank
    line is a row with an empty text (that is how a one-column file stores one).
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

    def _check_columns(self, columns) -> None:
        if self.text_column not in columns:
            raise PredictError(
                f"Input file {self.path} has no column '{self.text_column}' (the text column); "
                f"its columns are {list(columns)}. Pass --text-column with one of them."
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

    def chunks(self) -> Iterator[pd.DataFrame]:
        reader = self._raw_chunks()
        first = True
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
            if first:
                self._check_columns(chunk.columns)
                first = False
            yield chunk
        if first:
            raise PredictError(
                f"Input file {self.path} is empty: it has no rows and no '{self.text_column}' column."
            )

    def texts(self, chunk: pd.DataFrame) -> list[str]:
        return as_texts(chunk[self.text_column].tolist())


def write_frames(tmp: str, fmt: str, frames: Iterable[pd.DataFrame]) -> int:
    """Write frames one after the other to `tmp` as one csv / tsv / jsonl / parquet file."""
    rows = 0
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        try:
            for frame in frames:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                else:
                    table = table.cast(writer.schema)
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


def predict_table(
    predictor, source: TableSource, output_path: Path, batch_size: int | None, progress: bool | None
) -> int:
    """`Predictor.predict_file`: every chunk of `source` through `predictor`, the input's columns
    plus the prediction columns written to `output_path` atomically; returns the row count."""
    from tqdm.auto import tqdm

    from mtl.io import atomic_write

    empty: list[int] = []  # positions of empty texts over the whole file
    seen = [0]

    def texts_of(chunk: pd.DataFrame) -> list[str]:
        texts = source.texts(chunk)
        empty.extend(seen[0] + i for i in empty_positions(texts))
        seen[0] += len(texts)
        return texts

    fmt = output_format(output_path)
    bar = tqdm(
        total=source.total_rows,
        unit="rows",
        desc=f"predicting {source.path.name}",
        disable=None if progress is None else not progress,
    )

    def chunks() -> Iterator[pd.DataFrame]:
        for chunk in source.chunks():
            probs = predictor.blend(
                predictor.fold_probabilities(texts_of(chunk), batch_size, bar.update)
            )
            yield join_columns(chunk, predictor.frame(probs))

    try:
        rows = []
        atomic_write(output_path, lambda tmp: rows.append(write_frames(tmp, fmt, chunks())))
    finally:
        bar.close()
    warn_empty_texts(empty, seen[0], f"in {source.path}")
    return rows[0]
