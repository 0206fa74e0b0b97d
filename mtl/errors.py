"""User-facing errors: one paragraph that names the file, row, key or value and the fix."""


class MTLError(Exception):
    """A mistake in the user's config or data. Entry points print it without a traceback."""


class ConfigError(MTLError):
    pass


class DataError(MTLError):
    pass


class PredictError(MTLError):
    """A run folder, input file or option that cannot be used for prediction."""


class CheckpointError(PredictError):
    """A checkpoint that is missing, unreadable, or not written by mtl training."""


def first_rows(rows, limit: int = 5) -> str:
    """'3, 17, 20 (and 4 more)' for error messages."""
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" (and {len(rows) - limit} more)" if len(rows) > limit else "")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, for one-paragraph errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
