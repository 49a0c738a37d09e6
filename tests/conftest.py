"""Shared fixtures."""

from collections.abc import Iterator

import pytest

from httpmirror import FakeMirror, serve


@pytest.fixture
def server() -> Iterator[FakeMirror]:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) in a daemon thread, serving a :class:`FakeMirror`."""
    with serve() as mirror:
        yield mirror
