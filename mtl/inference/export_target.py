"""Where an export goes: refuse folders the export did not make, and swap a new export in whole.

`check_target` runs before any work. An `--out` that does not exist or is empty is used; one that
holds an mtl export (its manifest.json lists every file there) is replaced; anything else is
refused unless `overwrite`. Never replaced, even with `overwrite`: the run folder itself, a folder
that holds it, a folder with a run inside (fingerprint.json, config.yaml, fold_<k>/, checkpoints),
and any folder of the run other than an export. `publish` moves the finished export into place
under a lock, so a failed or refused export leaves the previous one as it was.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from mtl.errors import PredictError
from mtl.io import make_tmp_dir, remove_orphaned_tmp

MANIFEST_FILE = "manifest.json"
SPEC_FILE = "predictor.json"
# files that make a folder part of a training run: what an export must never delete
RUN_FILES = ("fingerprint.json", "config.yaml", "tasks.json", "metrics.json", "results.json")
IGNORED = ("__pycache__",)  # written beside mtl_onnx.py when Python imports it from the folder


def listed_files(folder: Path) -> set[str] | None:
    """The files an mtl export's manifest lists (plus the manifest), or None: not an mtl export."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (
        isinstance(manifest, dict)
        and isinstance(manifest.get("files"), dict)
        and isinstance(manifest.get("sources"), list)
        and SPEC_FILE in manifest["files"]
    ):
        return None
    return set(manifest["files"]) | {MANIFEST_FILE}


def run_inside(folder: Path) -> Path | None:
    """The first file under `folder` (symbolic links not followed) that belongs to a training run."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in IGNORED]
        for name in files:
            if name in RUN_FILES or name.endswith(".ckpt"):
                return Path(root) / name
        for name in dirs:
            if name.startswith("fold_") and name.removeprefix("fold_").isdigit():
                return Path(root) / name
    return None


def unlisted(folder: Path, listed: set[str]) -> list[str]:
    """Files in `folder` that its manifest does not list: not written by the export."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in IGNORED]
        found += [(Path(root) / n).relative_to(folder).as_posix() for n in files]
    return sorted(set(found) - listed)


def check_target(out: Path, run_dir: Path, overwrite: bool) -> None:
    """Refuse an `out` the export must not replace (module docstring); a PredictError saying why."""
    here, run = out.resolve(), run_dir.resolve()
    advice = (
        f"Pick another --out (a new or empty folder), or leave it out for {run_dir / 'export'}."
    )
    if here == run or here in run.parents:
        what = "is the run folder" if here == run else f"holds the run folder {run_dir}"
        raise PredictError(f"--out {out} {what}; an export never replaces it. {advice}")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        kind = "a symbolic link" if out.is_symlink() else "a file"
        raise PredictError(f"--out {out} is {kind}, not a folder; nothing was written. {advice}")
    if not out.exists() or not any(out.iterdir()):
        return
    found = run_inside(out)
    if found is not None:
        raise PredictError(
            f"--out {out} holds a training run ({found}); an export never replaces it, not even "
            f"with --overwrite. {advice}"
        )
    listed = listed_files(out)
    extra = unlisted(out, listed) if listed is not None else []
    if listed is not None and (not extra or overwrite):
        return
    if listed is None and run in here.parents:
        raise PredictError(
            f"--out {out} is a folder of the run {run_dir} that is not an mtl export; an export "
            f"never replaces it, not even with --overwrite. {advice}"
        )
    if not overwrite:
        what = (
            f"holds an mtl export plus files it did not write ({', '.join(extra[:3])}"
            f"{', ...' if len(extra) > 3 else ''})"
            if listed is not None
            else f"is a folder that is not an mtl export (no {MANIFEST_FILE} listing its files)"
        )
        raise PredictError(
            f"--out {out} {what}; exporting there would delete what it holds, so nothing was "
            f"written. {advice} Or pass --overwrite to replace the folder and everything in it."
        )


def staging_folder(out: Path) -> Path:
    """An empty hidden folder beside `out` to build the export in; leftovers of killed exports to
    the same `out` are removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_tmp(out.parent, only=out.name)
    return make_tmp_dir(out)


@contextmanager
def folder_lock(folder: Path):
    """An advisory lock on `folder` itself (nothing left behind), released at exit or death."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def publish(staged: Path, out: Path) -> None:
    """Move the finished export `staged` to `out`, replacing what is there (checked before) by two
    renames under a lock: two exports to one folder take turns, and the old one returns if the
    second rename fails."""
    with folder_lock(out.parent):
        old = None
        if out.exists():
            old = make_tmp_dir(out)
            os.replace(out, old)  # onto the empty folder make_tmp_dir created
        try:
            os.replace(staged, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
