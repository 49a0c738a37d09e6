"""Stage consistency: do the two architectures' (``model.archs``) CAMs of the same images agree?

Reads ``ws.explain(arch).maps`` of both architectures (raw Pneumonia CAMs at feature resolution; maps of any other
class are refused, see :mod:`cxrexplain.explain.agreement`); writes ``ws.consistency`` (per method and image) and
``ws.consistency_metrics`` (means with patient-clustered 95 % bootstrap intervals). No model is loaded.
"""

from __future__ import annotations

from cxrexplain.config import Params
from cxrexplain.explain.agreement import compare, read_pneumonia_maps
from cxrexplain.io import write_csv, write_json
from cxrexplain.workspace import Workspace


def run(params: Params, *, ws: Workspace | None = None) -> dict:
    """Rank correlation and top-20 % region IoU of the CAMs of ``params.model.archs`` (two, validated), per method;
    returns the metrics."""
    archs = params.model.archs
    ws = ws or Workspace()
    for arch in archs:
        ws.require((ws.explain(arch).maps,), needed_by="consistency", made_by=f"explain@{arch}")
    maps = tuple(read_pneumonia_maps(ws.explain(arch).maps, made_by=f"explain@{arch}") for arch in archs)
    table, metrics = compare(maps, archs, params.explain, image_size=params.train.image_size, seed=params.seed)
    write_csv(ws.consistency, table)
    write_json(ws.consistency_metrics, metrics)
    return metrics
