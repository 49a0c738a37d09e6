"""Stage ``download``: put the NIH mirror under ``data/raw/`` (official archives, a mirror of them, or synthetic).

Outputs (kept across runs, ``persist`` in dvc.yaml, so a re-run resumes instead of starting over):
``data/raw/images_0NN.tar.gz``, the four metadata files, and ``SOURCE.json`` that says what the folder holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cxrexplain.config import Params
from cxrexplain.data import layout, metadata
from cxrexplain.data.download import RemoteFile, RetryPolicy, fetch_all, md5_file, resolve_sources
from cxrexplain.data.synth import read_manifest, synth_index, write_mirror
from cxrexplain.errors import CxrError
from cxrexplain.io import write_json
from cxrexplain.workspace import Workspace

RAW_DIR = Workspace().raw  # the workspace's path

log = logging.getLogger("cxrexplain.download")

SOURCE_FILE = "SOURCE.json"
_MIRROR_FILES = (*layout.ARCHIVE_NAMES, *layout.METADATA_FILES, layout.MD5_MANIFEST)


def describe_source(params: Params) -> dict:
    """What ``data/raw`` should hold for these params: compared with ``SOURCE.json`` to detect a change of source."""
    if params.data.source == "synthetic":
        return {"source": "synthetic", "synthetic": params.data.synthetic.model_dump(mode="json")}
    return {"source": "nih", "mirror": params.data.mirror}


def _read_source(raw_dir: Path) -> dict | None:
    path = raw_dir / SOURCE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise CxrError(f"{path}: not valid JSON ({error}); delete it and re-run") from None


def verify_manifest(raw_dir: Path) -> list[str]:
    """Names of the files of ``MD5SUMS`` that are missing or whose MD5 differs (empty: all verified)."""
    manifest = raw_dir / layout.MD5_MANIFEST
    if not manifest.is_file():
        return [layout.MD5_MANIFEST]
    return [
        name
        for name, digest in read_manifest(manifest).items()
        if not (raw_dir / name).is_file() or md5_file(raw_dir / name) != digest
    ]


def _synthetic(params: Params, raw_dir: Path, show_progress: bool) -> None:
    previous = _read_source(raw_dir)
    wanted = describe_source(params)
    if previous == wanted and not verify_manifest(raw_dir):
        log.info("%s already holds the synthetic mirror for these params, verified by MD5: nothing to do", raw_dir)
        return
    if previous is not None and previous.get("source") == "nih":
        raise CxrError(
            f"{raw_dir} holds a real NIH download; the synthetic mirror would overwrite it. Move it away "
            "(or point data.mirror at it later) before switching data.source to synthetic"
        )
    spec = params.data.synthetic
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
        workers=params.workers,
        show_progress=show_progress,
    )
    bad = verify_manifest(raw_dir)
    if bad:
        raise CxrError(f"{raw_dir}: generated files fail their MD5 check: {', '.join(bad)}")
    write_json(raw_dir / SOURCE_FILE, wanted)


def nih_sources(params: Params, raw_dir: Path) -> list[RemoteFile]:
    """The 12 archives (published MD5s) and the metadata files (MD5 from the mirror's ``MD5SUMS`` when it has one)."""
    names = [*layout.ARCHIVE_NAMES, *layout.METADATA_FILES]
    md5s: dict[str, str | None] = {a.name: a.md5 for a in layout.NIH_ARCHIVES}
    md5s.update(dict.fromkeys(layout.METADATA_FILES))
    default_urls = {a.name: a.url for a in layout.NIH_ARCHIVES}
    if params.data.mirror:
        manifest = resolve_sources(
            [layout.MD5_MANIFEST], default_urls={}, md5s={layout.MD5_MANIFEST: None}, mirror=params.data.mirror
        )
        try:
            fetch_all(
                manifest,
                raw_dir,
                retry=RetryPolicy(attempts=1, timeout_s=params.data.retry.timeout_s),
                show_progress=False,
            )
        except CxrError:
            log.info("the mirror has no %s: metadata files are checked by their headers only", layout.MD5_MANIFEST)
        else:
            published = read_manifest(raw_dir / layout.MD5_MANIFEST)
            for name in layout.METADATA_FILES:
                md5s[name] = published.get(name)
    return resolve_sources(names, default_urls=default_urls, md5s=md5s, mirror=params.data.mirror)


def _nih(params: Params, raw_dir: Path, show_progress: bool) -> None:
    previous = _read_source(raw_dir)
    if previous is not None and previous.get("source") == "synthetic":
        log.warning("%s holds the synthetic mirror: removing it before the NIH download", raw_dir)
        for name in (*_MIRROR_FILES, SOURCE_FILE):
            (raw_dir / name).unlink(missing_ok=True)
    missing_meta = [n for n in layout.METADATA_FILES if not (raw_dir / n).is_file()]
    if missing_meta and not params.data.mirror:
        raise CxrError(
            f"{', '.join(missing_meta)}: NIH publishes no direct link for the metadata files. Download them from "
            f"{layout.NIH_BOX_FOLDER} into {raw_dir}/, or set data.mirror to a base URL or local directory that has "
            "them (e.g. a Kaggle copy); the 12 archives are then fetched from NIH Box"
        )
    retry = params.data.retry
    fetch_all(
        nih_sources(params, raw_dir),
        raw_dir,
        retry=RetryPolicy(attempts=retry.attempts, backoff_s=retry.backoff_s, timeout_s=retry.timeout_s),
        show_progress=show_progress,
    )
    # No MD5 is published for the metadata: check that they are the NIH files by their exact headers.
    metadata.read_data_entry(raw_dir / layout.DATA_ENTRY)
    metadata.read_bbox_list(raw_dir / layout.BBOX_LIST)
    write_json(raw_dir / SOURCE_FILE, describe_source(params))


def run(params: Params, raw_dir: Path = RAW_DIR, *, show_progress: bool = True) -> None:
    """Fill ``raw_dir`` for ``params.data``: skip verified files, resume partial ones, fail loudly on bad ones."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    if params.data.source == "synthetic":
        _synthetic(params, raw_dir, show_progress)
    else:
        _nih(params, raw_dir, show_progress)
