"""Stage download: synthetic generation, and the NIH path against a local HTTP mirror (same file names)."""

import json
from dataclasses import replace

import pytest

from cxrexplain.config import validate
from cxrexplain.data import layout
from cxrexplain.data.synth import read_manifest, synth_index, write_mirror
from cxrexplain.errors import CxrError
from cxrexplain.stages import download

FAST_RETRY = {"attempts": 2, "backoff_s": 0.01, "timeout_s": 5.0}


def params(**data):
    return validate({"workers": 1, "data": {"retry": FAST_RETRY, **data}})


SYNTHETIC = {"source": "synthetic", "synthetic": {"patients": 30, "image_size": 48, "seed": 5}}


def test_synthetic_source_generates_verifies_and_then_skips(tmp_path):
    raw = tmp_path / "raw"
    download.run(params(**SYNTHETIC), raw, show_progress=False)
    assert download.verify_manifest(raw) == []
    assert json.loads((raw / "SOURCE.json").read_text())["source"] == "synthetic"
    stamp = (raw / "images_001.tar.gz").stat().st_mtime_ns
    download.run(params(**SYNTHETIC), raw, show_progress=False)
    assert (raw / "images_001.tar.gz").stat().st_mtime_ns == stamp  # verified, not regenerated

    bigger = {**SYNTHETIC, "synthetic": {**SYNTHETIC["synthetic"], "patients": 40}}
    download.run(params(**bigger), raw, show_progress=False)
    assert (raw / layout.DATA_ENTRY).read_text().count("\n") > 40


def test_synthetic_source_repairs_a_corrupted_file(tmp_path):
    raw = tmp_path / "raw"
    download.run(params(**SYNTHETIC), raw, show_progress=False)
    (raw / "images_003.tar.gz").write_bytes(b"broken")
    assert download.verify_manifest(raw) == ["images_003.tar.gz"]
    download.run(params(**SYNTHETIC), raw, show_progress=False)
    assert download.verify_manifest(raw) == []


def test_synthetic_never_overwrites_a_real_download(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "SOURCE.json").write_text(json.dumps({"source": "nih", "mirror": None}))
    with pytest.raises(CxrError, match="holds a real NIH download"):
        download.run(params(**SYNTHETIC), raw, show_progress=False)


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
    raw = tmp_path / "raw"
    download.run(params(source="nih", mirror=server.base), raw, show_progress=False)
    for name in (*layout.ARCHIVE_NAMES, *layout.METADATA_FILES):
        assert (raw / name).read_bytes() == (source / name).read_bytes()
    assert not list(raw.glob("*.part"))
    fetched = len(server.requests)
    download.run(params(source="nih", mirror=server.base), raw, show_progress=False)
    assert len(server.requests) == fetched  # everything verified locally: no request at all


def test_nih_source_resumes_a_cut_archive(served, tmp_path):
    server, source = served
    server.cut_after["images_004.tar.gz"] = 1000
    raw = tmp_path / "raw"
    download.run(params(source="nih", mirror=server.base), raw, show_progress=False)
    assert server.ranges("images_004.tar.gz") == [None, "bytes=1000-"]
    assert (raw / "images_004.tar.gz").read_bytes() == (source / "images_004.tar.gz").read_bytes()


def test_nih_checksum_mismatch_keeps_nothing_under_the_final_name(served, tmp_path):
    server, _ = served
    server.corrupt.add("images_002.tar.gz")
    raw = tmp_path / "raw"
    with pytest.raises(CxrError, match=r"MD5 mismatch for images_002\.tar\.gz"):
        download.run(params(source="nih", mirror=server.base), raw, show_progress=False)
    assert not (raw / "images_002.tar.gz").exists()
    assert (raw / "images_001.tar.gz").exists()  # what was verified before stays


def test_nih_missing_file_on_the_mirror(served, tmp_path):
    server, _ = served
    del server.files["images_012.tar.gz"]
    with pytest.raises(CxrError, match=r"images_012\.tar\.gz.*404.*mirror"):
        download.run(params(source="nih", mirror=server.base), tmp_path / "raw", show_progress=False)


def test_nih_from_a_local_mirror_directory(served, tmp_path):
    _, source = served
    raw = tmp_path / "raw"
    download.run(params(source="nih", mirror=str(source)), raw, show_progress=False)
    assert download.verify_manifest(raw) == []


def test_nih_without_metadata_or_mirror_says_where_to_get_them(tmp_path):
    with pytest.raises(CxrError, match=r"Data_Entry_2017_v2020\.csv.*ChestXray-NIHCC.*data\.mirror"):
        download.run(params(source="nih"), tmp_path / "raw", show_progress=False)


def test_switching_from_synthetic_to_nih_removes_the_synthetic_files(served, tmp_path):
    server, source = served
    raw = tmp_path / "raw"
    download.run(params(**SYNTHETIC), raw, show_progress=False)
    download.run(params(source="nih", mirror=server.base), raw, show_progress=False)
    assert (raw / layout.DATA_ENTRY).read_bytes() == (source / layout.DATA_ENTRY).read_bytes()
    assert json.loads((raw / "SOURCE.json").read_text()) == {"source": "nih", "mirror": server.base}
