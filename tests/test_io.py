"""Atomic writes: a replaced file or folder appears whole, with the permissions a plain write would give."""

from __future__ import annotations

import os

import pytest

from kdistill.io import atomic_dir, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_files_and_folders_get_the_umasks_permissions_not_the_temporary_ones(tmp_path, umask_022):
    atomic_write_text(tmp_path / "report.md", "# card\n")
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644  # mkstemp alone would leave 0600
    with atomic_dir(tmp_path / "student") as tmp:
        (tmp / "config.json").write_text("{}")
    assert (tmp_path / "student").stat().st_mode & 0o777 == 0o755  # mkdtemp alone would leave 0700


def test_a_replaced_file_keeps_its_permissions_and_a_failed_write_keeps_the_old_file(tmp_path, umask_022):
    path = tmp_path / "results.json"
    atomic_write_text(path, "old")
    path.chmod(0o600)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "half").write_text("half")
            raise RuntimeError("crash")
    assert not (tmp_path / "folder").exists() and not list(tmp_path.glob(".folder.*"))
