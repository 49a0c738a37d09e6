"""tracking.py's pure helpers: the same param keys and readable run names in every run."""

import subprocess
from pathlib import Path

from cxrexplain import tracking
from cxrexplain.config import Params


def test_flatten_gives_dotted_keys_and_strings():
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    assert flat == {"a.b": "1", "a.c": "1,2", "d": "None"}


def test_flattened_params_have_stable_keys():
    flat = tracking.flatten(Params().model_dump(mode="json"))
    assert flat["train.lr"] == "0.0001"
    assert flat["sample.views"] == "PA,AP"
    assert flat["train.augment.rotate_deg"] == "10.0"
    assert len(flat) == len(set(flat))


def test_run_names_are_readable_and_flag_synthetic_data():
    assert tracking.run_name("resnet50", "0123456789abcdef", "nih") == "resnet50 @ 0123456"
    assert tracking.run_name("densenet121", "0123456789abcdef", "synthetic") == "densenet121 @ 0123456 [synthetic]"


def test_tracking_uri_defaults_to_the_embedded_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_artifacts_live_beside_the_embedded_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.artifact_location(uri) == (tmp_path / "mlartifacts").as_uri()
    assert tracking.artifact_location("http://host:5000") is None


def test_git_state_outside_a_repository(tmp_path):
    assert tracking.git_state(tmp_path) == ("unknown", True)
    commit, dirty = tracking.git_state(Path(__file__).parent)
    assert len(commit) == 40 and isinstance(dirty, bool)


def test_git_state_ignores_the_pipeline_records_but_not_code_or_params(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for name in ("dvc.lock", "metrics/train.json", "reports/report.md", "params.yaml", "src/code.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("committed\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "-m", "c")
    for name in ("dvc.lock", "metrics/train.json", "reports/report.md"):  # what `dvc repro` rewrites
        (tmp_path / name).write_text("rewritten by a run\n")
    assert tracking.git_state(tmp_path / "src") == (tracking.git_state(tmp_path)[0], False)
    for name in ("params.yaml", "src/code.py"):
        (tmp_path / name).write_text("edited\n")
        assert tracking.git_state(tmp_path)[1] is True, name
        (tmp_path / name).write_text("committed\n")
