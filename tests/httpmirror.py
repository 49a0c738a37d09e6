"""A real threaded HTTP server on 127.0.0.1 serving in-memory files, with fault injection (tests only)."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from cxrexplain.data.download import RemoteFile

# --------------------------------------------------------------------------------------------------------------------
# Test server


@dataclass
class Request:
    """One request the server saw: the file name, its headers, the status sent and how many body bytes went out."""

    name: str
    headers: dict[str, str]
    status: int = 0
    sent: int = 0


@dataclass
class FakeMirror:
    """In-memory files served over HTTP, with per-test faults; ``url(name)`` is the link of a file."""

    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    cut_after: dict[str, int] = field(default_factory=dict)  # name -> K: first request closes after K body bytes
    corrupt: set[str] = field(default_factory=set)  # names served with one byte flipped
    fail_503_once: set[str] = field(default_factory=set)  # names answered 503 on their first request
    ignore_range: bool = False  # always 200 with the whole file
    gzip_label: bool = False  # add "Content-Encoding: gzip" (as servers do for .gz) while sending the raw bytes
    content_types: dict[str, str] = field(default_factory=dict)  # name -> Content-Type header (none by default)
    trickle: dict[str, list[float]] = field(default_factory=dict)  # name -> s between body bytes, one per request
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def remote(self, name: str, *, md5: bool = True) -> RemoteFile:
        return RemoteFile(name, self.url(name), hashlib.md5(self.files[name]).hexdigest() if md5 else None)

    def ranges(self, name: str) -> list[str | None]:
        return [r.headers.get("Range") for r in self.requests if r.name == name]


def _make_handler(mirror: FakeMirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            name = unquote(self.path.lstrip("/"))
            record = Request(name, {k: v for k, v in self.headers.items()})
            with mirror.lock:
                mirror.requests.append(record)
                fail = name in mirror.fail_503_once
                mirror.fail_503_once.discard(name)
                cut = mirror.cut_after.pop(name, None)
                delays = mirror.trickle.get(name)
                delay = delays.pop(0) if delays else None
            if fail:
                return self._reply(record, 503, b"busy")
            if name not in mirror.files:
                return self._reply(record, 404, b"not found")
            data = mirror.files[name]
            if name in mirror.corrupt:
                i = len(data) // 2
                data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
            extra: dict[str, str] = {"Content-Encoding": "gzip"} if mirror.gzip_label else {}
            if name in mirror.content_types:
                extra["Content-Type"] = mirror.content_types[name]
            wanted = self.headers.get("Range")
            if wanted and not mirror.ignore_range:
                start = int(wanted.removeprefix("bytes=").rstrip("-"))
                if start >= len(data):
                    return self._reply(record, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
                extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self._reply(record, 206, data[start:], extra, cut, delay)
            return self._reply(record, 200, data, extra, cut, delay)

        def _reply(
            self,
            record: Request,
            status: int,
            body: bytes,
            headers: dict[str, str] | None = None,
            cut: int | None = None,
            delay: float | None = None,
        ) -> None:
            record.status = status
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))  # the full length, even when cutting the body short
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            out = body if cut is None else body[:cut]
            if delay is None:
                try:
                    self.wfile.write(out)
                    self.wfile.flush()
                except OSError:  # the client hung up (e.g. after refusing a web page from its first bytes)
                    self.close_connection = True
                    return
                record.sent = len(out)
            else:  # one byte every `delay` seconds until done or the client hangs up
                for i in range(len(out)):
                    try:
                        self.wfile.write(out[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        self.close_connection = True
                        return
                    record.sent = i + 1
                    time.sleep(delay)
            if cut is not None:
                self.close_connection = True

    return Handler


class _Server(ThreadingHTTPServer):
    """A client that hangs up mid-response (what the download tests' timeouts and cut connections do) is expected
    here: not reported. Any other error in a handler is (socketserver's report on stderr)."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipeError, ConnectionResetError, ...
            super().handle_error(request, client_address)


@contextmanager
def serve() -> Iterator[FakeMirror]:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) in a daemon thread, serving a :class:`FakeMirror`."""
    mirror = FakeMirror(base="")
    httpd = _Server(("127.0.0.1", 0), _make_handler(mirror))
    httpd.daemon_threads = True
    mirror.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
