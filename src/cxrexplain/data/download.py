"""Resumable, verified, atomic downloads of the NIH ChestX-ray14 files (or of a mirror of them).

Each file is streamed into ``<dest_dir>/<name>.part``; an interrupted transfer resumes from the ``.part`` with an HTTP
``Range`` request (on a re-run too), transient failures (connection errors, timeouts, cut transfers, 5xx, a transfer
slower than ``min_bytes_per_s`` on average over ``speed_window_s``) are retried with exponential backoff, and the
complete ``.part`` is checked by its content (the file's own check, e.g. :func:`cxrexplain.data.layout.content_problem`)
and against the published MD5 before it is atomically renamed to its final name. So a file under its final name is
always complete and verified: by MD5 when one is known, else by content. A page served instead of the file (an HTML
page with HTTP 200 is what a dead link returns) is refused as soon as its ``Content-Type`` or its first bytes show it.

A source is an ``http(s)://`` URL or a path to a local file (a local mirror directory, e.g. a Kaggle copy); every error
a user can cause is a :class:`~cxrexplain.errors.CxrError` that names the file and the source and says what to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
import urllib3.exceptions
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cxrexplain.config import RetryParams
from cxrexplain.errors import CxrError

__all__ = [
    "DEFAULT_RETRY",
    "ContentCheck",
    "RemoteFile",
    "fetch",
    "fetch_all",
    "md5_file",
    "resolve_sources",
    "retry_delay",
    "verify",
]

logger = logging.getLogger("cxrexplain.download")

_CHUNK = 1 << 16
_PART_SUFFIX = ".part"
_MAX_BACKOFF_S = 60.0  # longest sleep between two tries
DEFAULT_RETRY = RetryParams()  # data.retry's defaults
_SNIFF_BYTES = 512  # a body whose first bytes look like HTML is refused before the rest is downloaded
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")
_ADVICE = (
    "the link may have moved: set data.mirror in params.yaml to a base URL or a local directory with the same file "
    "names (e.g. a Kaggle copy), or run the demo on the synthetic mirror: source: synthetic"
)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


ContentCheck = Callable[[Path], str | None]
"""Checks a complete file by its content: why it is not the file wanted, or ``None`` when it is."""


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch.

    Attributes:
        name: Final file name in the destination directory, e.g. ``images_001.tar.gz``.
        url: An ``http(s)://`` URL, or a local filesystem path (a file of a local mirror directory); ``file://`` URLs
            are read as local paths.
        md5: Expected lower- or upper-case hex MD5, or ``None`` when none is published.
        check: Content check of the complete file (before its rename, and of a file already under the final name);
            ``None``: none. A file with neither ``md5`` nor ``check`` is trusted as received.
    """

    name: str
    url: str
    md5: str | None
    check: ContentCheck | None = None


def retry_delay(retry: RetryParams, k: int) -> float:
    """Seconds to sleep before retry number ``k`` (0 for the first): ``backoff_s * 2**k``, at most 60 s."""
    return min(retry.backoff_s * 2**k, _MAX_BACKOFF_S)


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of the file at ``path``, read ``chunk`` bytes at a time."""
    return _hash_file(Path(path), chunk).hexdigest()


def _hash_file(path: Path, chunk: int = 1 << 20) -> hashlib._Hash:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest


# --------------------------------------------------------------------------------------------------------------------
# Errors


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, cut transfer, 5xx); ``network`` marks a connect-level failure."""

    def __init__(self, reason: str, *, network: bool = False) -> None:
        super().__init__(reason)
        self.network = network


def _http_error(file: RemoteFile, status: int, reason: str) -> CxrError:
    return CxrError(f"cannot download {file.name} from {file.url}: HTTP {status} {reason}".rstrip() + f"; {_ADVICE}")


