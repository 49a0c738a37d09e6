"""Atomic writes: a file or folder appears under its final name only when complete.

Every write goes to a uniquely named temporary sibling (``.<name>.<random>.part``, on the same file system, so the
final ``os.replace`` is a rename): two processes writing the same output never share a temporary, and a stage killed
half-way leaves a ``.part`` behind, never a truncated output that DVC or a later stage would trust. Writing a fresh
file and renaming it also never writes *into* an existing file, so a hard link from DVC's cache to the old output is
left untouched.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

PART_SUFFIX = ".part"


def _temporary_name(path: Path) -> Path:
    """A new, unique, not yet existing name beside ``path`` (reserved by creating and removing a file)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PART_SUFFIX, dir=path.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


@contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yields a unique temporary path beside ``path`` to write; on success it replaces ``path``, on error it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = _temporary_name(path)
    try:
        yield part
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


@contextmanager
def scratch_dir(path: Path | str) -> Iterator[Path]:
    """A new, empty, uniquely named folder beside ``path`` (``.<name>.<random>.part``), removed when the block ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=PART_SUFFIX, dir=path.parent))
    try:
        yield part
    finally:
        shutil.rmtree(part, ignore_errors=True)


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yields an empty, uniquely named temporary folder beside ``path``; on success it replaces ``path``.

    The old folder is first renamed aside and removed only after the new one is in place, so at every instant
    ``path`` is either the complete old folder, absent for the time of one rename, or the complete new one.
    """
    path = Path(path)
    aside: list[Path] = []
    try:
        with scratch_dir(path) as part:  # after the rename below there is nothing left for it to remove
            yield part
            while True:  # another writer may put its folder in place between our two renames: move it aside too
                if path.exists():
                    aside.append(_temporary_name(path))
                    os.replace(path, aside[-1])
                try:
                    os.replace(part, path)
                    break
                except OSError as error:
                    if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
    finally:
        for old in aside:
            shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path | str, text: str) -> None:
    with atomic_file(path) as part:
        part.write_text(text)


def write_json(path: Path | str, data: Any) -> None:
    """Pretty, key-sorted JSON (small metrics files kept in git, so diffs stay readable)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path | str, frame: pd.DataFrame) -> None:
    with atomic_file(path) as part:
        frame.to_csv(part, index=False)
