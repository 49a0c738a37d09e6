"""The downloader against a real threaded HTTP server on 127.0.0.1 with fault injection, and a local mirror."""

from __future__ import annotations

import hashlib
import io
import logging
import random
import socket
import tarfile
import time
from functools import partial
from pathlib import Path

import pytest
from rich.progress import Progress

from cxrexplain.config import RetryParams, validate
from cxrexplain.data import layout
from cxrexplain.data.download import (
    RemoteFile,
    fetch,
    fetch_all,
    md5_file,
    resolve_sources,
    retry_delay,
)
from cxrexplain.errors import CxrError
from httpmirror import FakeMirror

FAST = RetryParams(attempts=3, backoff_s=0.01, timeout_s=5.0)
# what a dead NIH Box shared link answers, with HTTP 200
DEAD_LINK_PAGE = b"<!DOCTYPE html>\n<html><head><title>Box | Shared link unavailable</title></head><body>" + b" " * 600


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _tar_gz(seed: int, members: int = 3, size: int = 100_000) -> bytes:
    """A real (incompressible, hence ~``members * size`` bytes) ``.tar.gz`` holding ``images/<i>.png`` members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(members):
            payload = _random_bytes(size, seed * 100 + i)
            info = tarfile.TarInfo(f"images/{i:08d}_000.png")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------------------------------------------------
# 1. full downloads


def test_fetch_all_downloads_and_verifies_several_files(server: FakeMirror, tmp_path: Path) -> None:
    server.files = {
        "images_001.tar.gz": _tar_gz(1),
        "images_002.tar.gz": _tar_gz(2),
        "Data_Entry_2017_v2020.csv": _random_bytes(250_000, 3),
    }
    files = [server.remote(name) for name in server.files]
    dest = tmp_path / "raw"

    paths = fetch_all(files, dest, retry=FAST, show_progress=True)

    assert paths == [dest / f.name for f in files]
    for path, f in zip(paths, files, strict=True):
        assert path.read_bytes() == server.files[f.name]
        assert md5_file(path) == f.md5
    assert _listing(dest) == sorted(server.files)  # no .part left behind
    assert [r.name for r in server.requests] == list(server.files)  # one request each, in order
    assert all("Range" not in r.headers and r.status == 200 for r in server.requests)
    with tarfile.open(paths[0]) as tar:  # the archive is usable as such
        assert tar.getnames() == [f"images/{i:08d}_000.png" for i in range(3)]


def test_md5_file_matches_hashlib_for_any_chunk_size(tmp_path: Path) -> None:
    data = _random_bytes(300_001, 9)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert md5_file(path) == md5_file(path, chunk=7) == _md5(data)


def test_bytes_are_kept_raw_when_server_labels_gzip(server: FakeMirror, tmp_path: Path) -> None:
    """A .tar.gz served with Content-Encoding: gzip must land as served, not gunzipped into a .tar."""
    server.files = {"images_003.tar.gz": _tar_gz(4)}
    server.gzip_label = True
    path = fetch(server.remote("images_003.tar.gz"), tmp_path, retry=FAST)
    assert path.read_bytes() == server.files["images_003.tar.gz"]
    assert server.requests[0].headers.get("Accept-Encoding") == "identity"


def test_unknown_md5_is_downloaded_without_verification(server: FakeMirror, tmp_path: Path) -> None:
    server.files = {"test_list.txt": b"00000001_000.png\n00000002_000.png\n"}
    path = fetch(server.remote("test_list.txt", md5=False), tmp_path, retry=FAST)
    assert path.read_bytes() == server.files["test_list.txt"]
    assert _listing(tmp_path) == ["test_list.txt"]


# --------------------------------------------------------------------------------------------------------------------
# 2-4. resuming


def test_resumes_after_connection_cut_mid_file(server: FakeMirror, tmp_path: Path, caplog) -> None:
    data = _random_bytes(600_000, 5)
    cut = 123_457
    server.files = {"images_004.tar.gz": data}
    server.cut_after = {"images_004.tar.gz": cut}
    progress = Progress(disable=True)

    with caplog.at_level(logging.WARNING, logger="cxrexplain.download"):
        path = fetch(server.remote("images_004.tar.gz"), tmp_path, retry=FAST, progress=progress)

    assert path.read_bytes() == data
    assert md5_file(path) == _md5(data)
    assert server.ranges("images_004.tar.gz") == [None, f"bytes={cut}-"]
    assert [(r.status, r.sent) for r in server.requests] == [(200, cut), (206, len(data) - cut)]
    assert _listing(tmp_path) == ["images_004.tar.gz"]
    assert any("images_004.tar.gz" in r.getMessage() and "attempt 1/3" in r.getMessage() for r in caplog.records)
    (task,) = progress.tasks
    assert (task.total, task.completed) == (len(data), len(data))


def test_resumes_existing_partial_file_instead_of_restarting(server: FakeMirror, tmp_path: Path) -> None:
    data = _random_bytes(400_000, 6)
    have = 150_000
    server.files = {"images_005.tar.gz": data}
    (tmp_path / "images_005.tar.gz.part").write_bytes(data[:have])  # left by an interrupted earlier run

    path = fetch(server.remote("images_005.tar.gz"), tmp_path, retry=FAST)

    assert path.read_bytes() == data
    assert server.ranges("images_005.tar.gz") == [f"bytes={have}-"]
    assert [(r.status, r.sent) for r in server.requests] == [(206, len(data) - have)]  # only the missing tail
    assert _listing(tmp_path) == ["images_005.tar.gz"]


def test_server_ignoring_range_restarts_from_zero(server: FakeMirror, tmp_path: Path) -> None:
    data = _random_bytes(300_000, 7)
    server.files = {"images_006.tar.gz": data}
    server.ignore_range = True
    # A .part whose bytes are NOT a prefix of the file: appending the 200 body to it would fail the MD5.
    (tmp_path / "images_006.tar.gz.part").write_bytes(b"\x00" * 50_000)

    path = fetch(server.remote("images_006.tar.gz"), tmp_path, retry=FAST)

    assert path.read_bytes() == data
    assert server.ranges("images_006.tar.gz") == ["bytes=50000-"]
    assert [(r.status, r.sent) for r in server.requests] == [(200, len(data))]
    assert _listing(tmp_path) == ["images_006.tar.gz"]


def test_cut_transfer_on_server_ignoring_range_still_completes(server: FakeMirror, tmp_path: Path) -> None:
    data = _random_bytes(300_000, 8)
    server.files = {"f.bin": data}
    server.ignore_range = True
    server.cut_after = {"f.bin": 100_000}
    path = fetch(server.remote("f.bin"), tmp_path, retry=FAST)
    assert path.read_bytes() == data
    assert server.ranges("f.bin") == [None, "bytes=100000-"]
    assert [r.status for r in server.requests] == [200, 200]


def test_complete_part_answered_416_is_verified_and_renamed(server: FakeMirror, tmp_path: Path) -> None:
    data = _random_bytes(200_000, 10)
    server.files = {"images_007.tar.gz": data}
    (tmp_path / "images_007.tar.gz.part").write_bytes(data)

    path = fetch(server.remote("images_007.tar.gz"), tmp_path, retry=FAST)

    assert path.read_bytes() == data
    assert [(r.status, r.headers.get("Range")) for r in server.requests] == [(416, f"bytes={len(data)}-")]
    assert _listing(tmp_path) == ["images_007.tar.gz"]


def test_oversized_part_answered_416_fails_md5_and_is_deleted(server: FakeMirror, tmp_path: Path) -> None:
    data = _random_bytes(200_000, 11)
    server.files = {"images_008.tar.gz": data}
    (tmp_path / "images_008.tar.gz.part").write_bytes(data + b"junk")

    with pytest.raises(CxrError, match="MD5"):
        fetch(server.remote("images_008.tar.gz"), tmp_path, retry=FAST)
    assert _listing(tmp_path) == []
    # the next run starts from zero and succeeds
    assert fetch(server.remote("images_008.tar.gz"), tmp_path, retry=FAST).read_bytes() == data


# --------------------------------------------------------------------------------------------------------------------
# 5-7. errors


def test_corrupted_byte_raises_md5_error_and_leaves_nothing(server: FakeMirror, tmp_path: Path) -> None:
    data = _random_bytes(250_000, 12)
    server.files = {"images_009.tar.gz": data}
    server.corrupt = {"images_009.tar.gz"}
    remote = server.remote("images_009.tar.gz")

    with pytest.raises(CxrError) as info:
        fetch(remote, tmp_path, retry=FAST)

    message = str(info.value)
    assert "images_009.tar.gz" in message and "MD5" in message
    assert remote.md5 is not None and remote.md5 in message  # expected
    assert _md5(data[:125_000] + bytes([data[125_000] ^ 0xFF]) + data[125_001:]) in message  # actual
    assert "re-run" in message.lower() and "mirror" in message
    assert _listing(tmp_path) == []  # neither the final name nor a .part
    assert len(server.requests) == 1  # a checksum mismatch is not retried in a loop


def test_404_raises_with_file_status_and_mirror_advice(server: FakeMirror, tmp_path: Path) -> None:
    remote = RemoteFile("images_010.tar.gz", server.url("images_010.tar.gz"), "0" * 32)

    with pytest.raises(CxrError) as info:
        fetch(remote, tmp_path, retry=FAST)

    message = str(info.value)
    assert "images_010.tar.gz" in message and "404" in message and "mirror" in message
    assert remote.url in message and "synthetic" in message
    assert len(server.requests) == 1  # a 4xx is not retried
    assert _listing(tmp_path) == []


def test_no_network_raises_after_all_attempts(tmp_path: Path, caplog) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    remote = RemoteFile("images_011.tar.gz", f"http://127.0.0.1:{port}/images_011.tar.gz", None)

    with caplog.at_level(logging.WARNING, logger="cxrexplain.download"), pytest.raises(CxrError) as info:
        fetch(remote, tmp_path, retry=FAST)

    message = str(info.value)
    assert "network" in message and "images_011.tar.gz" in message and remote.url in message
    assert f"after {FAST.attempts} attempts" in message and "mirror" in message
    retries = [r for r in caplog.records if r.name == "cxrexplain.download" and "retrying" in r.getMessage()]
    assert len(retries) == FAST.attempts - 1
    assert [f"attempt {k}/{FAST.attempts}" in r.getMessage() for k, r in enumerate(retries, start=1)] == [True] * 2
    assert _listing(tmp_path) == []


def test_persistent_503_gives_up_after_attempts(server: FakeMirror, tmp_path: Path) -> None:
    server.files = {"x.bin": b"x"}

    class Always503(set[str]):
        def discard(self, name: str) -> None:  # never forget: every request fails
            pass

    server.fail_503_once = Always503({"x.bin"})
    with pytest.raises(CxrError, match=r"x\.bin.*after 3 attempts.*HTTP 503"):
        fetch(server.remote("x.bin"), tmp_path, retry=FAST)
    assert len(server.requests) == FAST.attempts
    assert _listing(tmp_path) == []


# --------------------------------------------------------------------------------------------------------------------
# 8-9. skipping, replacing corrupt files, retrying 5xx


def test_present_and_verified_file_is_skipped_without_requests(server: FakeMirror, tmp_path: Path) -> None:
    data = _random_bytes(200_000, 13)
    server.files = {"images_012.tar.gz": data}
    (tmp_path / "images_012.tar.gz").write_bytes(data)
    progress = Progress(disable=True)

    path = fetch(server.remote("images_012.tar.gz"), tmp_path, retry=FAST, progress=progress)

    assert path == tmp_path / "images_012.tar.gz" and path.read_bytes() == data
    assert server.requests == []
    assert progress.tasks[0].completed == len(data)
    # md5 unknown and present: also skipped, whatever the content
    (tmp_path / "notes.txt").write_bytes(b"mine")
    assert fetch(RemoteFile("notes.txt", server.url("notes.txt"), None), tmp_path).read_bytes() == b"mine"
    assert server.requests == []


def test_present_but_corrupt_file_is_kept_until_its_replacement_verifies(
    server: FakeMirror, tmp_path: Path, caplog
) -> None:
    data = _random_bytes(200_000, 14)
    stale = data[:-1] + b"?"
    server.files = {"images_001.tar.gz": data}
    remote = server.remote("images_001.tar.gz")
    (tmp_path / "images_001.tar.gz").write_bytes(stale)
    server.corrupt = {"images_001.tar.gz"}  # the first re-download is bad too: the old file stays as it was

    with pytest.raises(CxrError, match="MD5 mismatch"):
        fetch(remote, tmp_path, retry=FAST)
    assert (tmp_path / "images_001.tar.gz").read_bytes() == stale
    assert _listing(tmp_path) == ["images_001.tar.gz"]

    server.corrupt = set()
    with caplog.at_level(logging.WARNING, logger="cxrexplain.download"):
        path = fetch(remote, tmp_path, retry=FAST)
    assert path.read_bytes() == data
    assert _listing(tmp_path) == ["images_001.tar.gz"]
    assert len(server.requests) == 2
    assert any("not the expected file" in r.getMessage() and "MD5" in r.getMessage() for r in caplog.records)


def test_503_once_is_retried(server: FakeMirror, tmp_path: Path, caplog) -> None:
    data = _random_bytes(220_000, 15)
    server.files = {"BBox_List_2017.csv": data}
    server.fail_503_once = {"BBox_List_2017.csv"}

    with caplog.at_level(logging.WARNING, logger="cxrexplain.download"):
        path = fetch(server.remote("BBox_List_2017.csv"), tmp_path, retry=FAST)

    assert path.read_bytes() == data
    assert [r.status for r in server.requests] == [503, 200]
    assert any("503" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)
    assert _listing(tmp_path) == ["BBox_List_2017.csv"]


# --------------------------------------------------------------------------------------------------------------------
# 10. local mirror and resolve_sources


def test_local_directory_mirror_is_copied_and_verified(tmp_path: Path) -> None:
    mirror = tmp_path / "kaggle"
    mirror.mkdir()
    files = {"images_001.tar.gz": _tar_gz(21), "train_val_list.txt": b"00000001_000.png\n"}
    for name, data in files.items():
        (mirror / name).write_bytes(data)
    md5s = {"images_001.tar.gz": _md5(files["images_001.tar.gz"])}  # the list has no published MD5
    remotes = resolve_sources(list(files), default_urls={}, md5s=md5s, mirror=str(mirror))
    dest = tmp_path / "raw"

    paths = fetch_all(remotes, dest, retry=FAST, show_progress=False)

    assert [p.read_bytes() for p in paths] == list(files.values())
    assert _listing(dest) == sorted(files)
    assert (mirror / "images_001.tar.gz").read_bytes() == files["images_001.tar.gz"]  # source untouched


def test_local_mirror_errors_name_the_path(tmp_path: Path) -> None:
    mirror = tmp_path / "kaggle"
    mirror.mkdir()
    missing = RemoteFile("images_002.tar.gz", str(mirror / "images_002.tar.gz"), None)
    with pytest.raises(CxrError, match=r"images_002\.tar\.gz") as info:
        fetch(missing, tmp_path / "raw")
    assert str(mirror / "images_002.tar.gz") in str(info.value)

    (mirror / "images_003.tar.gz").write_bytes(b"not the archive")
    wrong = RemoteFile("images_003.tar.gz", str(mirror / "images_003.tar.gz"), "0" * 32)
    with pytest.raises(CxrError, match=r"MD5 mismatch for images_003\.tar\.gz"):
        fetch(wrong, tmp_path / "raw")
    assert _listing(tmp_path / "raw") == []


def test_resolve_sources_official_url_and_directory_mirrors(tmp_path: Path) -> None:
    names = ["images_001.tar.gz", "test_list.txt"]
    urls = {"images_001.tar.gz": "https://nihcc.box.com/shared/static/abc.gz", "test_list.txt": "https://x/t.txt"}
    md5s = {"images_001.tar.gz": "fe8ed0a6961412fddcbb3603c11b3698"}

    official = resolve_sources(names, default_urls=urls, md5s=md5s, mirror=None)
    assert official == [
        RemoteFile(
            "images_001.tar.gz", "https://nihcc.box.com/shared/static/abc.gz", "fe8ed0a6961412fddcbb3603c11b3698"
        ),
        RemoteFile("test_list.txt", "https://x/t.txt", None),
    ]
    for base in ("http://127.0.0.1:8000/nih", "http://127.0.0.1:8000/nih/"):
        via_url = resolve_sources(names, default_urls={}, md5s=md5s, mirror=base)
        assert [f.url for f in via_url] == [
            "http://127.0.0.1:8000/nih/images_001.tar.gz",
            "http://127.0.0.1:8000/nih/test_list.txt",
        ]
        assert [f.md5 for f in via_url] == ["fe8ed0a6961412fddcbb3603c11b3698", None]
    via_dir = resolve_sources(names, default_urls={}, md5s=md5s, mirror=str(tmp_path))
    assert [f.url for f in via_dir] == [str(tmp_path / n) for n in names]


def test_resolve_sources_without_link_or_mirror_says_what_to_do() -> None:
    with pytest.raises(CxrError) as info:
        resolve_sources(["BBox_List_2017.csv"], default_urls={}, md5s={}, mirror=None)
    message = str(info.value)
    assert "BBox_List_2017.csv" in message and "data.mirror" in message and "by hand" in message


def test_invalid_retry_params_are_a_user_error_and_backoff_is_capped() -> None:
    with pytest.raises(CxrError, match=r"data\.retry\.attempts"):
        validate({"data": {"retry": {"attempts": 0}}})
    with pytest.raises(CxrError, match=r"data\.retry\.speed_window_s"):
        validate({"data": {"retry": {"speed_window_s": 0.0}}})
    delays = [retry_delay(RetryParams(backoff_s=2.0), k) for k in range(7)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


# --------------------------------------------------------------------------------------------------------------------
# 11. content checks: a web page served with HTTP 200, files without an MD5, files already present


def test_dead_link_html_page_is_refused_by_content_type_and_not_retried(server: FakeMirror, tmp_path: Path) -> None:
    server.files = {"images_001.tar.gz": DEAD_LINK_PAGE}
    server.content_types = {"images_001.tar.gz": "text/html; charset=utf-8"}
    remote = RemoteFile("images_001.tar.gz", server.url("images_001.tar.gz"), "fe8ed0a6961412fddcbb3603c11b3698")

    with pytest.raises(CxrError) as info:
        fetch(remote, tmp_path, retry=FAST)

    message = str(info.value)
    assert remote.url in message and "web page" in message and "text/html; charset=utf-8" in message
    assert "<!DOCTYPE html>" in message and "data.mirror" in message
    assert len(server.requests) == 1  # a dead link does not come back by retrying
    assert _listing(tmp_path) == []


def test_html_body_without_html_content_type_is_refused_by_its_first_bytes(server: FakeMirror, tmp_path: Path) -> None:
    page = DEAD_LINK_PAGE + _random_bytes(300_000, 30)  # a big body: refused after its first bytes
    server.files = {"images_002.tar.gz": page}
    server.content_types = {"images_002.tar.gz": "application/octet-stream"}

    with pytest.raises(CxrError, match=r"images_002\.tar\.gz.*web page.*application/octet-stream"):
        fetch(RemoteFile("images_002.tar.gz", server.url("images_002.tar.gz"), None), tmp_path, retry=FAST)
    assert _listing(tmp_path) == []


def test_file_without_md5_is_checked_by_content_before_the_rename(server: FakeMirror, tmp_path: Path) -> None:
    """Regression: a metadata file without MD5 went straight to its final name, whatever it held."""
    name = layout.TEST_LIST
    server.files = {name: b'00000001_000.png\n{ "error": "quota exceeded" }\n'}
    server.content_types = {name: "text/plain"}
    remote = RemoteFile(name, server.url(name), None, check=partial(layout.content_problem, name))

    with pytest.raises(CxrError) as info:
        fetch(remote, tmp_path, retry=FAST)

    message = str(info.value)
    assert remote.url in message and "line 2" in message and "quota exceeded" in message
    assert "Content-Type 'text/plain'" in message and "b'00000001_000.png" in message
    assert _listing(tmp_path) == []  # neither the final name nor a .part

    server.files[name] = b"00000001_000.png\n00000002_000.png\n"
    assert fetch(remote, tmp_path, retry=FAST).read_bytes() == server.files[name]


def test_present_file_failing_its_check_is_fetched_again_and_kept_until_then(
    server: FakeMirror, tmp_path: Path
) -> None:
    """Regression: a page kept under the final name was skipped as "already present" by every re-run."""
    name = layout.TRAIN_VAL_LIST
    remote = RemoteFile(name, server.url(name), None, check=partial(layout.content_problem, name))
    (tmp_path / name).write_bytes(DEAD_LINK_PAGE)  # left by an older version of the downloader
    server.files = {name: DEAD_LINK_PAGE}
    server.content_types = {name: "text/html"}

    with pytest.raises(CxrError, match="web page"):
        fetch(remote, tmp_path, retry=FAST)
    assert (tmp_path / name).read_bytes() == DEAD_LINK_PAGE  # the old file stays until a good one has arrived
    assert len(server.requests) == 1  # not skipped as "already present"

    server.files[name] = b"00000003_001.png\n"
    server.content_types = {}
    assert fetch(remote, tmp_path, retry=FAST).read_bytes() == b"00000003_001.png\n"
    assert _listing(tmp_path) == [name]
    fetch(remote, tmp_path, retry=FAST)
    assert len(server.requests) == 2  # now verified in place: no request


def test_local_mirror_file_failing_its_check_names_what_it_holds(tmp_path: Path) -> None:
    mirror = tmp_path / "kaggle"
    mirror.mkdir()
    (mirror / layout.BBOX_LIST).write_bytes(b"Image Index,Finding Label,Bbox [x,y,w,h]\n")  # an older header
    remote = RemoteFile(
        layout.BBOX_LIST, str(mirror / layout.BBOX_LIST), None, check=partial(layout.content_problem, layout.BBOX_LIST)
    )
    with pytest.raises(CxrError, match=r"BBox_List_2017\.csv.*not the NIH header.*a local file"):
        fetch(remote, tmp_path / "raw")
    assert _listing(tmp_path / "raw") == []


# --------------------------------------------------------------------------------------------------------------------
# 12. throughput floor


TRICKLE = RetryParams(attempts=3, backoff_s=0.01, timeout_s=5.0, min_bytes_per_s=1_000, speed_window_s=0.3)


def test_trickle_is_abandoned_then_resumed(server: FakeMirror, tmp_path: Path, caplog) -> None:
    """Regression: a server sending a byte now and then (each within the read timeout) was waited for forever."""
    data = _random_bytes(5_000, 31)
    server.files = {"images_005.tar.gz": data}
    server.trickle = {"images_005.tar.gz": [0.02]}  # 50 bytes/s on the first request only: 100 s for the file
    start = time.monotonic()

    with caplog.at_level(logging.WARNING, logger="cxrexplain.download"):
        path = fetch(server.remote("images_005.tar.gz"), tmp_path, retry=TRICKLE)

    assert time.monotonic() - start < 3
    assert path.read_bytes() == data
    first, second = server.ranges("images_005.tar.gz")
    assert first is None and second is not None
    resumed_at = int(second.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < 100  # the trickled bytes are kept and the transfer resumes after them
    assert any("too slow" in r.getMessage() and "attempt 1/3" in r.getMessage() for r in caplog.records)


def test_persistent_trickle_gives_up_naming_the_floor(server: FakeMirror, tmp_path: Path) -> None:
    server.files = {"x.bin": _random_bytes(5_000, 32)}
    server.trickle = {"x.bin": [0.02] * TRICKLE.attempts}
    start = time.monotonic()
    with pytest.raises(CxrError) as info:
        fetch(server.remote("x.bin"), tmp_path, retry=TRICKLE)
    assert time.monotonic() - start < 4
    message = str(info.value)
    assert "after 3 attempts" in message and "too slow" in message and "data.retry.min_bytes_per_s = 1000" in message
    assert len(server.requests) == 3
    assert [name for name in _listing(tmp_path)] == ["x.bin.part"]  # kept: the next run resumes from it


def test_zero_floor_waits_for_a_slow_transfer(server: FakeMirror, tmp_path: Path) -> None:
    server.files = {"y.bin": b"0123456789" * 3}
    server.trickle = {"y.bin": [0.02]}
    slow_ok = RetryParams(attempts=1, timeout_s=5.0, min_bytes_per_s=0, speed_window_s=0.1)
    assert fetch(server.remote("y.bin"), tmp_path, retry=slow_ok).read_bytes() == server.files["y.bin"]


# --------------------------------------------------------------------------------------------------------------------
# 13. layout.content_problem: the NIH metadata files by content


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


ENTRY_ROW = "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143"
BOX_ROW = "00013118_008.png,Atelectasis,225.08,547.01,86.77,79.18,,,"
ENTRY_CUT = f"{layout.DATA_ENTRY_HEADER}\n{ENTRY_ROW}\n{ENTRY_ROW[:30]}"  # a transfer cut in the middle of a row
BOX_SHORT = f"{layout.BBOX_HEADER}\n{BOX_ROW.rsplit(',', 4)[0]}\n"  # no height


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        (layout.DATA_ENTRY, f"{layout.DATA_ENTRY_HEADER}\n{ENTRY_ROW}\n", None),
        (layout.DATA_ENTRY, f"\ufeff{layout.DATA_ENTRY_HEADER}\r\n{ENTRY_ROW}\r\n\r\n", None),
        (layout.DATA_ENTRY, DEAD_LINK_PAGE, "line 1 is '<!DOCTYPE html>', not the NIH header"),
        (layout.DATA_ENTRY, ENTRY_CUT, "line 3 has 3 fields, the NIH"),
        (layout.DATA_ENTRY, f"{layout.DATA_ENTRY_HEADER}\n", "no image listed"),
        (layout.DATA_ENTRY, "", "the file is empty"),
        (layout.BBOX_LIST, f"{layout.BBOX_HEADER}\n{BOX_ROW}\n", None),
        (layout.BBOX_LIST, f"{layout.BBOX_HEADER}\n", None),  # a subset may have no box
        (layout.BBOX_LIST, f"{layout.BBOX_HEADER}\n{BOX_ROW[:-3]}\n", None),  # trailing empty fields optional
        (layout.BBOX_LIST, BOX_SHORT, "line 2 has 5 fields, the NIH file 6 (then"),
        (layout.BBOX_LIST, f"{layout.BBOX_HEADER}\n{BOX_ROW}x\n", "line 2 has 9 fields, the NIH file 6 (then"),
        (layout.BBOX_LIST, f"{layout.BBOX_HEADER}\nimage.png,{BOX_ROW[17:]}\n", "line 2 is 'image.png,"),
        (layout.TEST_LIST, "00000001_000.png\n00000002_001.png\n", None),
        (layout.TEST_LIST, "00000001_000.png\n00000002_0", "line 2 is '00000002_0'"),
        (layout.TEST_LIST, DEAD_LINK_PAGE, "line 1 is '<!DOCTYPE html>'"),
        (layout.TRAIN_VAL_LIST, b"00000001_000.png\n\xff\xfe\n", "line 2 is not UTF-8 text"),
        (layout.TRAIN_VAL_LIST, "", "the file is empty"),
        ("images_001.tar.gz", _tar_gz(1, members=1, size=10), None),
        ("images_001.tar.gz", DEAD_LINK_PAGE, "not a gzip archive (starts with b'<!'"),
    ],
)
def test_content_problem_of_nih_files(tmp_path: Path, name: str, text: str | bytes, problem: str | None) -> None:
    found = layout.content_problem(name, _write(tmp_path / name, text))
    assert found == problem if problem is None else found is not None and found.startswith(problem), found


def test_release_row_counts_apply_only_when_asked(tmp_path: Path) -> None:
    """The official files must have NIH's row counts; a mirror's subset (or the synthetic mirror) need not."""
    names = [layout.image_name(p, 0) for p in range(1, 25_597)]
    full = _write(tmp_path / layout.TEST_LIST, "".join(f"{n}\n" for n in names))
    assert layout.content_problem(layout.TEST_LIST, full, release_rows=True) is None
    cut = _write(tmp_path / "cut.txt", "".join(f"{n}\n" for n in names[:-1]))
    assert layout.content_problem(layout.TEST_LIST, cut) is None
    assert layout.content_problem(layout.TEST_LIST, cut, release_rows=True) == (
        "25,595 rows, the NIH release has 25,596 (a truncated or different file)"
    )
    assert layout.NIH_METADATA_ROWS == {
        layout.DATA_ENTRY: 112_120,
        layout.BBOX_LIST: 984,
        layout.TRAIN_VAL_LIST: 86_524,
        layout.TEST_LIST: 25_596,
    }
