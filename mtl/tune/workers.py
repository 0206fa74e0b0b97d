"""Which workers of a study are alive: each holds an advisory `flock` on its own file in
`<study folder>/.workers/` for as long as it runs, and stamps its id on every trial it asks for.
A RUNNING trial whose worker's lock is free lost its worker (kill -9, a node that died, a SLURM
time limit): the kernel drops a lock with its process, on every host of a shared file system that
supports `flock` (Linux NFS v4 does).

The file is created already locked (locked under a temporary name, then renamed into place), so
a lock file at its final name is either held or dead, never "about to be locked"; a reaper may
delete the dead ones.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # no flock (Windows): workers cannot be told dead, trials are never reaped
    fcntl = None

FOLDER = ".workers"


class WorkerLock:
    """`with WorkerLock(study_dir) as worker_id:` — held until the block ends; the file goes with it."""

    def __init__(self, study_dir: Path):
        host = "".join(c if c.isalnum() else "_" for c in socket.gethostname().split(".")[0])
        self.id = f"{host}-{os.getpid()}-{secrets.token_hex(4)}"  # never a dead worker's id
        self.path = Path(study_dir) / FOLDER / f"{self.id}.lock"
        self._handle = None

    def __enter__(self) -> str:
        if fcntl is None:
            return self.id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.id}.tmp")
        handle = open(tmp, "w", encoding="utf-8")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: nobody else holds it
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n")
        handle.flush()
        os.rename(tmp, self.path)
        self._handle = handle
        return self.id

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self.path.unlink(missing_ok=True)  # while still held: no reaper sees it free
            self._handle.close()
            self._handle = None


def worker_alive(study_dir: Path, worker_id: str) -> bool:
    """Whether the worker that stamped `worker_id` still holds its lock. A missing file: it ended
    (a worker that ends cleanly has told the study about all its trials) or was reaped."""
    if fcntl is None:
        return True
    path = Path(study_dir) / FOLDER / f"{worker_id}.lock"
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        path.unlink(missing_ok=True)  # dead: its file goes (held by us, so nobody races it)
        return False
