"""User-facing errors: one paragraph that names the file, row, key or value and the fix."""


class MTLError(Exception):
    """A mistake in the user's config or data. Entry points print it without a traceback."""


class ConfigError(MTLError):
    pass


class DataError(MTLError):
    pass


def first_rows(rows, limit: int = 5) -> str:
    """'3, 17, 20 (and 4 more)' for error messages."""
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" (and {len(rows) - limit} more)" if len(rows) > limit else "")
