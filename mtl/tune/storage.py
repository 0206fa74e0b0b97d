"""Where a study lives: its folder (never one tune.py did not make) and its Optuna storage.

Storage: `<study folder>/study.db` (SQLite) by default, so a killed study keeps its finished
trials; any Optuna RDB URL (`postgresql://…`, `mysql+pymysql://…`, `sqlite:///…`) or a journal
file path (Optuna's JournalStorage, file backend) for many workers. `study.json` marks a study
folder and names its storage: a folder belongs to one storage, since its trial folders are that
study's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna

from mtl.errors import ConfigError, MTLError, first_line

STUDY_FILE = "study.json"  # marks a folder as a study folder (tune.py never writes into others)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_study_name(name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"Study name {name!r} must be one folder name: letters, digits, '_', '-' and '.', "
            "not starting with '.' and without '..' or '/' (the study is written to "
            "<run.output_dir>/<study>/). Pass another --study."
        )
    return name


def check_study_folder(study_dir: Path) -> None:
    """Never write into a folder tune.py did not make (an ordinary run folder, say)."""
    if study_dir.exists() and not study_dir.is_dir():
        raise ConfigError(f"{study_dir} exists and is not a folder; pass another --study.")
    if (study_dir / STUDY_FILE).is_file() or not study_dir.is_dir():
        return
    # a start that failed (a bad --storage, say) may have left the lock and the SQLite file
    if any(
        p.name != ".study.lock" and not p.name.startswith("study.db") for p in study_dir.iterdir()
    ):
        raise ConfigError(
            f"{study_dir} already holds files that tune.py did not write (no {STUDY_FILE}: a run "
            "folder?). Pass another --study; nothing was changed."
        )


def open_storage(spec: str | None, study_dir: Path):
    """None → SQLite in the study folder; 'x://…' → an RDB URL; anything else → a journal file."""
    try:
        if spec is None or "://" in spec:
            url = spec or f"sqlite:///{(study_dir / 'study.db').resolve()}"
            # several workers on one SQLite file wait for each other's writes instead of failing
            kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        from optuna.storages.journal import JournalFileBackend

        if Path(spec).is_dir():
            raise ValueError("it is a folder")
        check_journal_file(Path(spec))
        return optuna.storages.JournalStorage(JournalFileBackend(str(Path(spec).resolve())))
    except Exception as err:  # noqa: BLE001 - drivers raise their own types
        raise MTLError(
            f"Cannot open the study storage {spec or 'study.db'}: {first_line(err)}. Give an "
            "Optuna RDB URL (sqlite:///path/study.db, postgresql://user@host/db) or the path of "
            "a journal file (docs/tune.md)."
        ) from None


def check_journal_file(path: Path) -> None:
    """Optuna appends to the journal: a file that is something else (a config, a data file given
    by mistake) must not be touched. A journal's lines are JSON objects with an `op_code`."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    try:
        ok = "op_code" in json.loads(first)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"{path} exists and is not an Optuna journal file; it was not changed")


def storage_name(spec: str | None) -> str:
    """How study.json records the storage: the default file, a URL without its password, or a
    journal file's absolute path."""
    if spec is None:
        return "study.db"
    if "://" in spec:
        from sqlalchemy.engine import make_url

        try:
            return make_url(spec).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - open_storage reports a bad URL
            return spec
    return str(Path(spec).resolve())


def check_same_storage(study_dir: Path, shown: str) -> None:
    """A study folder belongs to one storage: another would start trial_0 again over its folders."""
    record = study_dir / STUDY_FILE
    if not record.is_file():
        return
    try:
        before = json.loads(record.read_text(encoding="utf-8")).get("storage")
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(
            f"{record} cannot be read ({first_line(err)}): it names the storage of the study in "
            f'{study_dir}. Write it again as {{"storage": "study.db"}} (or the --storage '
            "the study used); the trials themselves are in the storage."
        ) from None
    if before != shown:
        flag = "no --storage" if before == "study.db" else f"--storage {before}"
        raise ConfigError(
            f"Study folder {study_dir} belongs to the storage {before!r} ({record}), not "
            f"{shown!r}: its trial folders are that study's. Rerun with {flag}, or pass "
            "another --study."
        )
