"""Stage ``sample``: pick the Pneumonia / No Finding cohort and cache its images (``data/cache/``).

Writes ``data/cache/{images.npy,index.csv,rejects.csv}`` atomically and ``metrics/sample.json`` with the real counts,
so a shortfall (ChestX-ray14 has 1,431 Pneumonia images, not the study's 5,000) is on record, not only on screen.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from cxrexplain.config import Params
from cxrexplain.data import layout, metadata
from cxrexplain.data.sample import REJECTS_FILE, build_cache, select_cohort
from cxrexplain.io import atomic_dir, write_json
from cxrexplain.workspace import Workspace

CACHE_DIR = Workspace().cache.dir  # the workspace's path
METRICS_DIR = Workspace().metrics  # the workspace's path
RAW_DIR = Workspace().raw  # the workspace's path

log = logging.getLogger("cxrexplain.sample")


def run(
    params: Params,
    raw_dir: Path = RAW_DIR,
    cache_dir: Path = CACHE_DIR,
    metrics_dir: Path = METRICS_DIR,
    *,
    show_progress: bool = True,
) -> dict:
    """Select, stream, decode and cache; returns the metrics written to ``metrics/sample.json``."""
    raw_dir, cache_dir = Path(raw_dir), Path(cache_dir)
    p = params.sample
    entries = metadata.read_data_entry(raw_dir / layout.DATA_ENTRY)
    boxes = metadata.read_bbox_list(raw_dir / layout.BBOX_LIST)
    cohort, counts = select_cohort(
        entries, positive=p.positive, views=p.views, per_class=p.per_class, balance=p.balance, seed=params.seed
    )
    console = Console(stderr=True)
    short = [name for name, c in counts.items() if c.shortfall]
    if short:
        lines = [
            f"{name}: asked for {c.requested:,}, {c.available:,} exist ({c.available_patients:,} patients) "
            f"in views {'/'.join(p.views)}; taking {c.selected:,}"
            for name, c in counts.items()
            if c.shortfall
        ]
        console.print(
            Panel("\n".join(lines), title="cohort shortfall: fewer images exist than asked", style="bold yellow")
        )
        for line in lines:
            log.warning("cohort shortfall: %s", line)
    with atomic_dir(cache_dir) as tmp:
        result = build_cache(
            raw_dir,
            cohort,
            layout.assign_archives(entries["image"].tolist()),
            boxes,
            tmp,
            image_size=p.image_size,
            workers=params.workers,
            show_progress=show_progress,
        )
    if len(result.rejects):
        console.print(
            Panel(
                f"{len(result.rejects)} image(s) could not be read and were skipped; reasons in "
                f"{cache_dir / REJECTS_FILE}",
                title="rejected images",
                style="bold red",
            )
        )
    index = result.index
    metrics = {
        "source": params.data.source,
        "image_size": p.image_size,
        "requested": {name: c.requested for name, c in counts.items()},
        "counts": {name: asdict(c) for name, c in counts.items()},
        "shortfall": bool(short),
        "rejected": len(result.rejects),
        "cached": {
            "images": len(index),
            "pneumonia": int((index["label"] == 1).sum()),
            "no_finding": int((index["label"] == 0).sum()),
            "patients": int(index["patient"].nunique()),
            "pneumonia_with_boxes": int(((index["label"] == 1) & (index["boxes"] != "[]")).sum()),
        },
    }
    write_json(Path(metrics_dir) / "sample.json", metrics)
    log.info(
        "cached %d images (%d Pneumonia, %d No Finding) of %d patients at %d px into %s",
        len(index),
        metrics["cached"]["pneumonia"],
        metrics["cached"]["no_finding"],
        metrics["cached"]["patients"],
        p.image_size,
        cache_dir,
    )
    return metrics
