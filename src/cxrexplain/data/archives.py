"""Which archive holds which image, read from the tarballs' own headers, and worker pools that die with their parent.

NIH cuts the sorted image names into 12 archives, but a metadata CSV with one row more or less (or any subset of the
index) does not tell which archive holds an image; the archives' headers do. :func:`scan_archives` reads every
archive once as a gzip stream and lists its regular members (a tar header per member; the member's bytes are read
past, never written anywhere). The ``download`` stage stores the result as ``archive_index.csv`` beside the archives
(:func:`write_index`), one row per member::

    archive,bytes,mtime_ns,image,member
    images_001.tar.gz,2065536041,1506297600000000000,00000001_000.png,images/00000001_000.png

``bytes`` and ``mtime_ns`` are the archive file's size and modification time when it was scanned: the index is
*current* only while every archive present has the same size and time and no archive came or went
(:func:`read_index`). An archive without a regular member still has one row, with empty ``image`` and ``member``.
``image`` is the member's base name (``images/x.png`` and ``x.png`` both hold ``x.png``); when two members share one,
the first in archive order wins. :func:`archive_members` uses the file when it is current and otherwise scans in
memory without writing anything (``data/raw`` is the ``download`` stage's output, not ``sample``'s).

Tar members are only ever read by name into memory (``extractfile``), never extracted to a path, so a member named
``../../x`` cannot write outside anything.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import tarfile
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from cxrexplain.data import layout
from cxrexplain.errors import CxrError
from cxrexplain.io import write_csv

log = logging.getLogger("cxrexplain.archives")

INDEX_FILE = "archive_index.csv"
INDEX_COLUMNS = ("archive", "bytes", "mtime_ns", "image", "member")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# ----------------------------------------------------------------------------------------------------------------------
# Worker pools that do not outlive their parent


_parent: int | None = None  # in a pool worker: the process that started it


def die_with_parent(parent: int) -> None:
    """In a worker process: be killed as soon as process ``parent`` dies.

    On Linux the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``), which also ends a worker
    that is blocked waiting for its next task. A parent that died before this call is caught by ``os.getppid()`` (the
    worker was re-parented); long loops also call :func:`exit_if_orphaned`, the only check on other systems. (Linux
    strictly signals the death of the parent *thread* that forked the worker: :func:`worker_pool`'s pools are
    started and shut down by one thread, which outlives its workers.)
    """
    global _parent
    _parent = parent
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    exit_if_orphaned()


def exit_if_orphaned() -> None:
    """In a pool worker whose parent has died: exit at once (its work goes nowhere). Elsewhere: nothing."""
    if _parent is not None and os.getppid() != _parent:
        os._exit(1)


def worker_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A fork-based pool of ``max(1, workers)`` processes that die with this process (see :func:`die_with_parent`)."""
    return ProcessPoolExecutor(
        max_workers=max(1, workers),
        mp_context=get_context("fork"),
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


def _start_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


# ----------------------------------------------------------------------------------------------------------------------
# Scanning headers


def image_of(member: str) -> str:
    """The image name a member holds: its base name (``images/00000001_000.png`` → ``00000001_000.png``)."""
    return PurePosixPath(member).name


def scan_archive(path: Path) -> list[tuple[str, str]]:
    """``(image, member)`` of every regular member of one ``.tar.gz``, in archive order (one streaming pass).

    A truncated or corrupt archive is a :class:`CxrError` naming it: an index must not silently miss half an archive.
    """
    found: list[tuple[str, str]] = []
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                exit_if_orphaned()
                if member.isfile():
                    found.append((image_of(member.name), member.name))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise CxrError(
            f"{path}: unreadable archive after {len(found)} members ({type(error).__name__}: {error}); "
            "delete it and run the download stage again (dvc repro download)"
        ) from None
    return found


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _stamps(archives: list[Path]) -> dict[str, tuple[int, int]]:
    return {a.name: _stamp(a) for a in archives}


def _present(raw_dir: Path) -> list[Path]:
    return [raw_dir / name for name in layout.ARCHIVE_NAMES if (raw_dir / name).is_file()]


def scan_archives(raw_dir: Path, *, workers: int = 1) -> pd.DataFrame:
    """The index (:data:`INDEX_COLUMNS`) of the archives present in ``raw_dir``, read from their headers.

    Archives are scanned in parallel, ``workers`` at a time (0 or 1: in this process).
    """
    archives = _present(Path(raw_dir))
    before = _stamps(archives)
    if workers > 1 and len(archives) > 1:
        with worker_pool(min(workers, len(archives))) as pool:
            members = list(pool.map(scan_archive, archives))
    else:
        members = [scan_archive(a) for a in archives]
    rows = []
    if _stamps(archives) != before:
        raise CxrError(f"{raw_dir}: an archive changed while it was being scanned; run again when nothing writes there")
    rows = []
    for archive, found in zip(archives, members, strict=True):
        stamp = before[archive.name]
        rows += [(archive.name, *stamp, image, member) for image, member in found] or [(archive.name, *stamp, "", "")]
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS))


def read_index(raw_dir: Path) -> pd.DataFrame | None:
    """``archive_index.csv`` when it exists and is current for the archives in ``raw_dir``; else None (says why)."""
    raw_dir = Path(raw_dir)
    path = raw_dir / INDEX_FILE
    try:
        index = pd.read_csv(path, dtype={"archive": str, "image": str, "member": str}, keep_default_na=False)
    except FileNotFoundError:
        return None
    except (ValueError, pd.errors.ParserError) as error:
        log.warning("%s: unreadable (%s); scanning the archives instead", path, error)
        return None
    if tuple(index.columns) != INDEX_COLUMNS:
        log.warning(
            "%s: columns %s, expected %s; scanning the archives instead", path, list(index.columns), INDEX_COLUMNS
        )
        return None
    recorded = {
        str(a): (int(b), int(m)) for a, b, m in index[["archive", "bytes", "mtime_ns"]].drop_duplicates().to_numpy()
    }
    now = _stamps(_present(raw_dir))
    if recorded != now:
        changed = sorted(set(recorded) ^ set(now) | {a for a in set(recorded) & set(now) if recorded[a] != now[a]})
        log.info("%s is not current (%s changed since it was written)", path, ", ".join(changed))
        return None
    return index


def write_index(raw_dir: Path, *, workers: int = 1) -> Path:
    """Write ``archive_index.csv`` into ``raw_dir`` (atomically) unless a current one is there; returns its path."""
    raw_dir = Path(raw_dir)
    if read_index(raw_dir) is None:
        write_csv(raw_dir / INDEX_FILE, scan_archives(raw_dir, workers=workers))
        log.info("indexed the members of the archives in %s", raw_dir / INDEX_FILE)
    return raw_dir / INDEX_FILE


def archive_members(raw_dir: Path, *, workers: int = 1) -> dict[str, str]:
    """Image name → the archive that holds it, from ``archive_index.csv`` when current, else scanned in memory."""
    index = read_index(raw_dir)
    if index is None:
        log.warning(
            "%s: no current %s; reading the archives' headers (one pass over every archive; the download stage "
            "writes the index: cxrexplain download)",
            raw_dir,
            INDEX_FILE,
        )
        index = scan_archives(raw_dir, workers=workers)
    return locations(index)


def locations(index: pd.DataFrame) -> dict[str, str]:
    """Image → archive of an index frame: the first holder in archive order wins, empty rows are skipped."""
    out: dict[str, str] = {}
    for archive, image in index[["archive", "image"]].itertuples(index=False):
        if image and image not in out:
            out[image] = archive
    return out
