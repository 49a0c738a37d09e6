"""Stage download: synthetic generation, and the NIH path against a local HTTP mirror (same file names)."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cxrexplain.config import validate
from cxrexplain.data import layout
from cxrexplain.data.sources import verify_manifest
from cxrexplain.data.synth import read_manifest, synth_index, write_mirror
from cxrexplain.errors import CxrError
from cxrexplain.stages import download
from cxrexplain.workspace import Workspace

FAST_RETRY = {"attempts": 2, "backoff_s": 0.01, "timeout_s": 5.0}
SRC = Path(__file__).resolve().parents[2] / "src"
DEAD_LINK_PAGE = b"<!DOCTYPE html>\n<html><head><title>Box | Shared link unavailable</title></head></html>\n"


def params(**data):
    return validate({"workers": 1, "data": {"retry": FAST_RETRY, **data}})


def run(p, raw: Path) -> None:
    """The stage on the workspace whose ``data/raw`` is ``raw``."""
    assert raw.parts[-2:] == ("data", "raw")
    download.run(p, Workspace(raw.parent.parent), show_progress=False)


SYNTHETIC = {"source": "synthetic", "synthetic": {"patients": 30, "image_size": 48, "seed": 5}}


def test_synthetic_source_generates_verifies_and_then_skips(tmp_path):
    raw = tmp_path / "data" / "raw"
    run(params(**SYNTHETIC), raw)
    assert verify_manifest(raw) == []
    assert json.loads((raw / "SOURCE.json").read_text())["source"] == "synthetic"
    stamp = (raw / "images_001.tar.gz").stat().st_mtime_ns
    run(params(**SYNTHETIC), raw)
    assert (raw / "images_001.tar.gz").stat().st_mtime_ns == stamp  # verified, not regenerated

    bigger = {**SYNTHETIC, "synthetic": {**SYNTHETIC["synthetic"], "patients": 40}}
    run(params(**bigger), raw)
    assert (raw / layout.DATA_ENTRY).read_text().count("\n") > 40


def test_synthetic_source_repairs_a_corrupted_file(tmp_path):
    raw = tmp_path / "data" / "raw"
    run(params(**SYNTHETIC), raw)
    (raw / "images_003.tar.gz").write_bytes(b"broken")
    assert verify_manifest(raw) == ["images_003.tar.gz"]
    run(params(**SYNTHETIC), raw)
    assert verify_manifest(raw) == []


def test_synthetic_never_overwrites_a_real_download(tmp_path):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "SOURCE.json").write_text(json.dumps({"source": "nih", "mirror": None}))
    with pytest.raises(CxrError, match="holds a real NIH download"):
        run(params(**SYNTHETIC), raw)


@pytest.fixture
def served(server, tmp_path, monkeypatch):
    """A synthetic mirror served over HTTP on 127.0.0.1; the 'published' archive MD5s are the mirror's."""
    source = tmp_path / "mirror"
    index = synth_index(24, image_size=48, seed=2)
    write_mirror(index, source, image_size=48, seed=2, show_progress=False)
    server.files = {p.name: p.read_bytes() for p in source.iterdir()}
    manifest = read_manifest(source / layout.MD5_MANIFEST)
    patched = tuple(replace(a, md5=manifest[a.name]) for a in layout.NIH_ARCHIVES)
    monkeypatch.setattr(layout, "NIH_ARCHIVES", patched)
    return server, source


def test_nih_source_downloads_every_file_from_an_http_mirror(served, tmp_path):
    server, source = served
    raw = tmp_path / "data" / "raw"
    run(params(source="nih", mirror=server.base), raw)
    for name in (*layout.ARCHIVE_NAMES, *layout.METADATA_FILES):
        assert (raw / name).read_bytes() == (source / name).read_bytes()
    assert not list(raw.glob("*.part"))
    fetched = len(server.requests)
    run(params(source="nih", mirror=server.base), raw)
    assert len(server.requests) == fetched  # everything verified locally: no request at all