def _gave_up(file: RemoteFile, attempts: int, last: _Transient) -> CxrError:
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    if last.network:
        return CxrError(
            f"cannot download {file.name} from {file.url} after {tries} ({last}): no network? Check the network "
            f"connection and re-run (the download resumes where it stopped), or {_ADVICE}"
        )
    return CxrError(
        f"cannot download {file.name} from {file.url} after {tries} ({last}); re-run later (the download resumes "
        f"where it stopped), or {_ADVICE}"
    )


def _received(part: Path, content_type: str | None) -> str:
    """What the server sent: its ``Content-Type`` and the first bytes of the body (``part``)."""
    try:
        with part.open("rb") as fh:
            head = fh.read(48)
    except OSError:
        head = b""
    kind = "a local file" if content_type is None else f"Content-Type {content_type!r}"
    return f"received {kind} starting with {head!r}"


def _html_error(file: RemoteFile, content_type: str | None, head: bytes) -> CxrError:
    return CxrError(
        f"cannot download {file.name} from {file.url}: the server sent a web page instead of the file (Content-Type "
        f"{content_type!r}, first bytes {head[:48]!r}): the link is dead or needs a login. The page was not kept; "
        f"{_ADVICE}"
    )


def _content_error(file: RemoteFile, problem: str, received: str) -> CxrError:
    return CxrError(
        f"{file.name} from {file.url} is not the expected file: {problem} ({received}); it was not kept (a file "
        f"already under that name stays as it was). If the source serves a wrong file, {_ADVICE}"
    )


def _checksum_error(file: RemoteFile, actual: str) -> CxrError:
    return CxrError(
        f"MD5 mismatch for {file.name} downloaded from {file.url}: expected {file.md5}, got {actual}; the partial "
        f"file was deleted. Re-run to download it again; if it keeps failing the source is serving a different file: "
        f"set data.mirror in params.yaml to a base URL or a local directory with the same file names "
        f"(e.g. a Kaggle copy)"
    )


# --------------------------------------------------------------------------------------------------------------------
# Public API


def verify(file: RemoteFile, path: Path) -> str | None:
    """Why the file at ``path`` is not ``file`` (its content check, then its MD5), or ``None`` when it is."""
    if file.check is not None and (problem := file.check(path)) is not None:
        return problem
    if file.md5 is not None and (actual := md5_file(path)) != file.md5.lower():
        return f"MD5 {actual}, expected {file.md5}"
    return None


