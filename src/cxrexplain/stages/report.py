"""Stage report: test-set metrics with intervals, the study beside this run, figures, explanation tables → reports/.

Before any work: every input is there (:func:`cxrexplain.evaluation.report.read_inputs`: train and explain outputs,
the galleries the report links, the metrics JSONs) and, when logging, each architecture's MLflow run is in the store.
The report is built in a temporary folder and moved into place, ``report.md`` last
(:func:`cxrexplain.evaluation.report.write`): a failure leaves ``reports/`` as it was. Then each architecture's run
gets its figures and metrics, and a summary run the report.
"""

from __future__ import annotations

import logging

from cxrexplain import tracking
from cxrexplain.config import Params, ReportParams
from cxrexplain.evaluation import report
from cxrexplain.workspace import Workspace

log = logging.getLogger(__name__)


def run(
    params: Params,
    *,
    ws: Workspace | None = None,
    log_to_mlflow: bool = True,
    bootstrap: int | None = None,
) -> dict:
    """Build ``ws.report`` for ``params.model.archs``; returns ``metrics.json``'s content. ``bootstrap`` overrides
    ``params.report.bootstrap``."""
    ws = ws or Workspace()
    archs = params.model.archs
    found = report.read_inputs(ws, archs, run_refs=log_to_mlflow)
    refs = {a: tracking.require_run(ws.model(a).run_ref) for a in archs} if log_to_mlflow else {}
    metrics, made = report.write(
        found.archs,
        ws.report.dir,
        facts=report.RunFacts.of(params, *tracking.git_state()),
        settings=params.report if bootstrap is None else ReportParams(bootstrap=bootstrap),
        sample=found.sample,
        split=found.split,
        consistency=found.consistency,
        leakage=found.leakage,
    )
    report.log_runs(refs, params, ws.report, metrics, made)
    log.info("report written to %s (report.md, report.html, metrics.json)", ws.report.dir)
    return metrics
