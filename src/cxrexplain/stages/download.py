"""Stage ``download``: put the NIH mirror under ``data/raw/`` (official archives, a mirror of them, or synthetic).

Outputs (kept across runs, ``persist`` in dvc.yaml, so a re-run resumes instead of starting over): the 12
``images_0NN.tar.gz``, the four metadata files, and ``SOURCE.json`` that says what the folder holds. How each file is
verified (MD5, content, row counts) is :mod:`cxrexplain.data.sources`'s to say. With ``data.source: dicom``
``data/raw/`` holds the user's DICOM files and labels CSV: the stage only makes sure the folder exists, and touches
nothing in it.
"""

from __future__ import annotations

import logging

from cxrexplain.config import Params
from cxrexplain.data.archives import write_index
from cxrexplain.data.sources import fill_raw
from cxrexplain.workspace import Workspace

log = logging.getLogger("cxrexplain.download")


def run(params: Params, ws: Workspace | None = None, *, show_progress: bool = True) -> None:
    """Fill ``ws.raw`` (the repository's ``data/raw/`` by default) for ``params.data``; fail loudly on bad files."""
    ws = Workspace() if ws is None else ws
    if params.data.source == "dicom":  # the user's files are the raw data: nothing to fetch, nothing to write
        ws.raw.mkdir(parents=True, exist_ok=True)
        log.info(
            "data.source: dicom: nothing to download; sample reads the DICOM files and %s in %s",
            params.data.dicom.labels,
            ws.raw,
        )
        return
    fill_raw(params.data, ws.raw, workers=params.workers, show_progress=show_progress)
    write_index(ws.raw, workers=params.workers)  # archive_index.csv: which archive holds which image (sample reads it)
    log.info("%s holds the %s data, verified", ws.raw, params.data.source)
