"""Stage ratings: the readers' ratings of the maps (``ratings/<reader>.csv``, written by ``cxrexplain view``) as a
reader study, ``metrics/ratings.json`` (:func:`cxrexplain.evaluation.ratings.summarise`).

The ``ratings/`` folder always exists (its README is in git), so DVC can depend on it before anyone has rated: with
no ratings the stage writes a summary with no readers, and the report leaves its reader-study section out. Each rated
model's ``per_image.csv`` gives the pointing game's hits the ratings are set against; the cache index gives each
image's label and patient.
"""

from __future__ import annotations

import logging

import pandas as pd

from cxrexplain.config import Params
from cxrexplain.evaluation import ratings as rt
from cxrexplain.io import write_json
from cxrexplain.workspace import Workspace, stage_name

log = logging.getLogger(__name__)


def run(params: Params, *, ws: Workspace | None = None) -> dict:
    """Summarise every reader's ratings into ``ws.ratings_metrics``; returns the summary."""
    ws = ws or Workspace()
    ratings = rt.read_ratings(ws.ratings.readers())
    pointing, images = {}, pd.DataFrame({"image": [], "patient": [], "label": []})
    if len(ratings):
        ws.require([ws.cache.index], needed_by="ratings", made_by="sample")
        images = pd.read_csv(ws.cache.index, dtype={"patient": str})
        for arch, seed in ratings[["arch", "seed"]].drop_duplicates().itertuples(index=False):
            files = ws.explain(arch, seed)
            ws.require([files.per_image], needed_by="ratings", made_by=stage_name("explain", arch, seed))
            pointing[(arch, seed)] = rt.pointing_hits(pd.read_csv(files.per_image))
    summary = rt.summarise(ratings, images, pointing, n=params.explain.bootstrap, seed=params.seed)
    write_json(ws.ratings_metrics, summary)
    log.info("%d ratings by %d readers summarised in %s", len(ratings), len(summary["readers"]), ws.ratings_metrics)
    return summary
