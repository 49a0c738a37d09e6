"""Stage explain@arch: explain the images of a split with the CAM family and the captum baselines, measure the
explanations with every measure of the registry, draw galleries, and log it all to the architecture's MLflow run.

Reads ``ws.model(arch)`` (best checkpoint, predictions for a Youden threshold, MLflow run), the cache and the split,
all checked before any work (the MLflow run too, when logging). Writes ``ws.explain(arch)`` whole, through a temporary
folder renamed on success (tables, ``maps.npz`` for stage consistency, galleries: :mod:`cxrexplain.explain.pipeline`),
then ``ws.stage_metrics("explain", arch)``.
"""

from __future__ import annotations

import logging
from functools import partial

import torch

from cxrexplain import tracking
from cxrexplain.config import ARCHS, Params
from cxrexplain.data.datamodule import read_split
from cxrexplain.data.sample import load_cache
from cxrexplain.errors import CxrError
from cxrexplain.explain import pipeline
from cxrexplain.io import write_json
from cxrexplain.models.permuted import train_on_permuted_labels
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
    if arch not in ARCHS:
        raise CxrError(f"explain: unknown arch {arch!r} (available: {', '.join(ARCHS)})")
    ws, e, stage = ws or Workspace(), params.explain, f"explain@{arch}"
    trained, out, metrics_file = ws.model(arch), ws.explain(arch), ws.stage_metrics("explain", arch)
    run_ref = (trained.run_ref,) if log_to_mlflow else ()
    ws.require((trained.best, trained.predictions, *run_ref), needed_by=stage, made_by=f"train@{arch}")
    ws.require((ws.cache.images, ws.cache.index), needed_by=stage, made_by="sample")
    ws.require((ws.split,), needed_by=stage, made_by="split")
    ref = tracking.require_run(trained.run_ref) if log_to_mlflow else None  # before the work, not after it
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, threshold = pipeline.load_model(trained.best, dev), pipeline.choose_threshold(e, trained.predictions)
    images, index = load_cache(ws.cache.dir)
    rows = pipeline.split_rows(read_split(ws.split, index), e.split, ws.split)
    explanation = pipeline.explain_split(
        model,
        images,
        rows,
        e,
        image_size=params.train.image_size,
        seed=params.seed,
        threshold=threshold,
        permuted=partial(train_on_permuted_labels, params, arch, ws.cache.dir, ws.split, dev),
        progress=f"explain {arch}" if show_progress else None,
    )
    with ws.output(out.dir) as tmp:
        pipeline.save(
            explanation, ExplainFiles(tmp), e.gallery, title=arch, synthetic=params.data.source == "synthetic"
        )
    metrics = pipeline.explain_metrics(explanation, e, arch=arch, source=params.data.source)
    write_json(metrics_file, metrics)  # atomic: the old file or the new one, never a part
    if ref is not None:
        run_id, uri = ref["run_id"], ref["tracking_uri"]
        tracking.log_metrics(run_id, pipeline.mlflow_metrics(metrics), uri=uri)
        tracking.log_artifacts(run_id, [*pipeline.artifacts(out), metrics_file], "explain", uri=uri)
    if line := pipeline.headline(metrics):
        log.info("%s", line)
    return metrics
