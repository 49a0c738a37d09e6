"""Shared fixtures, a real MLflow tracking server started early when a selected test needs one, and the settings that
let ``make test`` run the suite in two pytest-xdist workers.

Parallel runs (``pytest -n N --dist loadfile --no-loadscope-reorder``, what ``make test`` runs): each worker, and
every process a test starts from it (the DVC stages), computes with ``cores // N`` threads (at least 1), so that N
workers do not oversubscribe the CPU (two workers of two threads each on two cores made an earlier parallel try
slower than a serial run); and the slow tier's files are collected first, so that the longest file (the DVC
pipeline) starts at once in one worker while the other runs the rest.
"""

from __future__ import annotations

import os
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

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # set by pytest-xdist in its workers, before test modules import torch
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ["OMP_NUM_THREADS"] = _threads  # torch's intra-op threads, here and in the processes tests start
    os.environ["MKL_NUM_THREADS"] = _threads


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--heavy",
        action="store_true",
        default=False,
        help="also run the tests marked heavy (reference-library oracles on every backbone: minutes on a CPU)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tier first (a stable sort: the order within each group is kept); the heavy tier skipped unless
    ``--heavy`` is given."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)
    if config.getoption("--heavy"):
        return
    skip = pytest.mark.skip(reason="heavy oracle test (minutes on a CPU): run with --heavy (pytest --heavy -m heavy)")
    for item in items:
        if item.get_closest_marker("heavy"):
            item.add_marker(skip)


@pytest.fixture
def server() -> Iterator[FakeMirror]:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) in a daemon thread, serving a :class:`FakeMirror`."""
    with serve() as mirror:
        yield mirror


class MlflowServer:
    """``mlflow server`` on a free port of 127.0.0.1 with a SQLite store and an artifact folder in a temporary folder.

    It takes 15-20 s to answer on a 2-core CPU (imports, the store's migrations), mostly on one core: started when
    the first test of a file that holds a test asking for the ``mlflow_server`` fixture begins (in the worker that
    runs that file, under pytest-xdist), it boots while the tests before that one run, instead of in front of it."""

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
_SERVER_FILES: set[Path] = set()  # the test files with a test that uses the server


def pytest_collection_finish(session: pytest.Session) -> None:
    _SERVER_FILES.update(item.path for item in session.items if "mlflow_server" in getattr(item, "fixturenames", ()))


def pytest_runtest_setup(item: pytest.Item) -> None:
    global _MLFLOW_SERVER
    if _MLFLOW_SERVER is None and item.path in _SERVER_FILES:
        _MLFLOW_SERVER = MlflowServer()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _MLFLOW_SERVER is not None:
        _MLFLOW_SERVER.stop()


@pytest.fixture(scope="session")
def mlflow_server() -> str:
    """The URI of the session's MLflow server (started with its file's first test, stopped when the session ends)."""
    assert _MLFLOW_SERVER is not None, "started by pytest_runtest_setup for every file that uses it"
    return _MLFLOW_SERVER.wait()
