"""Rendering speed of the synthetic mirror: milliseconds per radiograph and the mirror's images per second.

    python benchmarks/bench_render.py [--sizes 192 256 1024] [--images 40] [--patients 150] [--repeats 3]

Times :func:`cxrexplain.data.render.render_radiograph` alone (one process, the patients and follow-ups of a
:func:`~cxrexplain.data.synth.synth_index`, each rendered as the mirror renders it) at several sizes, and a whole
:func:`~cxrexplain.data.synth.write_mirror` (PNG encoding and archives included, one worker) at the ci/demo
profiles' 192 px. Each number is the best of ``--repeats`` runs, in wall-clock time and in the process's CPU time
(``time.process_time``: less disturbed by other work on a shared machine).
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cxrexplain.data import render, synth


def _render_one(task, size: int, seed: int) -> None:
    """One image as the mirror draws it (with its patient's generator where the renderer takes one)."""
    kwargs = {}
    if "patient" in inspect.signature(render.render_radiograph).parameters:
        kwargs["patient"] = synth._patient_rng(seed, task.patient)
    render.render_radiograph(
        synth._image_rng(seed, task.patient, task.follow_up, 0),
        size,
        opacities=task.opacities,
        findings=task.findings,
        **kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 256, 1024])
    parser.add_argument("--images", type=int, default=40, help="images rendered per size and repeat")
    parser.add_argument("--patients", type=int, default=150, help="patients of the timed mirror (192 px)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    index = synth.synth_index(max(args.patients, args.images), image_size=256, pneumonia_fraction=0.45, seed=0)
    tasks = list(synth._tasks(index))[: args.images]
    table = Table(
        title=f"render_radiograph, {len(tasks)} images of a synthetic index, one process, best of {args.repeats}"
    )
    for column in ("size px", "ms / image", "CPU ms / image", "images / s"):
        table.add_column(column, justify="right")
    for size in args.sizes:
        best, best_cpu = float("inf"), float("inf")
        for _ in range(args.repeats):
            started, cpu = time.perf_counter(), time.process_time()
            for task in tasks:
                _render_one(task, size, 0)
            best = min(best, time.perf_counter() - started)
            best_cpu = min(best_cpu, time.process_time() - cpu)
        n = len(tasks)
        table.add_row(str(size), f"{1000 * best / n:.1f}", f"{1000 * best_cpu / n:.1f}", f"{n / best:.1f}")
    Console().print(table)

    mirror_index = synth.synth_index(args.patients, image_size=192, pneumonia_fraction=0.45, seed=0)
    best, best_cpu = float("inf"), float("inf")
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            started, cpu = time.perf_counter(), time.process_time()
            synth.write_mirror(mirror_index, Path(out), image_size=192, workers=1, show_progress=False)
            best = min(best, time.perf_counter() - started)
            best_cpu = min(best_cpu, time.process_time() - cpu)
    n = len(mirror_index.entries)
    Console().print(
        f"write_mirror: {n} images at 192 px, 1 worker: {best:.2f} s ({n / best:.1f} images/s), CPU {best_cpu:.2f} s"
    )


if __name__ == "__main__":
    main()
