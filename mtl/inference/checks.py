"""What prediction accepts (texts, input and output files) and gives as an answer (finite
probabilities), for every backend, the CLI, files and the HTTP API alike."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from mtl.errors import PredictError, first_rows

log = logging.getLogger(__name__)


def lone_surrogate(text: str) -> str | None:
    """None for Unicode text; else where it stops being Unicode. Python keeps a byte that is not
    UTF-8 on the command line as a lone surrogate (U+DC80–U+DCFF), and JSON's unpaired "\\ud800"
    escapes become one too; no tokenizer can read them (they raise deep inside it)."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])
        origin = (
            f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8"
            if 0xDC80 <= code <= 0xDCFF
            else 'an unpaired escape such as "\\ud800"'
        )
        return f"character {err.start + 1} is U+{code:04X}, a lone surrogate ({origin})"
    return None


def _missing(value) -> bool:
    """An empty cell: None, NaN (pandas' and numpy's float NaN), pandas.NA."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ == "NAType"  # pandas.NA, without importing pandas here


def _listed(problems: list[str], limit: int = 3) -> str:
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def as_texts(texts: Iterable, where: Callable[[int], str] = lambda i: f"text {i + 1}") -> list[str]:
    """A list of str: a lone string is one text; an empty cell (None, NaN) is "".

    Anything else is refused, naming its position (`where(i)` for 0-based `i`): a number or an
    object (JSON Lines, Parquet) is not stringified into a text the model was never trained on,
    as training refuses it too; a string that is not Unicode (a lone surrogate) cannot be
    tokenized.
    """
    if isinstance(texts, str):
        texts = [texts]
    out, wrong_type, not_unicode = [], [], []
    for i, text in enumerate(texts):
        if isinstance(text, str):
            problem = lone_surrogate(text)
            if problem is not None:
                not_unicode.append(f"{where(i)}: {problem}")
            out.append(text)
        elif _missing(text):
            out.append("")
        else:
            wrong_type.append(f"{where(i)} is of type {type(text).__name__} ({str(text)[:40]!r})")
    if wrong_type:
        raise PredictError(
            f"{len(wrong_type)} text(s) are not strings: {_listed(wrong_type)}. Only "
            "strings are texts (numbers and objects are not turned into text, as in training): "
            "make those cells strings, or choose the right text column."
        )
    if not_unicode:
        raise PredictError(
            f"{len(not_unicode)} text(s) are not Unicode: {_listed(not_unicode)}. Give "
            "the texts as UTF-8 (on a command line, check the terminal's encoding: LANG, "
            "LC_ALL), e.g. in a UTF-8 file with --input."
        )
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