def fetch(
    file: RemoteFile,
    dest_dir: Path,
    *,
    retry: RetryParams = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> Path:
    """Download ``file`` into ``dest_dir`` (created if needed) and return ``dest_dir / file.name``.

    A final file that is already there and passes :func:`verify` is kept without any network access; one that fails
    is downloaded again and stays as it is until the new file has passed. The transfer goes to ``<name>.part``,
    resumes from it, is checked by content (``file.check``) and MD5, then renamed atomically onto the final name.
    When ``progress`` is given a task named after the file tracks the bytes.

    Raises:
        CxrError: the source is missing or refuses the file (HTTP 4xx), sends a web page instead of it, the network
            or server keeps failing (or stays slower than ``retry.min_bytes_per_s``) for ``retry.attempts`` tries, or
            the complete download fails its content check or its MD5.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / file.name
    part = dest_dir / (file.name + _PART_SUFFIX)
    task = progress.add_task(file.name, total=None) if progress is not None else None

    if final.is_file():
        problem = verify(file, final)
        if problem is None:
            verified = "" if file.md5 is None and file.check is None else " and verified"
            logger.info("%s already present%s, skipping", final, verified)
            _set_progress(progress, task, total=final.stat().st_size, completed=final.stat().st_size)
            return final
        logger.warning("%s is not the expected file (%s): downloading it again, keeping it until then", final, problem)

    if _is_http(file.url):
        actual, content_type = _download_http(file, part, retry, progress, task)
    else:
        actual, content_type = _copy_local(file, part, progress, task), None

    problem = file.check(part) if file.check is not None else None
    if problem is not None:
        error = _content_error(file, problem, _received(part, content_type))
        part.unlink(missing_ok=True)
        raise error
    if file.md5 is not None and actual != file.md5.lower():
        part.unlink(missing_ok=True)
        raise _checksum_error(file, actual)
    os.replace(part, final)
    checked = " (content checked)" if file.check is not None else ""
    logger.info("downloaded %s%s%s", final, "" if file.md5 is None else f" (MD5 {actual} verified)", checked)
    return final


def fetch_all(
    files: Sequence[RemoteFile],
    dest_dir: Path,
    *,
    retry: RetryParams = DEFAULT_RETRY,
    show_progress: bool = True,
) -> list[Path]:
    """:func:`fetch` each file in turn into ``dest_dir``; one progress display (bytes, speed, ETA), a bar per file.

    Returns the final paths in the order of ``files``. The first failure raises (files already fetched stay).
    """
    if not show_progress:
        return [fetch(f, dest_dir, retry=retry) for f in files]
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with progress:
        return [fetch(f, dest_dir, retry=retry, progress=progress) for f in files]


def resolve_sources(
    names: Sequence[str],
    *,
    default_urls: Mapping[str, str],
    md5s: Mapping[str, str | None],
    mirror: str | None,
    checks: Mapping[str, ContentCheck] | None = None,
) -> list[RemoteFile]:
    """Where to fetch each of ``names`` from.

    Args:
        names: File names, in the order wanted.
        default_urls: Official link of each name (a name may have none, e.g. a metadata file without a direct link).
        md5s: Published MD5 of each name; a name missing here (or mapped to ``None``) is not verified.
        mirror: ``None`` (or blank) for the official links; an ``http(s)://host/base`` URL under which every name is
            served as ``base/<name>``; otherwise a local directory (``~`` expanded) holding the same file names.
        checks: Content check of each name (see :class:`RemoteFile`); a name missing here has none.

    Raises:
        CxrError: a name has no official link and no mirror is set.
    """
    if mirror is not None and not mirror.strip():
        mirror = None
    out: list[RemoteFile] = []
    for name in names:
        if mirror is None:
            url = default_urls.get(name)
            if url is None:
                raise CxrError(
                    f"no download link is known for {name}: set data.mirror in params.yaml to a base URL or a local "
                    f"directory holding {name}, or place the file in the destination directory by hand"
                )
        elif _is_http(mirror):
            url = mirror.rstrip("/") + "/" + name
        else:
            url = str(Path(mirror).expanduser() / name)
        out.append(RemoteFile(name=name, url=url, md5=md5s.get(name), check=(checks or {}).get(name)))
    return out


# --------------------------------------------------------------------------------------------------------------------
# HTTP


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _download_http(
    file: RemoteFile, part: Path, retry: RetryParams, progress: Progress | None, task: TaskID | None
) -> tuple[str, str | None]:
    """Bring ``part`` to the complete file, retrying transient failures; return its hex MD5 and the Content-Type."""
    with requests.Session() as session:
        for attempt in range(retry.attempts):
            try:
                return _attempt_http(session, file, part, retry, progress, task)
            except _Transient as exc:
                if attempt + 1 >= retry.attempts:
                    raise _gave_up(file, retry.attempts, exc) from None
                delay = retry_delay(retry, attempt)
                logger.warning(
                    "download of %s from %s failed (attempt %d/%d): %s; retrying in %.2f s",
                    file.name,
                    file.url,
                    attempt + 1,
                    retry.attempts,
                    exc,
                    delay,
                )
                time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _attempt_http(
    session: requests.Session,
    file: RemoteFile,
    part: Path,
    retry: RetryParams,
    progress: Progress | None,
    task: TaskID | None,
) -> tuple[str, str | None]:
    """One request: resume or (re)start ``part``, stream into it; return the complete ``part``'s MD5, Content-Type.

    A web page (HTML ``Content-Type``, or HTML first bytes of a body written from byte 0) is refused at once.
    """
    offset = part.stat().st_size if part.is_file() else 0
    # identity: the bytes on disk must be the bytes served (a .tar.gz is often labelled Content-Encoding: gzip).
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = session.get(file.url, headers=headers, stream=True, timeout=retry.timeout_s)
    except requests.ReadTimeout as exc:  # connected, but no answer in time
        raise _Transient(f"no answer within {retry.timeout_s} s: {_describe(exc)}") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:  # refused, DNS failure, unreachable, connect timeout
        raise _Transient(_describe(exc), network=True) from exc
    except requests.RequestException as exc:  # invalid URL, too many redirects: retrying will not help
        raise CxrError(f"cannot download {file.name} from {file.url}: {exc}; {_ADVICE}") from exc

    with response:
        status = response.status_code
        content_type = response.headers.get("Content-Type")
        if status == 416 and offset:  # nothing left to send: the .part is complete (or too big, which the MD5 catches)
            logger.info("%s: server has nothing beyond byte %d, verifying the partial file", file.name, offset)
            _set_progress(progress, task, total=offset, completed=offset)
            return _hash_file(part).hexdigest(), content_type
        if status >= 500:
            raise _Transient(f"HTTP {status} {response.reason or ''}".rstrip())
        if status not in (200, 206):  # 4xx (other than 416 on a resume), or an unexpected 1xx/2xx/3xx
            raise _http_error(file, status, response.reason or "")
        if (content_type or "").split(";")[0].strip().lower() in _HTML_TYPES:
            raise _html_error(file, content_type, _first_bytes(response))

        length = _int_header(response, "Content-Length")
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start is None:
                start = offset  # no Content-Range on a 206: the server answered the range we asked for
            if start == offset and offset:
                digest = _hash_file(part)
                mode = "ab"
            elif start == 0:
                digest, mode = hashlib.md5(usedforsecurity=False), "wb"
            else:
                part.unlink(missing_ok=True)
                raise _Transient(f"server answered range from byte {start} instead of {offset}; restarting")
            if total is None and length is not None:
                total = start + length
        else:
            if offset:
                logger.info("%s: server ignored the Range request, restarting from zero", file.name)
            start, total = 0, length
            digest, mode = hashlib.md5(usedforsecurity=False), "wb"

        _set_progress(progress, task, total=total, completed=start)
        received = 0
        head = bytearray() if mode == "wb" else None  # the body's first bytes, sniffed once for HTML
        try:
            with part.open(mode) as fh:
                for block in _stream(response, retry):
                    if head is not None:
                        head += block[: _SNIFF_BYTES - len(head)]
                        if len(head) >= _SNIFF_BYTES:
                            _refuse_html(file, part, content_type, bytes(head))
                            head = None
                    fh.write(block)
                    digest.update(block)
                    received += len(block)
                    if progress is not None and task is not None:
                        progress.advance(task, len(block))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise CxrError(f"cannot write {part} while downloading {file.name} from {file.url}: {exc}") from exc
        if length is not None and received < length:
            raise _Transient(f"incomplete read: got {received} of {length} bytes")
        if head is not None:  # the whole body was shorter than the sniffed prefix
            _refuse_html(file, part, content_type, bytes(head))
    return digest.hexdigest(), content_type


def _refuse_html(file: RemoteFile, part: Path, content_type: str | None, head: bytes) -> None:
    """Raise (and drop ``part``) when ``head``, the first bytes of the file, are those of a web page."""
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS):
        part.unlink(missing_ok=True)
        raise _html_error(file, content_type, head)


def _first_bytes(response: requests.Response) -> bytes:
    """Up to 48 bytes of the body, for an error message (nothing when they do not come)."""
    try:
        return response.raw.read1(48, decode_content=False)
    except (urllib3.exceptions.HTTPError, OSError):  # only a detail of the message: never hide the real error
        return b""


class _SpeedFloor:
    """Abandons a transfer whose average speed over a window of ``speed_window_s`` is under ``min_bytes_per_s``.

    The windows follow one another from the first byte of the body; the check runs when a block arrives, so a stalled
    transfer ends after at most ``speed_window_s`` plus the read timeout ``timeout_s``.
    """

    def __init__(self, retry: RetryParams) -> None:
        self.min_rate, self.window = retry.min_bytes_per_s, retry.speed_window_s
        self.start, self.count = time.monotonic(), 0

    def add(self, size: int) -> None:
        self.count += size
        elapsed = time.monotonic() - self.start
        if elapsed < self.window:
            return
        if self.count < self.min_rate * elapsed:
            raise _Transient(
                f"transfer too slow: {self.count / elapsed:.0f} bytes/s over {elapsed:.1f} s, under "
                f"data.retry.min_bytes_per_s = {self.min_rate:g}"
            )
        self.start, self.count = time.monotonic(), 0


def _stream(response: requests.Response, retry: RetryParams) -> Iterator[bytes]:
    """The raw (not content-decoded) body as it arrives, failures and too slow a transfer as :class:`_Transient`.

    ``read1`` returns whatever one read of the socket brings (``read`` would wait for a whole chunk, so a trickle
    would go unseen for hours).
    """
    floor = _SpeedFloor(retry)
    try:
        while block := response.raw.read1(_CHUNK, decode_content=False):
            yield block
            floor.add(len(block))
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise _Transient(f"read timed out: {exc}") from exc
    except urllib3.exceptions.ProtocolError as exc:  # includes IncompleteRead: connection cut mid-file
        first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else _describe(exc)
        raise _Transient(first if "broken" in first.lower() else f"connection broken: {first}") from exc
    except (urllib3.exceptions.HTTPError, requests.RequestException, ConnectionError, TimeoutError) as exc:
        raise _Transient(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    """A short reason: requests' ``Max retries exceeded ... (Caused by X(...): reason)`` shortened to the reason."""
    inner: object = exc.args[0] if exc.args else None
    if isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
        inner = inner.reason
    text = str(inner) if isinstance(inner, BaseException) else (str(exc) or type(exc).__name__)
    if text.startswith("HTTP") and "): " in text:  # "HTTPConnection(host=..., port=...): Failed to ..."
        text = text.split("): ", 1)[1]
    return text if len(text) <= 300 else text[:297] + "..."


def _int_header(response: requests.Response, name: str) -> int | None:
    value = response.headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` of ``bytes start-end/total``; ``None`` for what is absent or unknown."""
    match = _CONTENT_RANGE.match(value or "")
    if match is None:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (None if total == "*" else int(total))


def _set_progress(progress: Progress | None, task: TaskID | None, *, total: int | None, completed: int) -> None:
    if progress is not None and task is not None:
        progress.update(task, total=total, completed=completed)


# --------------------------------------------------------------------------------------------------------------------
# Local mirror


def _local_path(url: str) -> Path:
    if url.lower().startswith("file://"):
        return Path(unquote(urlparse(url).path))
    return Path(url).expanduser()


def _copy_local(file: RemoteFile, part: Path, progress: Progress | None, task: TaskID | None) -> str:
    """Copy the local source into ``part`` (from zero) in chunks; return its hex MD5."""
    source = _local_path(file.url)
    if not source.is_file():
        raise CxrError(
            f"cannot copy {file.name}: {source} does not exist or is not a file; put {file.name} in that directory, "
            f"or set data.mirror in params.yaml to a base URL or another local directory with the same file names"
        )
    digest = hashlib.md5(usedforsecurity=False)
    try:
        total = source.stat().st_size
        _set_progress(progress, task, total=total, completed=0)
        with source.open("rb") as src, part.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
                digest.update(block)
                if progress is not None and task is not None:
                    progress.advance(task, len(block))
            dst.flush()
            os.fsync(dst.fileno())
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise CxrError(f"cannot copy {file.name} from {source} to {part}: {exc}") from exc
    return digest.hexdigest()
