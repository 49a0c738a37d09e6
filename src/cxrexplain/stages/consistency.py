"""Stage consistency: do the architectures' (``model.archs``) CAMs of the same images agree, pair by pair?

Reads ``ws.explain(arch, seed).maps`` of every architecture's primary-seed model (``params.seeds[0]``) (raw Pneumonia
CAMs at feature resolution; maps of any other class are refused, see :mod:`cxrexplain.explain.agreement`); writes
``ws.consistency`` (per pair of architectures, method and image) and ``ws.consistency_metrics`` (per pair and method,
means with patient-clustered 95 % bootstrap intervals; no pair with one architecture). No model is loaded.

dvc.yaml gives it the whole ``explain`` folder as its dependency (the matrix's paths cannot be listed one by one), so
any explain stage, also another seed's, re-runs it; it takes seconds.
"""

from __future__ import annotations

from cxrexplain.config import Params, require_seed
from cxrexplain.explain.agreement import compare, read_pneumonia_maps
from cxrexplain.io import write_csv, write_json
from cxrexplain.workspace import Workspace, stage_name


def run(params: Params, *, ws: Workspace | None = None, seed: int | None = None) -> dict:
    """Rank correlation and top-20 % region IoU of the CAMs of every pair of ``params.model.archs``, per method, of
    the models trained with the training seed ``seed`` (default: the primary); returns the metrics."""
    archs, seed = params.model.archs, require_seed(params, seed, "consistency")
    ws = ws or Workspace()
    for arch in archs:
        ws.require((ws.explain(arch, seed).maps,), needed_by="consistency", made_by=stage_name("explain", arch, seed))
    maps = {
        arch: read_pneumonia_maps(ws.explain(arch, seed).maps, made_by=stage_name("explain", arch, seed))
        for arch in archs
    }
    table, metrics = compare(maps, params.explain, image_size=params.train.image_size, seed=params.seed)
    metrics["train_seed"] = seed
    write_csv(ws.consistency, table)
    write_json(ws.consistency_metrics, metrics)
    return metrics
