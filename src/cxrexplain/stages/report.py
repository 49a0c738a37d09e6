"""Stage report: test-set metrics with intervals, the study beside this run, figures, explanation tables → reports/.

Before any work: every input is there (:func:`cxrexplain.evaluation.report.read_inputs`: train and explain outputs,
the galleries the report links, the metrics JSONs) and, when logging, each architecture's MLflow run is in the store.
The report is built in a temporary folder and moved into place, ``report.md`` last
(:func:`cxrexplain.evaluation.report.write`): a failure leaves ``reports/`` as it was. Then each architecture's run
gets its figures and metrics, and a summary run the report.

:func:`log_only` (``cxrexplain report --log-only``, run by ``make demo`` after ``dvc repro``) logs the report that is
in ``reports/`` the same way without rebuilding it, unless the store already has a report run for that
``metrics.json`` and these architecture runs: in a fresh clone DVC retrains, but when the predictions come out
identical it skips this stage (its outputs are committed), which left the clone's store without a report run.
"""

from __future__ import annotations

import json
import logging

from cxrexplain import tracking
from cxrexplain.config import Params, ReportParams
from cxrexplain.evaluation import report
from cxrexplain.workspace import Workspace, stage_name

log = logging.getLogger(__name__)


def run(
    params: Params,
    *,
    ws: Workspace | None = None,
    log_to_mlflow: bool = True,
    bootstrap: int | None = None,
) -> dict:
    """Build ``ws.report`` for ``params.model.archs`` and every training seed of ``params.seeds``; returns
    ``metrics.json``'s content. ``bootstrap`` overrides
    ``params.report.bootstrap``."""
    ws = ws or Workspace()
    archs, seeds = params.model.archs, params.seeds
    found = report.read_inputs(ws, archs, seeds, run_refs=log_to_mlflow)
    refs = {a: {s: tracking.require_run(ws.model(a, s).run_ref) for s in seeds} for a in archs} if log_to_mlflow else {}
    metrics, made = report.write(
        found.archs,
        ws.report.dir,
        facts=report.RunFacts.of(params, *tracking.git_state()),
        settings=params.report if bootstrap is None else ReportParams(bootstrap=bootstrap),
        sample=found.sample,
        split=found.split,
        consistency=found.consistency,
        seed_runs=found.seeds,
        leakage=found.leakage,
        ratings=json.loads(ws.ratings_metrics.read_text()) if ws.ratings_metrics.exists() else None,
    )
    report.log_runs(refs, params, ws.report, metrics, made, tables=report.primary_tables(ws, archs, seeds))
    log.info("report written to %s (report.md, report.html, metrics.json)", ws.report.dir)
    return metrics


def log_only(params: Params, *, ws: Workspace | None = None) -> str | None:
    """Log ``reports/`` as it is into MLflow, as :func:`run` does, unless already logged: returns the new summary
    run's id, or None when a report run with the same ``metrics.json`` (its MD5, tag ``report.metrics_md5``) and the
    same training runs (every architecture's every seed) is in the store. Checked before logging
    (:func:`cxrexplain.evaluation.report.published`,
    then each architecture's run reference and run): a missing or stale report or run is a CxrError saying what to
    run."""
    ws = ws or Workspace()
    archs, seeds = params.model.archs, params.seeds
    metrics, made = report.published(ws, archs, seeds)
    for a in archs:
        for s in seeds:
            ws.require([ws.model(a, s).run_ref], needed_by="report --log-only", made_by=stage_name("train", a, s))
    refs = {a: {s: tracking.require_run(ws.model(a, s).run_ref) for s in seeds} for a in archs}
    uri = refs[archs[0]][seeds[0]]["tracking_uri"]
    runs = {a: {s: ref["run_id"] for s, ref in by_seed.items()} for a, by_seed in refs.items()}
    found = tracking.find_summary_run(runs, report.report_digest(ws.report), uri=uri)
    if found is not None:
        log.info("report already logged to MLflow (run %s): nothing to do", found)
        return None
    summary = report.log_runs(
        refs,
        params,
        ws.report,
        metrics,
        made,
        tags={"report.logged_by": "log-only"},
        tables=report.primary_tables(ws, archs, seeds),
    )
    log.info("report in %s logged to MLflow without rebuilding it (run %s)", ws.report.dir, summary)
    return summary
