"""Stage report: test-set metrics with intervals, the study beside this run, figures, explanation tables → reports/.

Before any work: every input is there (:meth:`Workspace.require`: train and explain outputs, the galleries the report
links, the metrics JSONs) and, when logging, each architecture's MLflow run is in the store. The report is built in a
temporary folder and moved into place, ``report.md`` last (:func:`cxrexplain.evaluation.report.write`): a failure leaves
``reports/`` as it was. Then each architecture's run gets its figures and metrics, and a summary run the report.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import pandas as pd

from cxrexplain import tracking
from cxrexplain.config import ARCHS, Params, ReportParams
from cxrexplain.evaluation import report
from cxrexplain.workspace import Workspace

log = logging.getLogger(__name__)


def run(
    params: Params,
    *,
    ws: Workspace | None = None,
    archs: tuple[str, ...] = ARCHS,
    log_to_mlflow: bool = True,
    bootstrap: int | None = None,
) -> dict:
    """Build ``ws.report``; returns ``metrics.json``'s content. ``bootstrap`` overrides ``params.report.bootstrap``."""
    ws = ws or Workspace()
    explained = _check(ws, archs, log_to_mlflow)
    refs = {a: tracking.require_run(ws.model(a).run_ref) for a in archs} if log_to_mlflow else {}
    inputs = {
        a: report.ArchInputs(
            predictions=pd.read_csv(ws.model(a).predictions),
            history=pd.read_csv(ws.model(a).history),
            explained=explained[a],
            paired=pd.read_csv(ws.explain(a).paired),
            sanity_curve=pd.read_csv(ws.explain(a).sanity_curve),
            galleries=report.linked_galleries(explained[a], ws.explain(a)),
        )
        for a in archs
    }
    out = ws.report
    metrics, made = report.write(
        inputs,
        out.dir,
        facts=report.RunFacts.of(params, *tracking.git_state()),
        settings=params.report if bootstrap is None else ReportParams(bootstrap=bootstrap),
        sample=_json(ws.stage_metrics("sample")),
        split=_json(ws.stage_metrics("split")),
        consistency=_json(ws.consistency_metrics) if len(archs) == 2 else None,
    )
    report.log_runs(refs, params, out, metrics, made)
    log.info("report written to %s (report.md, report.html, metrics.json)", out.dir)
    return metrics


def _check(ws: Workspace, archs: tuple[str, ...], run_refs: bool) -> dict[str, dict]:
    """Every file the report reads is there (else a CxrError naming it); returns ``metrics/explain/<arch>.json``."""
    need = partial(ws.require, needed_by="report")
    need([ws.stage_metrics("sample"), ws.stage_metrics("split")], made_by="sample split")
    for a in archs:
        m = ws.model(a)
        need([m.predictions, m.history, *([m.run_ref] if run_refs else [])], made_by=f"train@{a}")
        need([*ws.explain(a).complete, ws.stage_metrics("explain", a)], made_by=f"explain@{a}")
    if len(archs) == 2:  # the consistency stage compares exactly two
        need([ws.consistency_metrics], made_by="consistency")
    explained = {a: _json(ws.stage_metrics("explain", a)) for a in archs}
    for a in archs:
        need(report.linked_galleries(explained[a], ws.explain(a)).values(), made_by=f"explain@{a}")
    return explained


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


__all__ = ["run"]
