"""A fresh copy of the working tree as its own git repository, for whole-pipeline runs (``dvc repro`` needs a git
repository) that must not touch this one: used by ``bench_papers_profile.py`` and ``tests/test_pipeline.py``. Not a
benchmark itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_OUTPUTS = ("reports/", "metrics/")  # the committed demo's results: a copy's checks read its own new ones


def snapshot(dest: Path, *, leave_out: tuple[str, ...] = DEMO_OUTPUTS, root: Path = ROOT) -> None:
    """Copy ``root``'s files (tracked and new, not ignored; paths starting with one of ``leave_out`` left out) into
    ``dest`` and commit them there as a new git repository's first commit."""
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, names):
        if name.startswith(leave_out) or not (root / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, dest / name)
    git = ["git", "-c", "user.name=snapshot", "-c", "user.email=snapshot@localhost"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *command], cwd=dest, check=True, capture_output=True)
