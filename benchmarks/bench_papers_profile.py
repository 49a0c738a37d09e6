"""The `papers` profile's pipeline, proven to run on a CPU at toy scale: every backbone and method of the profile,
trained one epoch on a tiny synthetic cohort, through `dvc repro` in a fresh copy of the repository; one table.

    python benchmarks/bench_papers_profile.py [--size 64] [--per-class 24] [--keep DIR]

The profile (`cxrexplain params --profile papers`) is the GPU run of the papers this project answers: seven backbones
(ResNet-50/101, DenseNet-121/161, EfficientNet-B0, VGG16, ViT-B/16) and their explanation methods. Here its backbones,
measures and methods are kept but Score-CAM (one forward pass per channel and image, at every sanity step: hours on a
CPU), with one sanity cascade (top-down) instead of three, and the scale is changed for a CPU: the synthetic mirror
(200 patients at 128 px), `--per-class` images per class cached at `--size` px (a multiple of 16, for the ViT), one
epoch from scratch, one training seed, a 2-image explain subset, 2 sanity images, 4 IG steps, 2 SmoothGrad copies,
occluded quarters and 50 bootstrap resamples. It prints
each stage's time (from DVC's output) and checks that the report has the cross-architecture and the
confidence-increase sections with every backbone in them. Its numbers test the machinery, not the methods: synthetic
data, not medical evidence.
Not part of the test suite (633 s on an idle 2-core CPU: see the README); nothing here is asserted by the
tests.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from repocopy import DEMO_OUTPUTS, snapshot
from rich.console import Console
from rich.table import Table


def cpu_scale(params: dict, size: int, per_class: int) -> dict:
    """The papers profile's params with a CPU's scale (backbones, methods and measures untouched)."""
    params["seeds"] = [42]
    params["data"] = {**params["data"], "source": "synthetic"}
    params["data"]["synthetic"] = {
        **params["data"]["synthetic"],
        "patients": 200,
        "image_size": 128,
        "pneumonia_fraction": 0.45,
        "opacity_scale": 3.0,
        "opacity_contrast": 2.5,
    }
    params["sample"] = {**params["sample"], "per_class": per_class, "image_size": size}
    params["model"] = {**params["model"], "pretrained": "none"}
    params["train"] = {
        **params["train"],
        "image_size": size,
        "batch_size": 8,
        "max_epochs": 1,
        "patience": 1,
        "accelerator": "cpu",
        "devices": 1,
    }
    explain = params["explain"]
    explain.update(subset=2, tie_orders=1, bootstrap=50, batch_size=8)
    # Score-CAM runs the whole network once per channel of the CAM layer and image, and again at every step of the
    # sanity cascade: hours on a CPU for the 2,048-2,208-channel backbones. Left out here, and the cascade limited to
    # one order; Score-CAM itself is tested against pytorch-grad-cam (tests/explain/test_perturbation_cams.py).
    explain["cams"] = [c for c in explain["cams"] if c != "scorecam"]
    explain["sanity"] = {**explain["sanity"], "images": 2, "modes": ["top_down"]}
    explain["faithfulness"] = {**explain["faithfulness"], "steps": 4, "road_percentiles": [50]}
    # the many-pass attributions at their cheapest (each runs at every sanity step too): 4 IG steps, 2 SmoothGrad
    # copies, occlusion by quarters (16 windows instead of 225)
    explain["attribution"] = {
        **explain["attribution"],
        "ig_steps": 4,
        "smoothgrad_samples": 2,
        "occlusion_window": 0.25,
        "occlusion_stride": 0.25,
    }
    explain["gallery"] = {**explain["gallery"], "per_outcome": 1, "compare_images": 2}
    params["report"] = {**params["report"], "bootstrap": 50}
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="cache and network input side (a multiple of 16)")
    parser.add_argument(
        "--per-class", type=int, default=24, help="images per class (at least 20: the split stratifies 20 folds)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it")
    args = parser.parse_args()
    console = Console()
    dest = args.keep or Path(tempfile.mkdtemp(prefix="cxrexplain-papers-"))
    dest.mkdir(parents=True, exist_ok=True)
    snapshot(dest, leave_out=(*DEMO_OUTPUTS, "dvc.lock"))
    bin_dir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MLFLOW_TRACKING_URI": f"sqlite:///{dest}/mlflow.db", "HOME": str(dest)}
    subprocess.run([f"{bin_dir}/cxrexplain", "params", "--profile", "papers"], cwd=dest, env=env, check=True)
    profile = yaml.safe_load((dest / "params.yaml").read_text())
    archs, cams, attributions = (
        profile["model"]["archs"],
        profile["explain"]["cams"],
        profile["explain"]["attributions"],
    )
    (dest / "params.yaml").write_text(yaml.safe_dump(cpu_scale(profile, args.size, args.per_class), sort_keys=False))
    subprocess.run([f"{bin_dir}/cxrexplain", "params", "--check"], cwd=dest, env=env, check=True)

    start = time.perf_counter()
    process = subprocess.Popen(
        [f"{bin_dir}/dvc", "repro"], cwd=dest, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    times: dict[str, float] = {}
    current, since = None, start
    for line in process.stdout:
        found = re.match(r"Running stage '([^']+)'", line)
        if found:
            now = time.perf_counter()
            if current:
                times[current] = now - since
            current, since = found.group(1), now
            console.print(f"{found.group(1)} …")
    process.wait()
    if current:
        times[current] = time.perf_counter() - since
    total = time.perf_counter() - start
    if process.returncode:
        console.print(f"[red]dvc repro failed (exit {process.returncode}); the copy is kept in {dest}[/red]")
        raise SystemExit(process.returncode)

    report = (dest / "reports" / "report.md").read_text()
    checks = {
        "cross-architecture section": "## Across backbones" in report,
        "confidence-increase section": "## Methods compared by confidence increase" in report,
        "every backbone in the cross-architecture table": all(f"| {a} | " in report for a in archs),
    }
    table = Table(
        title=(
            f"`papers` profile on this CPU at toy scale: {len(archs)} backbones, {len(cams)} CAMs, "
            f"{len(attributions)} attributions, {args.size} px, 1 epoch (synthetic data: not medical evidence)"
        )
    )
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, seconds in times.items():
        table.add_row(name, f"{seconds:.0f}")
    table.add_row("total (dvc repro)", f"{total:.0f}")
    console.print(table)
    for what, ok in checks.items():
        console.print(f"{'ok' if ok else 'MISSING'}: {what}")
    console.print(f"workspace: {dest}" if args.keep else "")
    if not args.keep:
        shutil.rmtree(dest, ignore_errors=True)
    if not all(checks.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
