"""Atomic writes: a file or folder appears under its final name only when complete.

A stage killed half-way leaves a ``.part`` behind, never a truncated output that DVC or a later stage would trust.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


def part_path(path: Path) -> Path:
    """``name.part`` beside ``path``."""
    return path.with_name(path.name + ".part")


@contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yields a ``.part`` path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(path)
    try:
        yield part
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yields an empty ``.part`` folder to fill; on success it replaces ``path`` (removed first), on error it goes."""
    path = Path(path)
    part = part_path(path)
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        yield part
        if path.exists():
            shutil.rmtree(path)
        os.replace(part, path)
    finally:
        shutil.rmtree(part, ignore_errors=True)


def write_text(path: Path | str, text: str) -> None:
    with atomic_file(path) as part:
        part.write_text(text)


def write_json(path: Path | str, data: Any) -> None:
    """Pretty, key-sorted JSON (small metrics files kept in git, so diffs stay readable)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path | str, frame: pd.DataFrame) -> None:
    with atomic_file(path) as part:
        frame.to_csv(part, index=False)
