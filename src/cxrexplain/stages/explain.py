"""Stage explain@arch: explain the images of a split with the CAM family and the captum baselines, measure the
explanations with every measure of the registry, draw galleries, and log it all to the architecture's MLflow run.

Reads ``ws.model(arch)`` (best checkpoint, predictions for a Youden threshold, MLflow run), the cache and the split,
all checked before any work (the MLflow run too, when logging). Writes ``ws.explain(arch)`` whole, through a temporary
folder renamed on success (tables, ``maps.npz`` for stage consistency, galleries: :mod:`cxrexplain.explain.pipeline`),
then ``ws.stage_metrics("explain", arch)``.
"""

from __future__ import annotations

import logging

import torch

from cxrexplain import tracking
from cxrexplain.config import Params, require_arch
from cxrexplain.explain import pipeline
from cxrexplain.io import write_json
from cxrexplain.workspace import ExplainFiles, Workspace

log = logging.getLogger(__name__)


def run(
    params: Params,
    arch: str,
    *,
    ws: Workspace | None = None,
    device: str | None = None,
    show_progress: bool = True,
    log_to_mlflow: bool = True,
) -> dict:
    """Explain and measure ``arch``'s model on ``params.explain.split``; returns the metrics JSON."""
    require_arch(arch, "explain")
    ws, stage = ws or Workspace(), f"explain@{arch}"
    trained, out, metrics_file = ws.model(arch), ws.explain(arch), ws.stage_metrics("explain", arch)
    run_ref = (trained.run_ref,) if log_to_mlflow else ()
    ws.require((trained.best, trained.predictions, *run_ref), needed_by=stage, made_by=f"train@{arch}")
    ws.require((ws.cache.images, ws.cache.index), needed_by=stage, made_by="sample")
    ws.require((ws.split,), needed_by=stage, made_by="split")
    ref = tracking.require_run(trained.run_ref) if log_to_mlflow else None  # before the work, not after it
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    progress = f"explain {arch}" if show_progress else None
    explanation = pipeline.explain_trained(params, arch, trained, ws.cache, ws.split, dev, progress=progress)
    with ws.output(out.dir) as tmp:
        synthetic = params.data.source == "synthetic"
        pipeline.save(explanation, ExplainFiles(tmp), params.explain.gallery, title=arch, synthetic=synthetic)
    metrics = pipeline.explain_metrics(explanation, params.explain, arch=arch, source=params.data.source)
    write_json(metrics_file, metrics)  # atomic: the old file or the new one, never a part
    if ref is not None:
        pipeline.log_to_run(ref, metrics, out, metrics_file)
    if line := pipeline.headline(metrics):
        log.info("%s", line)
    return metrics
