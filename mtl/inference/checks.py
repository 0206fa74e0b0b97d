"""What prediction accepts (texts, input and output files) and gives as an answer (finite
probabilities), for every backend, the CLI, files and the HTTP API alike."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from mtl.errors import PredictError, first_rows
from mtl.portable_model import as_texts as portable_texts

log = logging.getLogger(__name__)


def as_texts(texts: Iterable, where: Callable[[int], str] = lambda i: f"text {i + 1}") -> list[str]:
    """A list of str: a lone string is one text; an empty cell (None, NaN) is "". Numbers,
    objects and strings that are not Unicode are refused naming their position (`where(i)` for
    0-based `i`). The rule is mtl/portable_model.py's, so the export's own runtime applies the
    very same one."""
    try:
        return portable_texts(texts, where)
    except ValueError as err:
        raise PredictError(str(err)) from None


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


def refuse_column_clashes(path: Path, columns: list[str], outputs: list[str], prefix: str) -> None:
    """A prediction column must never replace an input column of the same name (a gold
    `toxicity_label` column would silently become the model's labels)."""
    clash = [c for c in outputs if c in set(columns)]
    if clash:
        example = "pred_" if not prefix else f"pred_{prefix}"
        raise PredictError(
            f"Input file {path} already has column(s) {clash}, which the predictions would write: "
            f"the output would lose your values. Pass --prefix {example} (prefix='{example}' in "
            f"Python) to name the prediction columns {example}{clash[0]}, ..., or rename those "
            "input columns."
        )


class NonFiniteError(PredictError):
    """A model gave NaN / inf probabilities: never printed, written or served as an answer."""


def refuse_non_finite(values: np.ndarray, what: str, why: str, rows=None) -> None:
    """NonFiniteError naming `what` gave them, for which texts (`rows`: 0-based), and `why`."""
    bad = ~np.isfinite(values).all(axis=-1)
    if bad.any():
        texts = np.flatnonzero(bad) if rows is None else np.asarray(rows)[bad]
        raise NonFiniteError(
            f"{what} gave non-finite probabilities (NaN or inf) for {int(bad.sum())} text(s) "
            f"(texts {first_rows(int(i) + 1 for i in texts)}, 1-based), so there is no answer "
            f"to give: {why}"
        )


NAN_MODEL = (
    "its weights are not finite (its training loss turned NaN) or overflow at this precision. "
    "Retrain it, or predict with another fold (--checkpoint) or at --precision 32-true."
)
