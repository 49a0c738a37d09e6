"""Stage ``train@<arch>``: fit one backbone on the cache and split, tracked in MLflow (``models/training.py``).

Writes ``models/<arch>/``: ``best.ckpt`` (lowest val loss), ``last.ckpt`` (after every epoch, for resuming),
``predictions.csv`` (val and test: image, patient, label, probability), ``history.csv`` (per-epoch train/val metrics),
``mlflow_run.json`` (the run the later stages log into); and ``metrics/train/<arch>.json`` for DVC. Everything is
checked before the folder is touched; a fresh training then empties it, a resume keeps it. Under DDP every process
runs this module; only global rank 0 clears the folder, creates the MLflow run and writes.
"""

from __future__ import annotations

import logging
import shutil

from lightning.pytorch.utilities import rank_zero_only

from cxrexplain import tracking
from cxrexplain.config import Params
from cxrexplain.io import write_csv, write_json
from cxrexplain.logs import route_library_logs
from cxrexplain.models import training
from cxrexplain.workspace import Workspace

log = logging.getLogger("cxrexplain.train")
route_library_logs()


def run(
    params: Params,
    arch: str,
    *,
    ws: Workspace | None = None,
    resume: bool = False,
    num_workers: int | None = None,
    show_progress: bool = True,
) -> dict | None:
    """Train ``arch`` in ``ws`` (default: the current folder); returns the metrics written to
    ``metrics/train/<arch>.json`` (None on ranks other than 0)."""
    ws = ws or Workspace()
    stage, files = f"train@{arch}", ws.model(arch)
    ws.require([ws.cache.images, ws.cache.index], needed_by=stage, made_by="sample")
    ws.require([ws.split], needed_by=stage, made_by="split")
    workers = params.workers if num_workers is None else num_workers
    resume = resume or params.train.resume
    job = training.prepare(
        params, arch, ws.cache, ws.split, files, resume=resume, workers=workers, progress=show_progress
    )
    if rank_zero_only.rank == 0:
        if job.resuming:
            log.info("resuming %s from %s", arch, files.last)
            for stale in files.dir.glob(".*.part"):  # a save cut short by the kill
                stale.unlink(missing_ok=True)
        else:
            shutil.rmtree(files.dir, ignore_errors=True)
        files.dir.mkdir(parents=True, exist_ok=True)
    result = training.fit(job)
    if result is None:
        return None
    write_csv(files.predictions, result.predictions)
    write_csv(files.history, result.history)
    metrics_file = ws.stage_metrics("train", arch)
    write_json(metrics_file, result.metrics)
    tracking.log_artifacts(
        result.run_id, [files.best, files.predictions, files.history, metrics_file], "train", uri=result.uri
    )
    m = result.metrics
    log.info(
        "%s: %d epochs, best val loss %.4f at epoch %d; val AUROC %.3f, test AUROC %.3f (MLflow run %s)",
        *(arch, m["epochs"], m["best_val_loss"], m["best_epoch"], m["val"]["auroc"], m["test"]["auroc"], result.run_id),
    )
    return m
