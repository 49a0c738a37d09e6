"""``cxrexplain sample --from-dicom DIR --labels CSV``: the sample stage's outputs from a folder of DICOM radiographs.

The ``sample`` stage runs it on ``data/raw/`` when ``data.source`` is ``dicom`` (so ``dvc repro`` builds the cache);
a person may run it on any folder with ``--from-dicom``, also with ``data.source: dicom`` in ``params.yaml`` (so
that the report, the MLflow tags and the registered model name the data). It writes what the
sample stage writes, in the same format (``data/cache/{images.npy,index.csv,rejects.csv}`` as one atomic folder,
``metrics/sample.json`` with ``source: dicom``), so ``split``, ``train``, ``explain`` and ``report`` read it
unchanged. The work is :func:`cxrexplain.data.dicom.sample_from_dicom`. When more than ``max_skipped`` of the listed
files cannot be read, nothing is written and the old cache stays.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from cxrexplain.config import Params
from cxrexplain.data.dicom import sample_from_dicom
from cxrexplain.data.sample import MAX_REJECTED_SHARE
from cxrexplain.errors import CxrError
from cxrexplain.io import write_json
from cxrexplain.workspace import Workspace

log = logging.getLogger("cxrexplain.sample")


def run(
    params: Params,
    dicom_dir: Path,
    labels: Path,
    boxes: Path | None = None,
    ws: Workspace | None = None,
    *,
    max_skipped: float = MAX_REJECTED_SHARE,
    show_progress: bool = True,
) -> dict:
    """Decode and cache the DICOM files ``labels`` lists at ``sample.image_size``; returns ``metrics/sample.json``."""
    ws = ws or Workspace()
    if params.data.source != "dicom":
        raise CxrError(
            f"--from-dicom: params.yaml says data.source: {params.data.source}; set it to dicom, so that the "
            "report and MLflow name the data the models are trained on"
        )
    if params.split.official_test:
        raise CxrError("--from-dicom: split.official_test must be false (NIH's test list names NIH images)")
    size = params.sample.image_size
    with ws.output(ws.cache.dir) as tmp:
        result = sample_from_dicom(
            dicom_dir, labels, boxes, tmp, image_size=size, max_skipped=max_skipped, show_progress=show_progress
        )
    skipped = len(result.cache.rejects)
    if skipped:
        text = f"{skipped} of {result.listed} DICOM file(s) skipped; reasons in {ws.cache.rejects}"
        Console(stderr=True).print(Panel(text, title="skipped files", style="bold red"))
    metrics = result.metrics(size, dicom_dir, labels)
    write_json(ws.stage_metrics("sample"), metrics)
    cached = metrics["cached"]
    log.info(
        "cached %d of %d DICOM images (%d Pneumonia, %d No Finding) of %d patients at %d px into %s; %d skipped",
        cached["images"],
        result.listed,
        cached["pneumonia"],
        cached["negative"],
        cached["patients"],
        size,
        ws.cache.dir,
        skipped,
    )
    return metrics
