"""The viewer's local web server: the page, one model's images and maps, and a reader's ratings saved as given.

A :class:`~http.server.ThreadingHTTPServer` bound to 127.0.0.1 (never another interface) answers:

- ``GET /``: the page (``page.html``, self-contained: no file or script from elsewhere);
- ``GET /api/state``: the model, the reader, the items (images in the order shown, each with its maps as *slots*),
  the measures and the reader's ratings of this model;
- ``GET /image/<item>.png`` and ``GET /map/<item>/<slot>.png``: the radiograph and a map overlay, made on first
  request (the page loads them lazily, so a few hundred images cost nothing until seen);
- ``POST /api/rate`` (JSON ``{item, slot, rating, artefact, note}``; an empty rating removes the rating): checked
  (:func:`cxrexplain.evaluation.ratings.check_rating`), then the reader's whole CSV is rewritten atomically before the
  answer, so a rating the page shows as saved is on disk, and a reload, a crash or a restart loses nothing. The file
  is read back under an exclusive lock on the ratings folder before each change and each answer with ratings, so two
  viewers of the same reader (two models, two processes) never write over each other's ratings.

A *slot* is the position of a map under its image, among the methods with a map of that image
(:meth:`~cxrexplain.viewer.data.ViewerRun.available`: every CAM; the captum methods only on some images). Unblinded,
the slots follow the methods' order and the page names each. Blinded (``blinded=True``), the page never learns the
method names: the items come in the reader's own random order and each image's methods in a random order of their
own (:func:`cxrexplain.viewer.data.blinded_order`, seeded by the reader id), shown as "map 1", "map 2", ...; the
server maps a slot back to its method when it saves, and sends no measures (they would tell the methods apart).
Requests must name the server's own host (``Host: 127.0.0.1:<port>`` or ``localhost:<port>``) and a rating must come
as ``application/json``, so that no other web page the reader has open can post ratings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pandas as pd

from cxrexplain.errors import CxrError
from cxrexplain.evaluation import ratings as rt
from cxrexplain.viewer.data import ViewerRun, blinded_order

try:
    import fcntl
except ImportError:  # not on Windows: one viewer per reader at a time there
    fcntl = None

log = logging.getLogger(__name__)

MAX_BODY = 16_384  # bytes of one rating's JSON
_IMAGE = re.compile(r"/image/(\d+)\.png")
_MAP = re.compile(r"/map/(\d+)/(\d+)\.png")


class Session:
    """One reader's session on one model: the order shown, and the reader's ratings, kept in memory and on disk."""

    def __init__(self, run: ViewerRun, reader: str, ratings_file: Path, *, blinded: bool) -> None:
        self.run, self.reader, self.file, self.blinded = run, rt.check_reader(reader), Path(ratings_file), blinded
        n, k = len(run.items), len(run.methods)
        self.order, slots = blinded_order(reader, n, k) if blinded else (list(range(n)), [list(range(k))] * n)
        # per item, the methods (indices into run.methods) of its slots: those with a map of it, in the order above
        self.slots = [[m for m in slots[i] if m in set(run.available(i))] for i in range(n)]
        self.table = rt.read_reader(self.file)  # checked before the server starts: a bad file stops `view`
        self.lock = threading.Lock()

    @contextmanager
    def _file_locked(self) -> Iterator[pd.DataFrame]:
        """This session's lock and an exclusive lock on the ratings folder (``flock`` on the folder itself: no lock
        file is left there), then the reader's ratings as they are on disk now: another viewer of the same reader
        (another model, in another process) may have written since. Yields that table."""
        with self.lock:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            folder = os.open(self.file.parent, os.O_RDONLY)
            try:
                if fcntl is not None:
                    fcntl.flock(folder, fcntl.LOCK_EX)
                self.table = rt.read_reader(self.file)
                yield self.table
            finally:
                os.close(folder)  # releases the flock

    def method(self, item: int, slot: int) -> str:
        return self.run.methods[self.slots[item][slot]]

    def _mine(self) -> dict[tuple[str, str], dict]:
        with self._file_locked() as t:
            t = t[(t["arch"] == self.run.arch) & (t["seed"] == self.run.seed)]
        return {
            (r.image, r.method): {"rating": r.rating, "artefact": r.artefact, "note": r.note} for r in t.itertuples()
        }

    def ratings(self) -> dict[str, dict[str, dict]]:
        """This model's ratings by the reader: item → slot → ``{rating, artefact, note}`` (as strings, for JSON)."""
        mine = self._mine()
        out: dict[str, dict[str, dict]] = {}
        for item, entry in enumerate(self.run.items):
            for slot in range(len(self.slots[item])):
                found = mine.get((entry["image"], self.method(item, slot)))
                if found:
                    out.setdefault(str(item), {})[str(slot)] = found
        return out

    def state(self) -> dict:
        r = self.run
        maps = [
            [{"slot": s, "name": f"map {s + 1}" if self.blinded else self.method(i, s)} for s in range(len(slots))]
            for i, slots in enumerate(self.slots)
        ]
        items = []
        for i in self.order:
            entry = {k: v for k, v in r.items[i].items() if k != "measures" or not self.blinded}
            items.append({**entry, "item": i, "maps": maps[i]})
        return {
            "arch": r.arch,
            "seed": r.seed,
            "reader": self.reader,
            "file": str(self.file),
            "blinded": self.blinded,
            "threshold": r.threshold,
            "side": r.side,
            "methods": [] if self.blinded else r.methods,
            "measures": [] if self.blinded else r.measures,
            "choices": {"ratings": rt.RATINGS, "artefacts": rt.ARTEFACTS},
            "items": items,
            "ratings": self.ratings(),
        }

    def rate(self, body: dict) -> dict:
        """Save one rating (or remove it: empty ``rating``); returns the row written. Bad input: :class:`CxrError`."""
        try:
            item, slot = int(body["item"]), int(body["slot"])
            rating, artefact, note = (str(body.get(k) or "") for k in ("rating", "artefact", "note"))
        except (KeyError, TypeError, ValueError):
            raise CxrError("a rating needs item, slot (numbers) and rating") from None
        if not (0 <= item < len(self.run.items) and 0 <= slot < len(self.slots[item])):
            raise CxrError(f"no map {slot} of image {item}")
        key = {
            "reader": self.reader,
            "arch": self.run.arch,
            "seed": self.run.seed,
            "image": self.run.items[item]["image"],
            "method": self.method(item, slot),
        }
        if rating:
            rt.check_rating(rating, artefact, note, where=f"image {key['image']}")
        row = key | {
            "rating": rating,
            "artefact": artefact,
            "note": note,
            "blinded": str(self.blinded),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with self._file_locked() as table:
            table = rt.upsert(table, row) if rating else rt.remove(table, key)
            rt.write_reader(self.file, table)  # on disk before the page hears "saved"
            self.table = table
        return {"item": item, "slot": slot, "rating": rating, "artefact": artefact, "note": note, "time": row["time"]}


def page() -> bytes:
    return resources.files("cxrexplain.viewer").joinpath("page.html").read_bytes()


class Handler(BaseHTTPRequestHandler):
    session: Session  # set on the subclass made by make_server
    server_version = "cxrexplain-viewer"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, kind: str, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: object, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _own_host(self) -> bool:
        port = self.server.server_address[1]
        if self.headers.get("Host") in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return True
        self._json({"error": "requests must be addressed to this viewer on 127.0.0.1"}, HTTPStatus.FORBIDDEN)
        return False

    def do_GET(self) -> None:
        if not self._own_host():
            return
        s, path = self.session, self.path.split("?")[0]
        if path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, page(), "text/html; charset=utf-8")
        try:
            if path == "/api/state":
                return self._json(s.state())
            if path == "/api/ratings":
                return self._json(s.ratings())
        except CxrError as error:  # the reader's file was broken by hand while the viewer ran
            return self._json({"error": str(error)}, HTTPStatus.INTERNAL_SERVER_ERROR)
        if (m := _IMAGE.fullmatch(path)) and int(m[1]) < len(s.run.items):
            return self._send(HTTPStatus.OK, s.run.radiograph_png(int(m[1])), "image/png", cache=True)
        if (m := _MAP.fullmatch(path)) and int(m[1]) < len(s.run.items) and int(m[2]) < len(s.slots[int(m[1])]):
            png = s.run.overlay_png(s.method(int(m[1]), int(m[2])), int(m[1]))
            return self._send(HTTPStatus.OK, png, "image/png", cache=True)
        return self._json({"error": f"not found: {path}"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        if not self._own_host():
            return
        if self.path != "/api/rate":
            return self._json({"error": f"not found: {self.path}"}, HTTPStatus.NOT_FOUND)
        if self.headers.get_content_type() != "application/json":
            return self._json({"error": "a rating is sent as application/json"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            return self._json({"error": f"a rating is 1 to {MAX_BODY} bytes"}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise CxrError("a rating is a JSON object")
            return self._json(self.session.rate(body))
        except json.JSONDecodeError:
            return self._json({"error": "not JSON"}, HTTPStatus.BAD_REQUEST)
        except CxrError as error:
            return self._json({"error": str(error)}, HTTPStatus.BAD_REQUEST)


class _Server(ThreadingHTTPServer):
    """A reader who closes the tab or moves on while an overlay is still being sent drops the connection: that is
    logged at debug level, not printed as socketserver's traceback; any other error of a request is logged with its
    traceback (a bug of this viewer)."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: tuple) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):  # BrokenPipeError, ConnectionResetError, ConnectionAbortedError
            log.debug("viewer: %s closed the connection (%s)", client_address[0], type(error).__name__)
            return
        log.error("viewer: a request from %s failed", client_address[0], exc_info=error)


def make_server(session: Session, port: int = 0) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:``port`` (0: a free one) for ``session``; a port in use is a :class:`CxrError`."""
    handler = type("SessionHandler", (Handler,), {"session": session})
    try:
        server = _Server(("127.0.0.1", port), handler)
    except OSError as error:
        raise CxrError(f"cannot listen on 127.0.0.1:{port} ({error.strerror}); choose another --port") from None
    return server


@contextmanager
def serving(session: Session, port: int = 0) -> Iterator[str]:
    """The server running in a background thread while the block runs; yields its URL (for tests and scripts)."""
    server = make_server(session, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


__all__ = ["Handler", "Session", "make_server", "page", "serving"]
