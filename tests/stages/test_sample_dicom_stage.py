"""``cxrexplain sample --from-dicom``: a folder of DICOM files becomes the cache that split (and so train, explain,
report) reads; a failed run writes nothing."""

import json

import numpy as np
import pandas as pd
import yaml

from cxrexplain.data.sample import load_cache
from dicomfiles import make_dicom
from inprocess import cli

PARAMS = {"seed": 0, "data": {"source": "dicom"}, "sample": {"image_size": 32}}


def write_folder(root, patients: int = 20):
    """Two images per patient (one Pneumonia, one No Finding), 12 × 10 pixels, and one truncated file."""
    rng = np.random.default_rng(0)
    (root / "dicom").mkdir()
    rows = []
    for p in range(patients):
        for label in (0, 1):
            name = f"p{p:02d}_{label}.dcm"
            values = rng.integers(0, 4096, size=(10, 12), dtype=np.uint16)
            (root / "dicom" / name).write_bytes(make_dicom(values, PatientID=f"patient-{p}"))
            rows.append((name, label))
    (root / "dicom" / "cut.dcm").write_bytes(make_dicom(values)[:-9])
    rows.append(("cut.dcm", 1))
    pd.DataFrame(rows, columns=["file", "label"]).to_csv(root / "labels.csv", index=False)


def test_sample_from_dicom_then_split_reads_the_cache(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    write_folder(tmp_path)
    args = ("sample", "--from-dicom", "dicom", "--labels", "labels.csv", "--no-progress")
    refused = cli(*args, cwd=tmp_path)  # 1 of 41 files (2.4 %) is more than the 1 % skipped by default
    message = " ".join(refused.stderr.split())  # rich wraps long lines
    assert refused.returncode == 2 and "1 of the 41 listed DICOM files cannot be cached" in message
    assert not (tmp_path / "data" / "cache").exists() and not (tmp_path / "metrics").exists()
    done = cli(*args, "--max-skipped", "0.05", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 of 41 DICOM file(s) skipped" in " ".join(done.stderr.split())
    images, index = load_cache(tmp_path / "data" / "cache")
    assert images.shape == (40, 32, 32) and index["patient"].nunique() == 20
    metrics = json.loads((tmp_path / "metrics" / "sample.json").read_text())
    assert metrics["source"] == "dicom" and metrics["rejected"] == 1 and metrics["cached"]["images"] == 40
    assert cli("split", cwd=tmp_path).returncode == 0
    split = pd.read_csv(tmp_path / "data" / "split.csv")
    assert len(split) == 40 and split.groupby("patient")["split"].nunique().max() == 1
    # the DVC route: download leaves data/raw as it is, sample reads the labels CSV there: absent here, it refuses
    # and leaves the cache that --from-dicom made
    assert cli("download", cwd=tmp_path).returncode == 0 and list((tmp_path / "data" / "raw").iterdir()) == []
    refused = cli("sample", cwd=tmp_path)
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 2 and "data.source is dicom but data/raw/labels.csv is missing" in message
    assert cli("split", cwd=tmp_path).returncode == 0 and len(load_cache(tmp_path / "data" / "cache")[1]) == 40
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "data": {"source": "nih"}}))
    nih = cli(*args, cwd=tmp_path)
    assert nih.returncode == 2 and "params.yaml says data.source: nih; set it to dicom" in " ".join(nih.stderr.split())
    wrong = cli("sample", "--labels", "labels.csv", cwd=tmp_path)
    assert wrong.returncode == 2 and "give their folder with --from-dicom" in " ".join(wrong.stderr.split())


def test_the_sample_stage_caches_the_dicom_files_of_data_raw(tmp_path):
    """What `dvc repro` runs with data.source: dicom: download touches nothing in data/raw, sample reads the files
    and the CSVs data.dicom names there (boxes included), with data.dicom.max_skipped."""
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    write_folder(raw, patients=3)
    (raw / "boxes.csv").write_text("file,x,y,w,h\ndicom/p00_1.dcm,2,2,4,4\n")
    labels = pd.read_csv(raw / "labels.csv")
    labels["file"] = "dicom/" + labels["file"]
    labels.to_csv(raw / "labels.csv", index=False)
    before = sorted((p.relative_to(raw), p.stat().st_mtime_ns) for p in raw.rglob("*"))
    dicom = {"labels": "labels.csv", "boxes": "boxes.csv", "max_skipped": 0.2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "data": {"source": "dicom", "dicom": dicom}}))
    for command in ("download", "sample"):
        done = cli(command, "--no-progress", cwd=tmp_path) if command == "sample" else cli(command, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert sorted((p.relative_to(raw), p.stat().st_mtime_ns) for p in raw.rglob("*")) == before
    images, index = load_cache(tmp_path / "data" / "cache")
    assert images.shape == (6, 32, 32) and index["image"].str.startswith("dicom/").all()
    metrics = json.loads((tmp_path / "metrics" / "sample.json").read_text())
    assert metrics["source"] == "dicom" and metrics["rejected"] == 1 and metrics["boxes"]["kept"] == 1
    outside = {**dicom, "labels": "../labels.csv"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "data": {"source": "dicom", "dicom": outside}}))
    refused = cli("sample", cwd=tmp_path)
    assert refused.returncode == 2 and "data.dicom.labels" in refused.stderr and "inside data/raw/" in refused.stderr
