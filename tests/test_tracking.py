"""tracking.py: the same param keys and readable run names in every run; unsupported stores, dead servers and
missing runs fail early, fast and clearly."""

import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from cxrexplain import tracking
from cxrexplain.config import Params
from cxrexplain.errors import CxrError


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
    assert tracking.run_name("resnet50", "0123456789abcdef", "nih", seed=43) == "resnet50 s43 @ 0123456"


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


# --------------------------------------------------------------------------------------------------------------------
# Failing early and fast


@pytest.mark.parametrize("uri", ["file:./mlruns", "./mlruns", "postgres://db/mlflow", "databricks"])
def test_unsupported_tracking_uris_are_refused(uri):
    with pytest.raises(CxrError, match="not supported; use sqlite:///<file>"):
        tracking.check_reachable(uri)


def test_http_retries_are_bounded_unless_the_user_set_them(monkeypatch):
    for key in tracking.HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    tracking.check_reachable("sqlite:///mlflow.db")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"  # the user's own value stands


class _DyingServer(BaseHTTPRequestHandler):
    """Healthy on /health, then HTTP 503 for every API call (a server that died behind its proxy)."""

    calls: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        type(self).calls.append(self.path)
        status = 200 if self.path.endswith("/health") else 503
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args) -> None:
        pass


def test_a_dying_server_costs_a_bounded_number_of_retries(monkeypatch):
    # MLflow's own defaults (7 retries, backoff factor 2) kept a dead server busy for about 8.5 minutes
    for key in tracking.HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # the count, not the waiting, is under test
    _DyingServer.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DyingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        tracking.check_reachable(uri)  # healthy: passes, and bounds the retries
        with pytest.raises(Exception):  # noqa: B017 (MLflow raises its own exception types for HTTP errors)
            tracking.log_metrics("0" * 32, {"x": 1.0}, uri=uri)
    finally:
        server.shutdown()
    api_calls = [c for c in _DyingServer.calls if not c.endswith("/health")]
    assert 1 <= len(api_calls) <= 1 + int(tracking.HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])


def test_require_run_names_the_missing_run_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = tmp_path / "mlflow_run.json"
    tracking.write_run_ref(ref, "f" * 32, f"sqlite:///{tmp_path / 'other.db'}", "1")
    with pytest.raises(CxrError) as info:
        tracking.require_run(ref)
    message = str(info.value)
    assert str(ref) in message and "f" * 32 in message and "not in the tracking store" in message
    ref.write_text("<html>")
    with pytest.raises(CxrError, match="not a run reference"):
        tracking.require_run(ref)
