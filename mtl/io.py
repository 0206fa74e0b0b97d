"""Atomic file writes: a crash never leaves a half-written file behind.

Files get the permissions of an ordinary new file (0666 less the umask), not the 0600 of a
temporary file, so a shared results folder stays readable. A temporary name carries its writer's
host and pid (`.<name>~<pid>@<host>~<random>.tmp`), so `remove_orphaned_tmp` can tell the leftover
of a killed writer from a write in progress in another process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from mtl.errors import MTLError, first_line

log = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"
_TMP_NAME = re.compile(r"^\..*~(\d+)@([A-Za-z0-9_-]+)~[^~]*(\.tmp)?$")
STALE_AFTER_S = 3600  # a temp file of another host (or of an older mtl) this old is an orphan

# The table files tasks are read from and predictions are written to: extension → format.
FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}


def tmp_prefix(name: str) -> str:
    return f".{name}~{os.getpid()}@{_HOST}~"


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (threads may race)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    return (0o777 if folder else 0o666) & ~umask()


# a full disk, an exhausted quota, a file size limit (ulimit -f)
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def no_room(err: BaseException | None) -> OSError | None:
    """The OSError in `err`'s chain that says there is no room to write, if any. torch.save
    reports a failed write as a RuntimeError whose context holds the file object's OSError."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_ROOM:
            return err
        err = err.__cause__ or err.__context__
    return None


def atomic_write(path: str | Path, write: Callable[[str], None], then: str = "") -> Path:
    """Call `write(tmp_path)`, then rename the temp file over `path` (same folder, same disk).

    No room to write (disk full, quota, file size limit) is an MTLError naming the file, ending
    with `then` (what a rerun does); the temp file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        full = no_room(err) if isinstance(err, Exception) else None
        if full is None:
            raise
        kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
        raise MTLError(
            f"No room to write {path}: {full.strerror or os.strerror(full.errno)} "
            f"({errno.errorcode.get(full.errno, full.errno)}). The partial file was removed and "
            f"{kept}. Free space on that disk (df -h {path.parent}) or write elsewhere, then "
            f"run the same command again{'; ' + then if then else '.'}"
        ) from None
    return path


def make_tmp_dir(final: Path) -> Path:
    """A temporary folder beside `final`, to fill and rename into place (umask permissions)."""
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(final.name), dir=final.parent))
    os.chmod(tmp, default_mode(folder=True))  # mkdtemp creates 0700
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphaned_tmp(folder: Path, only: str | None = None) -> list[Path]:
    """Delete temp files / folders in `folder` left by a writer that was killed mid-write.

    An orphan: its writer is this host and no longer running; or it belongs to another host (or
    has no writer in its name) and is older than STALE_AFTER_S. `only`: just the temp files of
    the file of that name (in a user's folder, where other hidden files are not ours). Returns
    what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        if not entry.name.startswith(f".{only}~" if only is not None else "."):
            continue
        match = _TMP_NAME.match(entry.name)
        legacy = entry.name.endswith(".tmp") or entry.name.startswith(".tokenizer.")
        if match is None and not legacy:
            continue
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:
            continue  # renamed into place meanwhile
        if match is not None and match.group(2) == _HOST:
            orphan = int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1)))
        else:
            orphan = age > STALE_AFTER_S
        if not orphan:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info(
            "removed %d temporary file(s) left by an interrupted write in %s", len(removed), folder
        )
    return removed


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_to_builtin) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def undecodable_at(path: Path, codec: str, err: UnicodeError) -> str:
    """Where a file stops being text in `codec`: its first bad byte, line and data row."""
    raw = Path(path).read_bytes()
    try:
        raw.decode(codec)
    except UnicodeDecodeError as exact:
        line = raw.count(b"\n", 0, exact.start) + 1
        byte = raw[exact.start : exact.start + 1].hex()
        return (
            f"byte 0x{byte} on line {line} (data row {line - 1}, 1-based, header not counted, "
            f"if no text spans lines) is not valid {codec}."
        )
    return f"{type(err).__name__}: {first_line(err)}."


def read_json_object(path: Path, required: str) -> tuple[dict | None, str]:
    """(the JSON object in `path`, "") if it holds one with a dict under `required`; else
    (None, what is wrong) for a one-paragraph error."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return None, f"{type(err).__name__}: {first_line(err)}"
    if isinstance(obj, dict) and isinstance(obj.get(required), dict):
        return obj, ""
    return None, f"it holds no '{required}' object"


def _to_builtin(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (large checkpoints, data files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
