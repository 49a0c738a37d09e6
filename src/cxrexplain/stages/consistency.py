"""Stage consistency: do the two architectures' (``model.archs``) CAMs of the same images agree?

Reads ``ws.explain(arch, seed).maps`` of both architectures' primary-seed models (``params.seeds[0]``) (raw Pneumonia
CAMs at feature resolution; maps of any other class are refused, see :mod:`cxrexplain.explain.agreement`); writes
``ws.consistency`` (per method and image) and ``ws.consistency_metrics`` (means with patient-clustered 95 % bootstrap
intervals). No model is loaded.
"""

from __future__ import annotations

from cxrexplain.config import Params, require_seed
from cxrexplain.explain.agreement import compare, read_pneumonia_maps
from cxrexplain.io import write_csv, write_json
from cxrexplain.workspace import Workspace, stage_name


def run(params: Params, *, ws: Workspace | None = None, seed: int | None = None) -> dict:
    """Rank correlation and top-20 % region IoU of the CAMs of ``params.model.archs`` (two, validated), per method,
    of the models trained with the training seed ``seed`` (default: the primary; dvc.yaml passes ``seeds[0]``, so that
    adding a seed to the list does not re-run this stage); returns the metrics."""
    archs, seed = params.model.archs, require_seed(params, seed, "consistency")
    ws = ws or Workspace()
    for arch in archs:
        ws.require((ws.explain(arch, seed).maps,), needed_by="consistency", made_by=stage_name("explain", arch, seed))
    maps = tuple(
        read_pneumonia_maps(ws.explain(arch, seed).maps, made_by=stage_name("explain", arch, seed)) for arch in archs
    )
    table, metrics = compare(maps, archs, params.explain, image_size=params.train.image_size, seed=params.seed)
    metrics["train_seed"] = seed
    write_csv(ws.consistency, table)
    write_json(ws.consistency_metrics, metrics)
    return metrics