def test_nih_source_resumes_a_cut_archive(served, tmp_path):
    server, source = served
    server.cut_after["images_004.tar.gz"] = 1000
    raw = tmp_path / "data" / "raw"
    run(params(source="nih", mirror=server.base), raw)
    assert server.ranges("images_004.tar.gz") == [None, "bytes=1000-"]
    assert (raw / "images_004.tar.gz").read_bytes() == (source / "images_004.tar.gz").read_bytes()


def test_nih_checksum_mismatch_keeps_nothing_under_the_final_name(served, tmp_path):
    server, _ = served
    server.corrupt.add("images_002.tar.gz")
    raw = tmp_path / "data" / "raw"
    with pytest.raises(CxrError, match=r"MD5 mismatch for images_002\.tar\.gz"):
        run(params(source="nih", mirror=server.base), raw)
    assert not (raw / "images_002.tar.gz").exists()
    assert (raw / "images_001.tar.gz").exists()  # what was verified before stays


def test_nih_missing_file_on_the_mirror(served, tmp_path):
    server, _ = served
    del server.files["images_012.tar.gz"]
    with pytest.raises(CxrError, match=r"images_012\.tar\.gz.*404.*mirror"):
        run(params(source="nih", mirror=server.base), tmp_path / "data" / "raw")


def test_nih_from_a_local_mirror_directory(served, tmp_path):
    _, source = served
    raw = tmp_path / "data" / "raw"
    run(params(source="nih", mirror=str(source)), raw)
    assert verify_manifest(raw) == []


def test_nih_without_metadata_or_mirror_says_where_to_get_them(tmp_path):
    with pytest.raises(CxrError, match=r"Data_Entry_2017_v2020\.csv.*ChestXray-NIHCC.*data\.mirror"):
        run(params(source="nih"), tmp_path / "data" / "raw")


def test_switching_from_synthetic_to_nih_removes_the_synthetic_files(served, tmp_path):
    server, source = served
    raw = tmp_path / "data" / "raw"
    run(params(**SYNTHETIC), raw)
    run(params(source="nih", mirror=server.base), raw)
    assert (raw / layout.DATA_ENTRY).read_bytes() == (source / layout.DATA_ENTRY).read_bytes()
    assert json.loads((raw / "SOURCE.json").read_text()) == {"source": "nih", "mirror": server.base}


# --------------------------------------------------------------------------------------------------------------------
# Metadata checked by content (NIH publishes no MD5 for it), web pages served with HTTP 200


def without_manifest(server):
    """The mirror has no MD5SUMS: its metadata files are checked by content only."""
    del server.files[layout.MD5_MANIFEST]
    return server


def test_html_data_entry_from_a_mirror_is_refused_and_not_kept(served, tmp_path):
    """Regression: a metadata file without an MD5 went to its final name before any check."""
    server = without_manifest(served[0])
    server.files[layout.DATA_ENTRY] = DEAD_LINK_PAGE
    server.content_types[layout.DATA_ENTRY] = "text/html; charset=utf-8"
    raw = tmp_path / "data" / "raw"
    with pytest.raises(CxrError) as info:
        run(params(source="nih", mirror=server.base), raw)
    message = str(info.value)
    assert f"{server.base}/{layout.DATA_ENTRY}" in message and "text/html; charset=utf-8" in message
    assert "<!DOCTYPE html>" in message
    assert not (raw / layout.DATA_ENTRY).exists() and not list(raw.glob("*.part"))
    assert not any(r.name.endswith(".tar.gz") for r in server.requests)  # metadata first: no archive fetched


def test_html_left_under_a_final_name_is_fetched_again(served, tmp_path):
    """Regression: every re-run skipped a kept page as "already present" and failed the same way."""
    server, source = served
    server = without_manifest(server)
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / layout.DATA_ENTRY).write_bytes(DEAD_LINK_PAGE)
    run(params(source="nih", mirror=server.base), raw)
    assert (raw / layout.DATA_ENTRY).read_bytes() == (source / layout.DATA_ENTRY).read_bytes()
    assert server.ranges(layout.DATA_ENTRY) == [None]


def test_html_test_list_fails_the_stage(served, tmp_path):
    """Regression: an HTML test_list.txt passed with exit code 0."""
    server = without_manifest(served[0])
    server.files[layout.TEST_LIST] = DEAD_LINK_PAGE  # no Content-Type: recognised by its bytes
    raw = tmp_path / "data" / "raw"
    with pytest.raises(CxrError, match=r"test_list\.txt.*web page"):
        run(params(source="nih", mirror=server.base), raw)
    assert not (raw / layout.TEST_LIST).exists()


