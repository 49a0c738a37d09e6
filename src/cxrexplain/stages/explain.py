"""Stage explain@arch-seed: explain the images of a split with the CAM family and the captum baselines, measure the
explanations with every measure of the registry, draw galleries, and log it all to the architecture's MLflow run.

Reads ``ws.model(arch, seed)`` (best checkpoint, predictions for a Youden threshold, MLflow run), the cache and the
split, all checked before any work (the MLflow run too, when logging). Writes ``ws.explain(arch, seed)`` whole, through
a temporary folder renamed on success (tables, ``maps.npz`` for stage consistency and the viewer, galleries:
:mod:`cxrexplain.explain.pipeline`), then ``ws.stage_metrics("explain", arch, seed)``. Every seed's model is explained
alike, on the same images, subsets and tie orders (the data seed ``seed``), so that the seeds' measures differ only by
their models.
"""

from __future__ import annotations

import logging

import torch

from cxrexplain import tracking
from cxrexplain.config import Params, require_arch, require_seed
from cxrexplain.explain import pipeline
from cxrexplain.io import write_json
from cxrexplain.workspace import ExplainFiles, Workspace, stage_name

log = logging.getLogger(__name__)


def run(
    params: Params,
    arch: str,
    *,
    ws: Workspace | None = None,
    seed: int | None = None,
    device: str | None = None,
    show_progress: bool = True,
    log_to_mlflow: bool = True,
) -> dict:
    """Explain and measure the model of ``arch`` trained with ``seed`` (one of ``params.seeds``; default the primary)
    on ``params.explain.split``; returns the metrics JSON."""
    require_arch(arch, "explain")
    seed = require_seed(params, seed, f"explain@{arch}")
    ws, stage = ws or Workspace(), stage_name("explain", arch, seed)
    trained, out, metrics_file = ws.model(arch, seed), ws.explain(arch, seed), ws.stage_metrics("explain", arch, seed)
    run_ref = (trained.run_ref,) if log_to_mlflow else ()
    ws.require((trained.best, trained.predictions, *run_ref), needed_by=stage, made_by=stage_name("train", arch, seed))
    ws.require((ws.cache.images, ws.cache.index), needed_by=stage, made_by="sample")
    ws.require((ws.split,), needed_by=stage, made_by="split")
    ref = tracking.require_run(trained.run_ref) if log_to_mlflow else None  # before the work, not after it
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    progress = f"explain {arch} s{seed}" if show_progress else None
    explanation = pipeline.explain_trained(
        params, arch, trained, ws.cache, ws.split, dev, train_seed=seed, progress=progress
    )
    with ws.output(out.dir) as tmp:
        synthetic = params.data.source == "synthetic"
        title = f"{arch} (seed {seed})"
        pipeline.save(explanation, ExplainFiles(tmp), params.explain.gallery, title=title, synthetic=synthetic)
    metrics = pipeline.explain_metrics(explanation, params.explain, arch=arch, source=params.data.source)
    metrics["seed"] = seed
    write_json(metrics_file, metrics)  # atomic: the old file or the new one, never a part
    if ref is not None:
        pipeline.log_to_run(ref, metrics, out, metrics_file)
    if line := pipeline.headline(metrics):
        log.info("%s", line)
    return metrics
