"""Stage sample on a small synthetic mirror: archives found by their headers, concurrent runs, killed runs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrexplain.config import validate
from cxrexplain.data import archives, layout, metadata
from cxrexplain.data.sample import load_cache
from cxrexplain.data.synth import synth_index, write_mirror
from cxrexplain.errors import CxrError
from cxrexplain.stages import download, sample
from cxrexplain.workspace import Workspace
from inprocess import cli

ROOT = Path(__file__).resolve().parents[2]
PARAMS = {"seed": 0, "workers": 2, "sample": {"per_class": 1000, "balance": False, "image_size": 32}}

# Runs `cxrexplain sample` in the current directory with each decode slowed by DELAY seconds (argv[1]), so that a
# test can act while the workers are busy. Workers are forked, so they run the slowed function too.
SLOW_SAMPLE = textwrap.dedent(
    """
    import sys, time
    import cxrexplain.data.sample as sampling
    from cxrexplain.cli import main

    delay, decode = float(sys.argv[1]), sampling.to_gray8
    def slow(data, size):
        time.sleep(delay)
        return decode(data, size)
    sampling.to_gray8 = slow
    sys.argv = ["cxrexplain", "sample", "--no-progress"]
    main()
    """
)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mirror")
    write_mirror(
        synth_index(60, image_size=32, pneumonia_fraction=0.4, seed=1), out, image_size=32, show_progress=False
    )
    return out


def workspace(root: Path, mirror: Path) -> Workspace:
    """A repository-like folder: the mirror as data/raw (without an archive index) and params.yaml."""
    ws = Workspace(root)
    shutil.copytree(mirror, ws.raw)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return ws


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def cohort_images(entries: pd.DataFrame) -> set[str]:
    """The cohort PARAMS ask for: every Pneumonia image and every No Finding image."""
    pneumonia = entries["labels"].str.split("|").map(lambda labels: layout.PNEUMONIA in labels)
    return set(entries.loc[pneumonia | (entries["labels"] == layout.NO_FINDING), "image"])


@pytest.mark.parametrize("change", ["extra row", "subset of the index"])
def test_membership_does_not_depend_on_the_rows_of_the_csv(tmp_path, mirror, change):
    ws = workspace(tmp_path, mirror)
    entries = metadata.read_data_entry(ws.raw / layout.DATA_ENTRY)
    if change == "extra row":  # an image no archive holds, sorted first: the positional rule shifts every archive
        extra = entries.iloc[[0]].assign(image="00000000_000.png", patient=0, labels="Effusion")
        entries = pd.concat([extra, entries])
    else:  # every third patient left out
        entries = entries[entries["patient"] % 3 != 0]
    metadata.write_data_entry(entries, ws.raw / layout.DATA_ENTRY)
    result = cli("sample", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(ws.stage_metrics("sample").read_text())
    assert metrics["rejected"] == 0
    _, index = load_cache(ws.cache.dir)
    assert set(index["image"]) == cohort_images(entries)
    assert not (ws.raw / archives.INDEX_FILE).exists()  # sample scans in memory; data/raw is download's output


def test_a_cohort_the_archives_do_not_hold_fails_with_exit_2(tmp_path, mirror):
    ws = workspace(tmp_path, mirror)
    entries = metadata.read_data_entry(ws.raw / layout.DATA_ENTRY)
    absent = pd.concat(  # ten No Finding images of patients no archive holds (a CSV of a larger release)
        [
            entries.iloc[[0]].assign(image=f"{9000 + k:08d}_000.png", patient=9000 + k, labels="No Finding")
            for k in range(10)
        ]
    )
    metadata.write_data_entry(pd.concat([entries, absent]), ws.raw / layout.DATA_ENTRY)
    result = cli("sample", "--no-progress", cwd=tmp_path)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "data/raw: 10 of the" in message and "cohort images cannot be cached" in message
    assert "Traceback" not in result.stderr
    assert not ws.cache.dir.exists() and not ws.stage_metrics("sample").exists()


def test_stage_uses_the_workspace_and_the_archive_index(tmp_path, mirror, monkeypatch):
    ws = workspace(tmp_path, mirror)
    archives.write_index(ws.raw)
    monkeypatch.setattr(archives, "scan_archives", lambda *a, **k: pytest.fail("scanned despite a current index"))
    metrics = sample.run(validate(PARAMS), ws, show_progress=False)
    images, index = load_cache(ws.cache.dir)
    entries = metadata.read_data_entry(ws.raw / layout.DATA_ENTRY)
    assert set(index["image"]) == cohort_images(entries) and images.shape == (len(index), 32, 32)
    assert metrics == json.loads(ws.stage_metrics("sample").read_text())
    assert metrics["rejected"] == metrics["not_in_archive"] == 0
    assert metrics["boxes"]["kept"] > 0 and metrics["boxes"]["clipped"] == metrics["boxes"]["dropped"] == 0
    assert pd.read_csv(ws.cache.rejects).empty
    assert images.reshape(len(index), -1).std(axis=1).min() > 5  # every row holds a radiograph, none is blank


def test_download_leaves_a_current_archive_index_for_sample(tmp_path):
    raw = Workspace(tmp_path).raw
    synthetic = {"source": "synthetic", "synthetic": {"patients": 20, "image_size": 32, "seed": 2}}
    download.run(validate({"workers": 1, "data": synthetic}), Workspace(tmp_path), show_progress=False)
    index = archives.read_index(raw)
    assert index is not None and set(index["archive"]) == set(layout.ARCHIVE_NAMES)
    entries = metadata.read_data_entry(raw / layout.DATA_ENTRY)
    assert archives.locations(index) == layout.assign_archives(entries["image"].tolist())  # the mirror's real cut


def test_sample_before_download_names_the_stage_to_run(tmp_path):
    with pytest.raises(CxrError, match=r"sample: missing input .*Data_Entry_2017_v2020\.csv.*dvc repro download"):
        sample.run(validate(PARAMS), Workspace(tmp_path), show_progress=False)


def test_two_concurrent_runs_both_finish_with_a_valid_cache(tmp_path, mirror):
    ws = workspace(tmp_path, mirror)
    (tmp_path / "slow.py").write_text(SLOW_SAMPLE)
    runs = [
        subprocess.Popen(
            [sys.executable, "slow.py", "0.02"], cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()
    images, index = load_cache(ws.cache.dir)
    reference = tmp_path / "reference"
    sample.run(validate(PARAMS), workspace(reference, mirror), show_progress=False)
    expected_images, expected_index = load_cache(Workspace(reference).cache.dir)
    pd.testing.assert_frame_equal(index, expected_index)
    np.testing.assert_array_equal(images, expected_images)
    assert not [p.name for p in ws.cache.dir.parent.iterdir() if p.name.endswith(".part")]


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_parent(tmp_path, mirror):
    archives.write_index(workspace(tmp_path, mirror).raw)  # so the only pool is the sampling one
    (tmp_path / "slow.py").write_text(SLOW_SAMPLE)
    workers: set[int] = set()
    parent = subprocess.Popen(
        [sys.executable, "slow.py", "0.5"],
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            workers = _children(parent.pid)
            time.sleep(0.1)
        assert len(workers) == 2, "the sampling workers never started"
        time.sleep(1.0)  # both busy decoding
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [w for w in workers if _alive(w)]
        assert not survivors, f"workers {survivors} outlived their killed parent"
    finally:
        for pid in [parent.pid, *workers]:  # only what this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
