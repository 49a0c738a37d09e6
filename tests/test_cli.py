"""The command line: user errors are one clear message and exit status 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

from inprocess import cli


def test_invalid_params_fail_before_any_work_naming_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text("data:\n  source: kaggle\nsample:\n  per_clas: 10\n")
    result = cli("sample", cwd=tmp_path)
    assert result.returncode == 2
    assert "data.source: Input should be 'nih', 'synthetic' or 'dicom' (got 'kaggle')" in result.stderr
    assert "sample.per_clas: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_params_profile_then_check(tmp_path):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "ci.yaml").write_text((root / "profiles" / "ci.yaml").read_text())
    assert cli("params", "--profile", "ci", cwd=tmp_path).returncode == 0
    assert "source: synthetic" in (tmp_path / "params.yaml").read_text()
    check = cli("params", "--check", cwd=tmp_path)
    assert check.returncode == 0 and "params.yaml: valid" in check.stdout
    unknown = cli("params", "--profile", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown profile 'nope'" in unknown.stderr


def test_synth_writes_a_mirror_and_says_it_is_synthetic(tmp_path):
    result = cli("synth", str(tmp_path / "m"), "--patients", "12", "--size", "48", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Synthetic: not medical data." in result.stdout
    assert (tmp_path / "m" / "MD5SUMS").is_file()
    bad = cli("synth", str(tmp_path / "n"), "--size", "8", cwd=tmp_path)
    assert bad.returncode == 2 and "--size: between 32 and 2048 pixels" in bad.stderr
    huge = cli("synth", str(tmp_path / "n"), "--size", "100000", cwd=tmp_path)
    assert huge.returncode == 2 and "got 100000" in huge.stderr and not (tmp_path / "n").exists()


def test_split_before_sample_says_which_stage_to_run(tmp_path):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "params.yaml").write_text((root / "params.yaml").read_text())
    result = cli("split", cwd=tmp_path)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "split: missing input data/cache/index.csv" in message and "run `dvc repro sample` first" in message


def test_python_dash_m_runs_the_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cxrexplain", "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "explain-image" in result.stdout and "Usage: python -m cxrexplain" in result.stdout


def test_duplicate_yaml_keys_are_refused(tmp_path):
    # PyYAML keeps the last of two equal keys silently: the second lr would have won
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.001\n  batch_size: 4\n  lr: 0.5\n")
    result = cli("params", "--check", cwd=tmp_path)
    assert result.returncode == 2
    assert "params.yaml: not valid YAML" in result.stderr and "found duplicate key 'lr'" in result.stderr


def test_explain_image_refuses_an_impossible_size_before_loading(tmp_path):
    # a 100,000 px request used to be OOM-killed; it is refused before the checkpoint is even opened
    (tmp_path / "x.png").write_bytes(b"not read")
    result = cli(
        "explain-image", str(tmp_path / "x.png"), "--checkpoint", "missing.ckpt", "--size", "100000", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "--size 100000: must be between 32 and 1024 pixels" in result.stderr