def test_html_test_list_exits_2_on_the_command_line(served, tmp_path):
    server = without_manifest(served[0])
    server.files[layout.TEST_LIST] = b"00000001_000.png\n" + DEAD_LINK_PAGE  # not even a page from its first bytes
    p = {"workers": 1, "data": {"source": "nih", "mirror": server.base, "retry": FAST_RETRY}}
    (tmp_path / "params.yaml").write_text(json.dumps(p))  # JSON is YAML
    # a process of its own: in this one, the test server's threads may print a traceback of their own (a client
    # that stops reading) into the redirected stderr this test checks
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-m", "cxrexplain.cli", "download", "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "test_list.txt" in result.stderr and "line 2 is '<!DOCTYPE html>'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "raw" / layout.TEST_LIST).exists()


def test_html_md5sums_on_a_mirror_is_not_kept(served, tmp_path):
    server, source = served
    server.files[layout.MD5_MANIFEST] = DEAD_LINK_PAGE
    raw = tmp_path / "data" / "raw"
    run(params(source="nih", mirror=server.base), raw)  # the metadata are then checked by content only
    assert not (raw / layout.MD5_MANIFEST).exists()
    assert (raw / layout.TEST_LIST).read_bytes() == (source / layout.TEST_LIST).read_bytes()


def test_mirror_metadata_are_not_held_to_the_release_row_counts(served, tmp_path):
    server, _ = served
    raw = tmp_path / "data" / "raw"
    run(params(source="nih", mirror=server.base), raw)
    rows = (raw / layout.DATA_ENTRY).read_text().count("\n") - 1
    assert 24 <= rows < layout.NIH_IMAGE_COUNT  # a 24-patient synthetic mirror, accepted


def _release_metadata(raw: Path, *, test_rows: int = 25_596) -> None:
    """Metadata files in the NIH format with the release's row counts (the values are made up)."""
    names = [layout.image_name(p, 0) for p in range(1, layout.NIH_IMAGE_COUNT + 1)]
    entries = "".join(f"{n},No Finding,0,{i},50,M,PA,1024,1024,0.143,0.143\n" for i, n in enumerate(names, 1))
    (raw / layout.DATA_ENTRY).write_text(f"{layout.DATA_ENTRY_HEADER}\n{entries}")
    boxes = "".join(f"{n},Pneumonia,1.0,2.0,3.0,4.0,,,\n" for n in names[:984])
    (raw / layout.BBOX_LIST).write_text(f"{layout.BBOX_HEADER}\n{boxes}")
    (raw / layout.TRAIN_VAL_LIST).write_text("".join(f"{n}\n" for n in names[:86_524]))
    (raw / layout.TEST_LIST).write_text("".join(f"{n}\n" for n in names[86_524 : 86_524 + test_rows]))


def test_official_source_checks_hand_placed_metadata_with_release_row_counts(served, tmp_path, monkeypatch):
    server, source = served
    # the official links, pointed at the local server (the MD5s are the served archives')
    patched = tuple(replace(a, url=server.url(a.name)) for a in layout.NIH_ARCHIVES)
    monkeypatch.setattr(layout, "NIH_ARCHIVES", patched)
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    _release_metadata(raw, test_rows=25_595)  # one line short: a cut download

    with pytest.raises(CxrError) as info:
        run(params(source="nih"), raw)
    message = str(info.value)
    assert str(raw / layout.TEST_LIST) in message and "25,595 rows, the NIH release has 25,596" in message
    assert layout.NIH_BOX_FOLDER in message
    assert server.requests == []  # checked before any archive is fetched

    _release_metadata(raw)
    run(params(source="nih"), raw)
    assert [r.name for r in server.requests] == list(layout.ARCHIVE_NAMES)
    assert (raw / "images_007.tar.gz").read_bytes() == (source / "images_007.tar.gz").read_bytes()
    assert json.loads((raw / "SOURCE.json").read_text()) == {"source": "nih", "mirror": None}
