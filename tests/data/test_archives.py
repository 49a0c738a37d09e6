"""Archive membership from the tarballs' headers, the index file beside them, and when it is trusted."""

import io
import os
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from cxrexplain.data import archives, layout
from cxrexplain.errors import CxrError


def write_tar(path: Path, members: list[str], directory: str | None = "images") -> None:
    with tarfile.open(path, "w:gz") as tar:
        if directory:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name in members:
            data = name.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def raw(tmp_path) -> Path:
    """Three archives that do not follow the sorted-and-cut layout: positions say nothing about membership."""
    raw = tmp_path / "raw"
    raw.mkdir()
    write_tar(raw / "images_001.tar.gz", ["images/00000009_000.png", "images/00000001_000.png"])
    write_tar(raw / "images_002.tar.gz", ["images/00000002_000.png", "other/00000005_001.png"])
    write_tar(raw / "images_003.tar.gz", ["images/00000003_000.png", "images/00000001_000.png"])  # a duplicate
    return raw


EXPECTED = {
    "00000009_000.png": "images_001.tar.gz",
    "00000001_000.png": "images_001.tar.gz",  # also in images_003: the first archive wins
    "00000002_000.png": "images_002.tar.gz",
    "00000005_001.png": "images_002.tar.gz",
    "00000003_000.png": "images_003.tar.gz",
}


def test_membership_comes_from_the_headers(raw):
    index = archives.scan_archives(raw)
    assert tuple(index.columns) == archives.INDEX_COLUMNS
    assert archives.locations(index) == EXPECTED
    assert layout.assign_archives(list(EXPECTED)) != EXPECTED  # what the positional rule would have said
    row = index.iloc[0]
    stat = (raw / "images_001.tar.gz").stat()
    assert (row["archive"], row["bytes"], row["mtime_ns"]) == ("images_001.tar.gz", stat.st_size, stat.st_mtime_ns)
    assert row["member"] == "images/00000009_000.png" and row["image"] == "00000009_000.png"
    assert len(index) == 6  # one row per regular member, the directory entries left out


def test_parallel_scan_gives_the_same_index(raw):
    pd.testing.assert_frame_equal(archives.scan_archives(raw, workers=2), archives.scan_archives(raw, workers=1))


def test_index_file_is_written_once_and_used_while_current(raw, monkeypatch):
    path = archives.write_index(raw)
    assert path == raw / archives.INDEX_FILE
    stamp = path.stat().st_mtime_ns
    assert archives.write_index(raw) == path and path.stat().st_mtime_ns == stamp  # current: not rewritten
    pd.testing.assert_frame_equal(archives.read_index(raw), archives.scan_archives(raw))

    def no_scan(*args, **kwargs):
        raise AssertionError("scanned although the index is current")

    monkeypatch.setattr(archives, "scan_archives", no_scan)
    assert archives.archive_members(raw) == EXPECTED


@pytest.mark.parametrize("change", ["touched", "rewritten", "added", "removed"])
def test_a_stale_index_is_ignored_and_left_as_it_is(raw, change):
    archives.write_index(raw)
    before = (raw / archives.INDEX_FILE).read_bytes()
    expected = dict(EXPECTED)
    if change == "touched":
        os.utime(raw / "images_002.tar.gz", ns=(1_000_000_000, 1_000_000_000))
    elif change == "rewritten":
        write_tar(raw / "images_002.tar.gz", ["images/00000002_000.png", "images/00000004_000.png"])
        expected.pop("00000005_001.png")
        expected["00000004_000.png"] = "images_002.tar.gz"
    elif change == "added":
        write_tar(raw / "images_012.tar.gz", ["images/00000012_000.png"])
        expected["00000012_000.png"] = "images_012.tar.gz"
    else:
        (raw / "images_003.tar.gz").unlink()
        expected.pop("00000003_000.png")
    assert archives.read_index(raw) is None
    assert archives.archive_members(raw) == expected  # scanned in memory ...
    assert (raw / archives.INDEX_FILE).read_bytes() == before  # ... without writing into data/raw


def test_an_archive_without_images_is_still_recorded(raw):
    write_tar(raw / "images_004.tar.gz", [])
    archives.write_index(raw)
    index = archives.read_index(raw)
    assert index is not None  # the empty archive's size and time are on record, so the index is current
    assert index.loc[index["archive"] == "images_004.tar.gz", "image"].tolist() == [""]
    assert archives.locations(index) == EXPECTED


def test_an_unreadable_index_file_is_rescanned(raw):
    (raw / archives.INDEX_FILE).write_text("not,an,index\n1,2,3\n")
    assert archives.read_index(raw) is None
    assert archives.archive_members(raw) == EXPECTED


def test_a_truncated_archive_is_an_error_naming_it(raw):
    data = (raw / "images_002.tar.gz").read_bytes()
    (raw / "images_002.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CxrError, match=r"images_002\.tar\.gz: unreadable archive"):
        archives.scan_archives(raw)
