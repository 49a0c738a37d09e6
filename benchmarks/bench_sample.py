"""Sampling speed and peak memory on a generated 1024 px NIH-format mirror (default: 2,000+ images).

    python benchmarks/bench_sample.py [--patients 1100] [--size 1024] [--cache-size 256] [--workers 2] [--mirror DIR]

Generates the mirror once (kept in --mirror, reused on the next run), then samples cohorts of growing size and prints
images per second and the peak resident memory of the parent and of the largest worker. Peak memory should stay flat
as the cohort grows: workers hold one decoded image at a time and write rows straight into the array file.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cxrexplain.data import layout, metadata
from cxrexplain.data.sample import build_cache, select_cohort
from cxrexplain.data.synth import synth_index, write_mirror


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def _measure(mirror: Path, per_class: int, cache_size: int, workers: int, queue) -> None:
    """In a fresh process, so that its peak memory is the sampling's alone."""
    entries = metadata.read_data_entry(mirror / layout.DATA_ENTRY)
    boxes = metadata.read_bbox_list(mirror / layout.BBOX_LIST)
    cohort, _ = select_cohort(
        entries, positive="contains", views=["PA", "AP"], per_class=per_class, balance=True, seed=0
    )
    archive_of = layout.assign_archives(entries["image"].tolist())
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = build_cache(
            mirror, cohort, archive_of, boxes, Path(out), image_size=cache_size, workers=workers, show_progress=False
        )
        elapsed = time.perf_counter() - start
    queue.put((len(result.index), elapsed, peak_rss_mib(resource.RUSAGE_SELF), peak_rss_mib(resource.RUSAGE_CHILDREN)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1100, help="patients in the mirror (≈1.9 images each)")
    parser.add_argument("--size", type=int, default=1024, help="side of the mirror's PNGs (NIH: 1024)")
    parser.add_argument("--cache-size", type=int, default=256, help="side of the cached images")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mirror", type=Path, default=Path(tempfile.gettempdir()) / "cxrexplain-bench-mirror")
    args = parser.parse_args()

    console = Console()
    entries_path = args.mirror / layout.DATA_ENTRY
    if not entries_path.is_file():
        console.print(f"generating a {args.size} px mirror of {args.patients} patients in {args.mirror} …")
        start = time.perf_counter()
        index = synth_index(args.patients, image_size=args.size, pneumonia_fraction=0.5, seed=0)
        write_mirror(index, args.mirror, image_size=args.size, workers=args.workers)
        elapsed = time.perf_counter() - start
        console.print(
            f"generated {len(index.entries)} images in {elapsed:.1f} s ({len(index.entries) / elapsed:.1f}/s)"
        )
    entries = metadata.read_data_entry(entries_path)
    n_pos = int(entries["labels"].str.contains(layout.PNEUMONIA).sum())

    table = Table(title=f"sample: {args.size} px PNGs → {args.cache_size} px cache, {args.workers} workers")
    for column in ("cohort images", "seconds", "images/s", "parent peak RSS MiB", "worker peak RSS MiB", "array MiB"):
        table.add_column(column, justify="right")
    ctx = get_context("spawn")
    for per_class in sorted({max(50, n_pos // 4), n_pos // 2, n_pos}):
        queue = ctx.SimpleQueue()
        process = ctx.Process(target=_measure, args=(args.mirror, per_class, args.cache_size, args.workers, queue))
        process.start()
        n, elapsed, parent, worker = queue.get()
        process.join()
        table.add_row(
            f"{n:,}",
            f"{elapsed:.1f}",
            f"{n / elapsed:.1f}",
            f"{parent:.0f}",
            f"{worker:.0f}",
            f"{n * args.cache_size**2 / 2**20:.0f}",
        )
    console.print(table)
    console.print(f"python {sys.version.split()[0]}; mirror: {len(entries):,} images, {n_pos:,} with Pneumonia")


if __name__ == "__main__":
    main()
