"""Shared fixtures, and a real MLflow tracking server started early when a selected test needs one."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from httpmirror import FakeMirror, serve


@pytest.fixture
def server() -> Iterator[FakeMirror]:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) in a daemon thread, serving a :class:`FakeMirror`."""
    with serve() as mirror:
        yield mirror


class MlflowServer:
    """``mlflow server`` on a free port of 127.0.0.1 with a SQLite store and an artifact folder in a temporary folder.

    It takes 15-20 s to answer on a 2-core CPU (imports, the store's migrations), mostly on one core: started when
    collection finds a test that asks for the ``mlflow_server`` fixture, it boots while the tests before that one
    run, instead of in front of it."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.folder = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
        self.uri = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{self.folder}/server.db",
                "--artifacts-destination",
                str(self.folder / "art"),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait(self, seconds: float = 90) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited with status {self.process.returncode} before it answered")
            try:
                if requests.get(f"{self.uri}/health", timeout=1).status_code == 200:
                    return self.uri
            except requests.RequestException:
                time.sleep(0.3)
        pytest.fail(f"mlflow server did not answer within {seconds:.0f} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


_MLFLOW_SERVER: MlflowServer | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _MLFLOW_SERVER
    if any("mlflow_server" in getattr(item, "fixturenames", ()) for item in session.items):
        _MLFLOW_SERVER = MlflowServer()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _MLFLOW_SERVER is not None:
        _MLFLOW_SERVER.stop()


@pytest.fixture(scope="session")
def mlflow_server() -> str:
    """The URI of the session's MLflow server (started at collection, stopped when the session ends)."""
    assert _MLFLOW_SERVER is not None, "started by pytest_collection_finish for every session that uses it"
    return _MLFLOW_SERVER.wait()
