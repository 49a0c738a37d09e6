"""Stage ``train@<arch>-<seed>``: fit one backbone with one training seed on the cache and split, tracked in MLflow
(``models/training.py``).

Writes ``models/<arch>/seed<seed>/``: ``best.ckpt`` (lowest val loss), ``last.ckpt`` (after every epoch, for resuming),
``predictions.csv`` (val and test: image, patient, label, probability), ``history.csv`` (per-epoch train/val metrics),
``mlflow_run.json`` (the run the later stages log into); and ``metrics/train/<arch>/seed<seed>.json`` for DVC.
Everything is checked before the folder is touched; a fresh training then empties it, a resume keeps it. Under DDP every
process runs this module; only global rank 0 clears the folder, creates the MLflow run and writes.
"""

from __future__ import annotations

import logging

from cxrexplain.config import Params, require_arch, require_seed
from cxrexplain.logs import route_library_logs
from cxrexplain.models import training
from cxrexplain.workspace import Workspace, stage_name

log = logging.getLogger("cxrexplain.train")
route_library_logs()


def run(
    params: Params,
    arch: str,
    *,
    ws: Workspace | None = None,
    seed: int | None = None,
    resume: bool = False,
    num_workers: int | None = None,
    show_progress: bool = True,
) -> dict | None:
    """Train ``arch`` with the training seed ``seed`` (one of ``params.seeds``; default the primary) in ``ws``
    (default: the current folder); returns the metrics written to ``metrics/train/<arch>/seed<seed>.json`` (None on
    ranks other than 0)."""
    ws = ws or Workspace()
    require_arch(arch, "train")
    seed = require_seed(params, seed, f"train@{arch}")
    stage, files = stage_name("train", arch, seed), ws.model(arch, seed)
    ws.require([ws.cache.images, ws.cache.index], needed_by=stage, made_by="sample")
    ws.require([ws.split], needed_by=stage, made_by="split")
    workers = params.workers if num_workers is None else num_workers
    resume = resume or params.train.resume
    job = training.prepare(
        params, arch, ws.cache, ws.split, files, seed=seed, resume=resume, workers=workers, progress=show_progress
    )
    if job.resuming and job.trainer.is_global_zero:
        log.info("resuming %s from %s", stage, files.last)
    result = training.fit(job)  # rank 0 empties the folder first (a fresh training) or keeps it (a resume)
    if result is None:  # not global rank 0
        return None
    training.save(result, files, ws.stage_metrics("train", arch, seed))
    log.info("%s", result.summary())
    return result.metrics
