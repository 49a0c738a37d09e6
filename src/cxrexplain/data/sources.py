"""The sources of ``data/raw/``: the NIH release (its official links, or a mirror of it) and the synthetic mirror.

:func:`fill_raw` makes the raw folder hold the NIH layout (:mod:`cxrexplain.data.layout`) for ``data.source`` and
records what it holds in ``SOURCE.json``. How each file is verified before it is trusted (a file that fails is never
kept under its final name, and one already there that fails is fetched again):

* the 12 archives: NIH's published MD5, and the gzip magic bytes (a web page served in their place is refused as soon
  as its ``Content-Type`` or first bytes show it, before the rest is downloaded);
* the four metadata files, for which NIH publishes no MD5: by content (:func:`layout.content_problem`: the exact CSV
  headers, the number of fields and an image name on every row, an image name on every line of the lists). With the
  official source (no ``data.mirror``) they must also have the release's row counts (112,120 images, 984 boxes,
  86,524 train/val and 25,596 test images). A mirror may serve a subset or the synthetic mirror, so its files are not
  held to those counts; when it publishes an ``MD5SUMS``, they are checked against it as well;
* the synthetic mirror: against the ``MD5SUMS`` it writes.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

from cxrexplain.config import DataParams, RetryParams
from cxrexplain.data import layout
from cxrexplain.data.download import RemoteFile, fetch_all, md5_file, resolve_sources
from cxrexplain.data.synth import read_manifest, synth_index, write_mirror
from cxrexplain.errors import CxrError
from cxrexplain.io import write_json

log = logging.getLogger("cxrexplain.download")

SOURCE_FILE = "SOURCE.json"
_MIRROR_FILES = (*layout.ARCHIVE_NAMES, *layout.METADATA_FILES, layout.MD5_MANIFEST)


def fill_raw(data: DataParams, raw_dir: Path, *, workers: int = 1, show_progress: bool = True) -> None:
    """Make ``raw_dir`` hold the verified NIH layout for ``data``: skip verified files, resume partial ones.

    Raises:
        CxrError: a file cannot be fetched or fails its checks (the message names it, its source and what to do),
            the synthetic mirror would overwrite a real download, or ``data.source`` is ``dicom`` (no download).
    """
    if data.source == "dicom":
        raise CxrError(
            "data.source: dicom has nothing to download: data/raw/ holds your DICOM files and labels CSV, which the "
            "sample stage reads (README: Real radiographs as DICOM)"
        )
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    if data.source == "synthetic":
        _synthetic(data, raw_dir, workers=workers, show_progress=show_progress)
    else:
        _nih(data, raw_dir, show_progress=show_progress)
    write_json(raw_dir / SOURCE_FILE, describe_source(data))


def describe_source(data: DataParams) -> dict:
    """What the raw folder should hold for ``data``: compared with ``SOURCE.json`` to detect a change of source."""
    if data.source == "synthetic":
        return {"source": "synthetic", "synthetic": data.synthetic.model_dump(mode="json")}
    return {"source": "nih", "mirror": data.mirror}


def verify_manifest(raw_dir: Path) -> list[str]:
    """Names of the files of ``MD5SUMS`` that are missing or whose MD5 differs (empty: all verified)."""
    manifest = Path(raw_dir) / layout.MD5_MANIFEST
    if not manifest.is_file():
        return [layout.MD5_MANIFEST]
    return [
        name
        for name, digest in read_manifest(manifest).items()
        if not (raw_dir / name).is_file() or md5_file(raw_dir / name) != digest
    ]


def nih_files(data: DataParams, raw_dir: Path) -> list[RemoteFile]:
    """The files to fetch, metadata first (small, and a wrong source shows there before 42 GB of archives).

    Without a mirror only the 12 archives (NIH has no link for the metadata, which must be in ``raw_dir``); with one,
    the metadata files too, their MD5 taken from the mirror's ``MD5SUMS`` when it has one.
    """
    names = list(layout.ARCHIVE_NAMES) if not data.mirror else [*layout.METADATA_FILES, *layout.ARCHIVE_NAMES]
    md5s: dict[str, str | None] = {a.name: a.md5 for a in layout.NIH_ARCHIVES}
    if data.mirror:
        md5s.update(_mirror_manifest(data, raw_dir))
    checks = {name: partial(layout.content_problem, name) for name in names}
    default_urls = {a.name: a.url for a in layout.NIH_ARCHIVES}
    return resolve_sources(names, default_urls=default_urls, md5s=md5s, mirror=data.mirror, checks=checks)


def _read_source(raw_dir: Path) -> dict | None:
    path = raw_dir / SOURCE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise CxrError(f"{path}: not valid JSON ({error}); delete it and re-run") from None


def _synthetic(data: DataParams, raw_dir: Path, *, workers: int, show_progress: bool) -> None:
    previous = _read_source(raw_dir)
    if previous == describe_source(data) and not verify_manifest(raw_dir):
        log.info("%s already holds the synthetic mirror for these params, verified by MD5: nothing to do", raw_dir)
        return
    if previous is not None and previous.get("source") == "nih":
        raise CxrError(
            f"{raw_dir} holds a real NIH download; the synthetic mirror would overwrite it. Move it away "
            "(or point data.mirror at it later) before switching data.source to synthetic"
        )
    spec = data.synthetic
    log.info(
        "generating the synthetic NIH-format mirror (%d patients, %d px, seed %d): NOT medical data",
        spec.patients,
        spec.image_size,
        spec.seed,
    )
    index = synth_index(
        spec.patients,
        image_size=spec.image_size,
        pneumonia_fraction=spec.pneumonia_fraction,
        opacity_scale=spec.opacity_scale,
        seed=spec.seed,
    )
    write_mirror(
        index,
        raw_dir,
        image_size=spec.image_size,
        seed=spec.seed,
        opacity_contrast=spec.opacity_contrast,
        workers=workers,
        show_progress=show_progress,
    )
    bad = verify_manifest(raw_dir)
    if bad:
        raise CxrError(f"{raw_dir}: generated files fail their MD5 check: {', '.join(bad)}")


def _nih(data: DataParams, raw_dir: Path, *, show_progress: bool) -> None:
    previous = _read_source(raw_dir)
    if previous is not None and previous.get("source") == "synthetic":
        log.warning("%s holds the synthetic mirror: removing it before the NIH download", raw_dir)
        for name in (*_MIRROR_FILES, SOURCE_FILE):
            (raw_dir / name).unlink(missing_ok=True)
    if not data.mirror:
        _check_official_metadata(raw_dir)
    fetch_all(nih_files(data, raw_dir), raw_dir, retry=data.retry, show_progress=show_progress)


def _check_official_metadata(raw_dir: Path) -> None:
    """The four metadata files placed by hand are NIH's: present, in format, with the release's row counts."""
    missing = [n for n in layout.METADATA_FILES if not (raw_dir / n).is_file()]
    if missing:
        raise CxrError(
            f"{', '.join(missing)}: NIH publishes no direct link for the metadata files. Download them from "
            f"{layout.NIH_BOX_FOLDER} into {raw_dir}/, or set data.mirror to a base URL or local directory that has "
            "them (e.g. a Kaggle copy); the 12 archives are then fetched from NIH Box"
        )
    for name in layout.METADATA_FILES:
        problem = layout.content_problem(name, raw_dir / name, release_rows=True)
        if problem is not None:
            raise CxrError(
                f"{raw_dir / name} is not NIH's {name}: {problem}. Download it again from {layout.NIH_BOX_FOLDER} "
                f"into {raw_dir}/, or set data.mirror to a base URL or local directory that has the NIH files"
            )


def _mirror_manifest(data: DataParams, raw_dir: Path) -> dict[str, str | None]:
    """MD5s of the metadata files from the mirror's ``MD5SUMS`` (fetched once, checked as one), if it has one."""
    (manifest,) = resolve_sources(
        [layout.MD5_MANIFEST],
        default_urls={},
        md5s={},
        mirror=data.mirror,
        checks={layout.MD5_MANIFEST: _manifest_problem},
    )
    once = RetryParams(
        attempts=1,
        timeout_s=data.retry.timeout_s,
        min_bytes_per_s=data.retry.min_bytes_per_s,
        speed_window_s=data.retry.speed_window_s,
    )
    try:
        fetch_all([manifest], raw_dir, retry=once, show_progress=False)
    except CxrError as error:
        log.info("no usable %s on the mirror (%s): metadata files are checked by content only", manifest.name, error)
        return {}
    published = read_manifest(raw_dir / layout.MD5_MANIFEST)
    return {name: published.get(name) for name in layout.METADATA_FILES}


def _manifest_problem(path: Path) -> str | None:
    try:
        read_manifest(path)
    except CxrError as error:
        return str(error)
    return None
