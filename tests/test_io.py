"""Atomic writes: unique temporaries, the old output intact on failure, never a write into an existing inode."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cxrexplain.io import atomic_dir, atomic_file, write_json


def test_atomic_file_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_file(target) as part:
        part.write_text("half")
        raise RuntimeError("killed half-way")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # the temporary is gone


def test_atomic_file_never_writes_into_a_hard_linked_old_file(tmp_path: Path) -> None:
    # DVC links outputs into its cache as hard links: a write into the existing inode would change the cached object
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old")
    cache = tmp_path / "cache-object"
    os.link(target, cache)
    with atomic_file(target) as part:
        part.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert cache.read_bytes() == b"old"


def test_temporary_names_are_unique_per_writer(tmp_path: Path) -> None:
    # two writers of the same output used to share one fixed ".part" name
    target = tmp_path / "cache"
    seen: list[Path] = []
    barrier = threading.Barrier(2)

    def write(value: str) -> None:
        with atomic_dir(target) as tmp:
            seen.append(tmp)
            barrier.wait()  # both temporaries exist at the same time
            (tmp / "value.txt").write_text(value)
            barrier.wait()

    threads = [threading.Thread(target=write, args=(v,)) for v in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 2
    assert all(p.parent == tmp_path and p.name.startswith(".cache.") and p.name.endswith(".part") for p in seen)
    assert (target / "value.txt").read_text() in ("a", "b")  # one complete output, never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_atomic_dir_keeps_the_old_folder_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "explain"
    with atomic_dir(target) as tmp:
        (tmp / "a.csv").write_text("old a")
        (tmp / "b.csv").write_text("old b")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.csv").write_text("new a")
        raise RuntimeError("killed after one of two files")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.csv": "old a", "b.csv": "old b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explain"]
