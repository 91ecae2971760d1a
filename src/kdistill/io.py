"""Atomic writes: write to a temporary sibling, fsync, rename, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mode(path: Path, base: int) -> int:
    """The permissions a replacement of ``path`` gets: the old file's, else what open() would give under the
    umask (a temporary file is 0600 and a temporary folder 0700, which would hide reports from the group)."""
    return path.stat().st_mode & 0o7777 if path.exists() else _under_umask(base)


def _under_umask(base: int) -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it; it is set back at once
    os.umask(mask)
    return base & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _mode(path, 0o666))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block completes.

    Every file inside is fsynced before the rename; an older ``path`` is moved aside and removed
    only after the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, _mode(path, 0o777))
        yield tmp
        # what the block wrote gets the modes a plain open() or mkdir() gives under the umask: some writers
        # (transformers' save_pretrained among them) write through private temporary files of mode 0600
        dir_mode, file_mode = _under_umask(0o777), _under_umask(0o666)
        for file in tmp.rglob("*"):
            os.chmod(file, dir_mode if file.is_dir() else file_mode)
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
