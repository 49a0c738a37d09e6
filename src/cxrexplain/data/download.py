"""Resumable, verified, atomic downloads of the NIH ChestX-ray14 files (or of a mirror of them).

Each file is streamed into ``<dest_dir>/<name>.part``; an interrupted transfer resumes from the ``.part`` with an HTTP
``Range`` request (on a re-run too), transient failures (connection errors, timeouts, cut transfers, 5xx) are retried
with exponential backoff, and the complete ``.part`` is checked against the published MD5 before it is atomically
renamed to its final name, so a file under its final name is always complete and verified (when an MD5 is known).

A source is an ``http(s)://`` URL or a path to a local file (a local mirror directory, e.g. a Kaggle copy); every error
a user can cause is a :class:`~cxrexplain.errors.CxrError` that names the file and the source and says what to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
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

from cxrexplain.errors import CxrError

__all__ = ["RemoteFile", "RetryPolicy", "fetch", "fetch_all", "md5_file", "resolve_sources"]

logger = logging.getLogger("cxrexplain.download")

_CHUNK = 1 << 16
_PART_SUFFIX = ".part"
_CORRUPT_SUFFIX = ".corrupt"
_ADVICE = (
    "the link may have moved: set data.mirror in params.yaml to a base URL or a local directory with the same file "
    "names (e.g. a Kaggle copy), or run the demo on the synthetic mirror: source: synthetic"
)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch.

    Attributes:
        name: Final file name in the destination directory, e.g. ``images_001.tar.gz``.
        url: An ``http(s)://`` URL, or a local filesystem path (a file of a local mirror directory); ``file://`` URLs
            are read as local paths.
        md5: Expected lower- or upper-case hex MD5, or ``None`` when none is published (the caller then validates the
            content itself).
    """

    name: str
    url: str
    md5: str | None


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` tries in all, sleeping ``backoff_s * 2**k`` (capped) before retry ``k + 1``.

    Attributes:
        attempts: Total number of tries per file (at least 1).
        backoff_s: Sleep before the first retry, in seconds; doubled for each further retry.
        max_backoff_s: Upper bound of one sleep, in seconds.
        timeout_s: Connect timeout and read timeout (longest silence while streaming) of each request, in seconds.
    """

    attempts: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise CxrError(f"download retry attempts must be at least 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise CxrError(
                f"download backoff must not be negative, got backoff_s={self.backoff_s}, "
                f"max_backoff_s={self.max_backoff_s}"
            )
        if self.timeout_s <= 0:
            raise CxrError(f"download timeout must be positive, got timeout_s={self.timeout_s}")

    def delay(self, retry: int) -> float:
        """Seconds to sleep before retry number ``retry`` (0 for the first retry)."""
        return min(self.backoff_s * 2**retry, self.max_backoff_s)


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


def _checksum_error(file: RemoteFile, actual: str) -> CxrError:
    return CxrError(
        f"MD5 mismatch for {file.name} downloaded from {file.url}: expected {file.md5}, got {actual}; the partial "
        f"file was deleted. Re-run to download it again; if it keeps failing the source is serving a different file: "
        f"set data.mirror in params.yaml to a base URL or a local directory with the same file names "
        f"(e.g. a Kaggle copy)"
    )


# --------------------------------------------------------------------------------------------------------------------
# Public API


def fetch(
    file: RemoteFile,
    dest_dir: Path,
    *,
    retry: RetryPolicy = RetryPolicy(),
    progress: Progress | None = None,
) -> Path:
    """Download ``file`` into ``dest_dir`` (created if needed) and return ``dest_dir / file.name``.

    A final file that is already there is kept without any network access when its MD5 matches (or no MD5 is known);
    one whose MD5 does not match is renamed to ``<name>.corrupt`` and downloaded again. The transfer goes to
    ``<name>.part``, resumes from it, is verified, then renamed atomically. When ``progress`` is given a task named
    after the file tracks the bytes.

    Raises:
        CxrError: the source is missing or refuses the file (HTTP 4xx), the network or server keeps failing after
            ``retry.attempts`` tries, or the MD5 of the complete download does not match ``file.md5``.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / file.name
    part = dest_dir / (file.name + _PART_SUFFIX)
    task = progress.add_task(file.name, total=None) if progress is not None else None

    if final.is_file():
        if file.md5 is None or md5_file(final) == file.md5.lower():
            logger.info("%s already present%s, skipping", final, "" if file.md5 is None else " and verified")
            if progress is not None and task is not None:
                size = final.stat().st_size
                progress.update(task, total=size, completed=size)
            return final
        corrupt = dest_dir / (file.name + _CORRUPT_SUFFIX)
        os.replace(final, corrupt)
        logger.warning("%s does not match MD5 %s: renamed it to %s, downloading it again", final, file.md5, corrupt)

    if _is_http(file.url):
        actual = _download_http(file, part, retry, progress, task)
    else:
        actual = _copy_local(file, part, progress, task)

    if file.md5 is not None and actual != file.md5.lower():
        part.unlink(missing_ok=True)
        raise _checksum_error(file, actual)
    os.replace(part, final)
    logger.info("downloaded %s%s", final, "" if file.md5 is None else f" (MD5 {actual} verified)")
    return final


def fetch_all(
    files: Sequence[RemoteFile],
    dest_dir: Path,
    *,
    retry: RetryPolicy = RetryPolicy(),
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
) -> list[RemoteFile]:
    """Where to fetch each of ``names`` from.

    Args:
        names: File names, in the order wanted.
        default_urls: Official link of each name (a name may have none, e.g. a metadata file without a direct link).
        md5s: Published MD5 of each name; a name missing here (or mapped to ``None``) is not verified.
        mirror: ``None`` (or blank) for the official links; an ``http(s)://host/base`` URL under which every name is
            served as ``base/<name>``; otherwise a local directory (``~`` expanded) holding the same file names.

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
        out.append(RemoteFile(name=name, url=url, md5=md5s.get(name)))
    return out


# --------------------------------------------------------------------------------------------------------------------
# HTTP


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _download_http(
    file: RemoteFile, part: Path, retry: RetryPolicy, progress: Progress | None, task: TaskID | None
) -> str:
    """Bring ``part`` to the complete file, retrying transient failures; return its hex MD5."""
    with requests.Session() as session:
        for attempt in range(retry.attempts):
            try:
                return _attempt_http(session, file, part, retry, progress, task)
            except _Transient as exc:
                if attempt + 1 >= retry.attempts:
                    raise _gave_up(file, retry.attempts, exc) from None
                delay = retry.delay(attempt)
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
    retry: RetryPolicy,
    progress: Progress | None,
    task: TaskID | None,
) -> str:
    """One request: resume or (re)start ``part``, stream into it and return the MD5 of the complete ``part``."""
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
        if status == 416 and offset:  # nothing left to send: the .part is complete (or too big, which the MD5 catches)
            logger.info("%s: server has nothing beyond byte %d, verifying the partial file", file.name, offset)
            _set_progress(progress, task, total=offset, completed=offset)
            return _hash_file(part).hexdigest()
        if status >= 500:
            raise _Transient(f"HTTP {status} {response.reason or ''}".rstrip())
        if status not in (200, 206):  # 4xx (other than 416 on a resume), or an unexpected 1xx/2xx/3xx
            raise _http_error(file, status, response.reason or "")

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
        try:
            with part.open(mode) as fh:
                for block in _stream(response):
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
    return digest.hexdigest()


def _stream(response: requests.Response) -> Iterator[bytes]:
    """The raw (not content-decoded) body, network failures turned into :class:`_Transient`."""
    try:
        yield from response.raw.stream(_CHUNK, decode_content=False)
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
