"""Stage ``leakage``: the leakage audit, the first architecture trained on the other split protocol of the same cohort.

The pipeline splits by ``split.group_by`` (patient: no patient in two splits; image: the study's protocol, which
leaks a patient's follow-ups across splits). This stage splits the same cached cohort by the other protocol (same
fractions, seed and official test list: :func:`cxrexplain.data.split.split_cohort`), trains ``model.archs[0]`` on it
as ``train@<arch>-<seed>`` does with the primary training seed (same params and seed:
:mod:`cxrexplain.models.training`; dvc.yaml passes ``seeds[0]``), and predicts its val and test sets. Writes
``leakage/split.csv``, ``leakage/model/`` (as ``models/<arch>/seed<seed>/``) and ``metrics/leakage.json``: both
protocols, what the image-level split leaks (:func:`cxrexplain.data.split.leakage_audit`), the training's metrics.
Its MLflow run is tagged ``dvc.stage: leakage``; its model is not registered (a leaky split's val AUROC must not
elect a champion). The report sets it beside the primary seed's model.
"""

from __future__ import annotations

import dataclasses
import logging

import pandas as pd

from cxrexplain import tracking
from cxrexplain.config import Params, require_seed
from cxrexplain.data import layout
from cxrexplain.data.split import leakage_audit, other_protocol, split_cohort
from cxrexplain.io import write_csv
from cxrexplain.logs import route_library_logs
from cxrexplain.models import training
from cxrexplain.workspace import Workspace

log = logging.getLogger("cxrexplain.leakage")
route_library_logs()


def run(
    params: Params, *, ws: Workspace | None = None, seed: int | None = None, show_progress: bool = True
) -> dict | None:
    """Run the audit in ``ws`` with the training seed ``seed`` (default: the primary); returns the metrics written to
    ``metrics/leakage.json`` (None on DDP ranks but 0)."""
    ws = ws or Workspace()
    seed = require_seed(params, seed, "leakage")
    arch, ours = params.model.archs[0], params.split.group_by
    other, files = other_protocol(ours), ws.leakage
    ws.require([ws.cache.images, ws.cache.index, ws.split], needed_by="leakage", made_by="sample split")
    audit = params.model_copy(update={"split": params.split.model_copy(update={"group_by": other})})
    index = pd.read_csv(ws.cache.index, usecols=["image", "patient", "label"])
    split = split_cohort(index, audit.split, seed=params.seed, test_list=ws.raw / layout.TEST_LIST)
    counts = leakage_audit({ours: pd.read_csv(ws.split), other: split.table})
    write_csv(files.split, split.table)
    job = training.prepare(
        audit,
        arch,
        ws.cache,
        files.split,
        files.model,
        seed=seed,
        resume=False,
        workers=params.workers,
        progress=show_progress,
    )
    if job.trainer.is_global_zero:  # the training's run, created now, is the audit's
        name = tracking.run_name(arch, tracking.git_state()[0], audit.data.source) + f", {other}-level split"
        tags = {
            "dvc.stage": "leakage",
            "audit": "leakage",
            "split.group_by": other,
            "mlflow.runName": f"leakage: {name}",
        }
        tracking.set_tags(job.logger.run_id, tags, uri=job.uri)
    result = training.fit(job)
    if result is None:
        return None
    metrics = {"arch": arch, "seed": seed, "protocols": {"pipeline": ours, "audit": other}, **counts}
    metrics.update(split=split.metrics, training=result.metrics)
    audited = dataclasses.replace(result, metrics=metrics)
    training.save(audited, files.model, ws.stage_metrics("leakage"), register=False)
    log.info("leakage audit: %d leaked patients; %s", counts["leaked_patients"], result.summary())
    return metrics
