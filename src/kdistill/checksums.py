"""Verified folders and files: what kdistill reads back is checked against what it wrote, before it is used.

A checkpoint step and a saved student record the size and sha256 of every file in `checksums.json`, written
last inside the atomic folder; `damage(folder)` re-reads every byte and names the first file that differs,
so a flipped bit, a file truncated by a full disk or a file deleted by hand is found before it is loaded.
`read_json` reads a small record (a training record, a run's results) with one clear error for a damaged
one, where a bare JSONDecodeError would otherwise end the run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kdistill.errors import KdistillError
from kdistill.io import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"
FORMAT = "kdistill-checksums/1"


def write_checksums(folder: str | Path) -> None:
    """Record every file under ``folder`` (call it last, inside the atomic folder that becomes the result)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    atomic_write_json(folder / CHECKSUMS, {"format": FORMAT, "files": {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}})


def damage(folder: str | Path) -> str | None:
    """None if every file `checksums.json` lists is there with its size and sha256; else what is wrong, naming
    the first bad file (a missing or unreadable `checksums.json` means the folder is incomplete)."""
    folder = Path(folder)
    try:
        record = json.loads((folder / CHECKSUMS).read_text(encoding="utf-8"))
        files = record["files"] if record.get("format") == FORMAT else None
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        files = None
    if not isinstance(files, dict):
        return f"{folder / CHECKSUMS} is missing or damaged (the folder was not written completely)"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{path} has {size} bytes where {expected.get('bytes')} were written (truncated or overwritten)"
        if sha256_file(path) != expected.get("sha256"):
            return f"{path} fails its sha256 check (the file is damaged)"
    return None


def read_json(path: str | Path, fix: str) -> Any:
    """A JSON file kdistill wrote, or a KdistillError naming it and ``fix`` if it is missing or damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KdistillError(f"{path} is missing; {fix}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise KdistillError(f"{path} is damaged (not valid JSON: {err}); {fix}") from None


def verify_student(folder: str | Path) -> None:
    """A saved student's files against its checksums, before it is loaded (evaluated, exported, predicted with,
    or started from); a KdistillError naming the damaged file."""
    problem = student_damage(folder)
    if problem is not None:
        raise KdistillError(f"{problem}; the student is not used: train it again (`kdistill run --resume` does) "
                            "or put an intact copy there.")


def student_damage(folder: str | Path) -> str | None:
    """What is wrong with a saved student's files, or None. A student saved before kdistill wrote checksums
    (its kdistill.json does not name them) passes, with a warning: it cannot be checked."""
    folder = Path(folder)
    if (folder / CHECKSUMS).exists():
        return damage(folder)
    try:
        meta = read_json(folder / "kdistill.json", "")
    except KdistillError as err:
        return str(err).rstrip("; ")
    if isinstance(meta, dict) and meta.get("checksums") == CHECKSUMS:
        return f"{folder / CHECKSUMS} is missing"
    log.warning("%s was saved by an earlier kdistill, without checksums: it is loaded without being verified", folder)
    return None
