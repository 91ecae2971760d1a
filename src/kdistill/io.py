"""Atomic writes: write to a temporary sibling, fsync, rename, so a crash never leaves half a file.

A write that fails (a full disk, a file-size limit, no permission) removes its temporary file and raises an
OSError that names the file and carries the errno, whatever library did the writing: torch and safetensors
report such failures as their own exceptions, without the path.
"""

from __future__ import annotations

import errno
import json
import os
import re
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
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        _raise_as_os_error(err, path, Path(tmp))
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
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_as_os_error(err, path, tmp)
        raise


def remove_partial(folder: str | Path) -> list[Path]:
    """Remove what killed atomic writes left in ``folder``: `.<name>.<random>.tmp` files and folders, and the
    `.<name>.old` a replaced folder is moved to for a moment. Returns what was removed. Only for folders that
    one run alone writes (a writer in progress elsewhere would lose its temporary file)."""
    folder = Path(folder)
    removed = [*folder.glob(".*.tmp"), *folder.glob(".*.old")]
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def save_torch(obj: Any, path: str | Path) -> None:
    """torch.save into ``path`` (inside an atomic folder). torch turns a failed write into a RuntimeError
    ("unexpected pos ..."); writing through `_WholeWrites` keeps the OSError, which is raised instead."""
    import torch

    with open(path, "wb") as f:
        writer = _WholeWrites(f)
        try:
            torch.save(obj, writer)
        except Exception as err:
            if writer.error is not None:
                raise OSError(writer.error.errno, writer.error.strerror, str(path)) from err
            raise


class _WholeWrites:
    """A file's write() that writes every byte or raises (a short write is the first sign of a full disk)."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.f.fileno(), view):]
        except OSError as err:
            self.error = err
            raise
        return len(data)

    def flush(self) -> None:
        pass


def _raise_as_os_error(err: BaseException, path: Path, tmp: Path | None = None) -> None:
    """Re-raise a failed write as an OSError that names a path: an OSError without a file name gets
    ``path``, one inside the temporary folder ``tmp`` the file it was to become; a library's error that
    carries an OS error number ("... (os error 28)") becomes that error."""
    if isinstance(err, OSError) and err.errno is not None:
        named = str(err.filename) if err.filename is not None else None
        if named is None or (tmp is not None and named.startswith(str(tmp))):
            final = str(path) if named is None else str(path) + named[len(str(tmp)):]
            raise OSError(err.errno, err.strerror, final) from err
        return
    match = re.search(r"os error (\d+)", str(err))
    if match and not isinstance(err, OSError):
        number = int(match.group(1))
        raise OSError(number, os.strerror(number), str(path)) from err
    if isinstance(err, RuntimeError) and "unexpected pos" in str(err):  # torch.save by path, disk full
        raise OSError(errno.EIO, "writing failed (is the disk full?)", str(path)) from err


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
