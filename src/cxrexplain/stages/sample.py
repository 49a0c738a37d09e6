"""Stage ``sample``: pick the Pneumonia / No Finding cohort and cache its images (``data/cache/``).

Writes ``data/cache/{images.npy,index.csv,rejects.csv}`` as one atomic folder and ``metrics/sample.json`` with the
real counts, so a shortfall (ChestX-ray14 has 1,431 Pneumonia images, not the study's 5,000) is on record, not only on
screen. The work is :func:`cxrexplain.data.sample.sample_cache`. With ``data.source: dicom`` ``data/raw/`` holds
the user's DICOM files and labels CSV instead of the NIH layout, and the cache is made from them
(:mod:`cxrexplain.stages.sample_dicom`, the parameters in ``data.dicom``).
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.panel import Panel

from cxrexplain.config import Params
from cxrexplain.data import layout
from cxrexplain.data.sample import sample_cache
from cxrexplain.errors import CxrError
from cxrexplain.io import write_json
from cxrexplain.stages import sample_dicom
from cxrexplain.workspace import Workspace

log = logging.getLogger("cxrexplain.sample")


def run(params: Params, ws: Workspace | None = None, *, show_progress: bool = True) -> dict:
    """Select, stream, decode and cache; returns the metrics written to ``metrics/sample.json``."""
    ws = ws or Workspace()
    if params.data.source == "dicom":
        return _from_dicom(params, ws, show_progress=show_progress)
    metadata = [ws.raw / layout.DATA_ENTRY, ws.raw / layout.BBOX_LIST]
    ws.require(metadata, needed_by="sample", made_by="download")
    with ws.output(ws.cache.dir) as tmp:
        result = sample_cache(
            ws.raw, params.sample, tmp, seed=params.seed, workers=params.workers, show_progress=show_progress
        )
    console = Console(stderr=True)
    if result.shortfall:
        title = f"cohort shortfall in views {'/'.join(params.sample.views)}: fewer images exist than asked"
        console.print(Panel("\n".join(result.shortfall), title=title, style="bold yellow"))
    if len(result.cache.rejects):
        text = f"{len(result.cache.rejects)} image(s) skipped; reasons in {ws.cache.rejects}"
        console.print(Panel(text, title="rejected images", style="bold red"))
    metrics = result.metrics(params.data.source, params.sample.image_size, params.sample.negatives)
    write_json(ws.stage_metrics("sample"), metrics)
    cached = metrics["cached"]
    log.info(
        "cached %d images (%d Pneumonia, %d %s) of %d patients at %d px into %s",
        cached["images"],
        cached["pneumonia"],
        cached["negative"],
        layout.NEGATIVE_NAMES[params.sample.negatives],
        cached["patients"],
        params.sample.image_size,
        ws.cache.dir,
    )
    return metrics


def _from_dicom(params: Params, ws: Workspace, *, show_progress: bool) -> dict:
    """``data.source: dicom``: the DICOM files in ``data/raw/`` and the CSVs ``data.dicom`` names there."""
    spec = params.data.dicom
    labels = ws.raw / spec.labels
    boxes = ws.raw / spec.boxes if spec.boxes else None
    missing = [str(p) for p in (labels, boxes) if p is not None and not p.is_file()]
    if missing:
        raise CxrError(
            f"sample: data.source is dicom but {', '.join(missing)} is missing: put your DICOM files and the CSVs "
            f"that data.dicom names in {ws.raw}/ (README: Real radiographs as DICOM)"
        )
    return sample_dicom.run(
        params, ws.raw, labels, boxes, ws, max_skipped=spec.max_skipped, show_progress=show_progress
    )
