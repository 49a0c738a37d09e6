"""The ``cxrexplain`` command: one sub-command per pipeline stage, plus user tools (params, synth, explain-image,
compare, view).

DVC calls the stage commands (see dvc.yaml); a person can call them too. Errors a user can cause print one clear
message, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import atexit
import gc
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from cxrexplain.config import PARAMS_FILE, available_profiles, load_params, profile_params, write_params
from cxrexplain.errors import CxrError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Explainable Pneumonia vs No Finding classification on NIH ChestX-ray14 (a DVC pipeline).",
)

ParamsOption = Annotated[Path, typer.Option("--params", help="the params file to read")]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]
SeedOption = Annotated[
    int | None, typer.Option(help="a training seed of params.yaml's seeds [default: the first, the primary run]")
]


@app.command()
def params(
    profile: Annotated[str, typer.Option(help="study (the defaults), or a file name under profiles/")] = "study",
    check: Annotated[bool, typer.Option("--check", help="only validate the params file, write nothing")] = False,
    path: ParamsOption = PARAMS_FILE,
) -> None:
    """Write params.yaml for a profile (study, ci, demo), or --check the current one."""
    if check:
        load_params(path)
        typer.echo(f"{path}: valid")
        return
    write_params(profile_params(profile), profile, path)
    typer.echo(f"{path}: profile '{profile}' written (profiles: {', '.join(available_profiles())})")


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="folder to write the mirror into")],
    patients: Annotated[int, typer.Option(help="patients to generate (ignored with --from-metadata)")] = 300,
    size: Annotated[int, typer.Option(help="side of the PNGs in pixels (NIH: 1024)")] = 256,
    seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 0,
    pneumonia_fraction: Annotated[float, typer.Option(help="share of patients with a Pneumonia image")] = 0.25,
    from_metadata: Annotated[
        Path | None, typer.Option(help="a real Data_Entry_2017_v2020.csv: render synthetic pixels for its index")
    ] = None,
    bbox: Annotated[
        Path | None, typer.Option(help="a real BBox_List_2017.csv, to place opacities on its boxes")
    ] = None,
    test_list: Annotated[Path | None, typer.Option(help="a real test_list.txt, kept as the mirror's test list")] = None,
    subset: Annotated[
        int | None, typer.Option(help="with --from-metadata: keep this many random patients of the index")
    ] = None,
    workers: Annotated[int, typer.Option(help="rendering processes")] = 2,
    progress: ProgressOption = True,
) -> None:
    """Generate a synthetic NIH-format mirror (NOT medical data): 12 tarballs, the NIH CSVs and lists, MD5SUMS."""
    from cxrexplain.data.synth import index_from_metadata, synth_index, write_mirror

    if not 32 <= size <= 2048:
        raise CxrError(f"--size: between 32 and 2048 pixels (NIH: 1024), got {size}")
    if from_metadata is not None:
        index = index_from_metadata(from_metadata, bbox, patients=subset, seed=seed, test_list=test_list)
    else:
        if not 0 < pneumonia_fraction < 1:
            raise CxrError(f"--pneumonia-fraction: must be between 0 and 1, got {pneumonia_fraction}")
        index = synth_index(patients, image_size=size, pneumonia_fraction=pneumonia_fraction, seed=seed)
    manifest = write_mirror(index, out, image_size=size, seed=seed, workers=workers, show_progress=progress)
    n_pos = int(index.entries["labels"].str.contains("Pneumonia").sum())
    typer.echo(
        f"{out}: {len(index.entries)} images of {index.entries['patient'].nunique()} patients "
        f"({n_pos} with Pneumonia), {size} px; checksums in {manifest.name}. Synthetic: not medical data."
    )


@app.command()
def download(path: ParamsOption = PARAMS_FILE, progress: ProgressOption = True) -> None:
    """Stage download: fetch (or generate) the NIH mirror into data/raw/, resumable and verified."""
    from cxrexplain.stages import download as stage

    stage.run(load_params(path), show_progress=progress)


@app.command()
def sample(
    path: ParamsOption = PARAMS_FILE,
    progress: ProgressOption = True,
    from_dicom: Annotated[
        Path | None,
        typer.Option("--from-dicom", help="cache a folder of DICOM radiographs instead of the NIH cohort (--labels)"),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="with --from-dicom: CSV of file,label (1/Pneumonia, 0/No Finding)[,patient,view]"),
    ] = None,
    boxes: Annotated[
        Path | None, typer.Option(help="with --from-dicom: CSV of file,x,y,w,h (Pneumonia boxes in DICOM pixels)")
    ] = None,
    max_skipped: Annotated[
        float, typer.Option(help="with --from-dicom: the share of unreadable files skipped before the run fails")
    ] = 0.01,
) -> None:
    """Stage sample: pick the cohort and cache its images (data/cache/); or, with --from-dicom, cache DICOM files."""
    if from_dicom is None:
        if labels is not None or boxes is not None:
            raise CxrError("--labels and --boxes describe DICOM files: give their folder with --from-dicom")
        from cxrexplain.stages import sample as stage

        stage.run(load_params(path), show_progress=progress)
        return
    if labels is None:
        raise CxrError(f"--from-dicom {from_dicom}: give the labels CSV with --labels (columns file,label)")
    from cxrexplain.stages import sample_dicom

    sample_dicom.run(load_params(path), from_dicom, labels, boxes, max_skipped=max_skipped, show_progress=progress)


@app.command()
def split(path: ParamsOption = PARAMS_FILE) -> None:
    """Stage split: train/val/test by patient (data/split.csv)."""
    from cxrexplain.stages import split as stage

    stage.run(load_params(path))


@app.command()
def train(
    arch: Annotated[
        str, typer.Option(help="a backbone of the registry, e.g. one of model.archs (resnet50, densenet121)")
    ],
    seed: SeedOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from models/<arch>/seed<seed>/last.ckpt if it exists")
    ] = False,
    path: ParamsOption = PARAMS_FILE,
    progress: ProgressOption = True,
) -> None:
    """Stage train@arch-seed: fit the backbone with the study's head, tracked in MLflow (models/<arch>/seed<seed>/)."""
    from cxrexplain.stages import train as stage

    stage.run(load_params(path), arch, seed=seed, resume=resume, show_progress=progress)


@app.command()
def leakage(seed: SeedOption = None, path: ParamsOption = PARAMS_FILE, progress: ProgressOption = True) -> None:
    """Stage leakage: the audit, model.archs[0] trained on the other split protocol (leakage/, metrics/leakage.json)."""
    from cxrexplain.stages import leakage as stage

    stage.run(load_params(path), seed=seed, show_progress=progress)


@app.command()
def explain(
    arch: Annotated[
        str, typer.Option(help="a backbone of the registry, e.g. one of model.archs (resnet50, densenet121)")
    ],
    seed: SeedOption = None,
    path: ParamsOption = PARAMS_FILE,
    progress: ProgressOption = True,
) -> None:
    """Stage explain@arch-seed: CAMs and attribution baselines of every test image, measured
    (explain/<arch>/seed<seed>/)."""
    from cxrexplain.stages import explain as stage

    stage.run(load_params(path), arch, seed=seed, show_progress=progress)


@app.command()
def consistency(seed: SeedOption = None, path: ParamsOption = PARAMS_FILE) -> None:
    """Stage consistency: agreement of the two architectures' CAMs (one training seed's) on the same images."""
    from cxrexplain.stages import consistency as stage

    stage.run(load_params(path), seed=seed)


@app.command()
def report(
    path: ParamsOption = PARAMS_FILE,
    log_only: Annotated[
        bool,
        typer.Option(
            "--log-only",
            help="log the existing reports/ to MLflow without rebuilding it, unless the store already has it",
        ),
    ] = False,
) -> None:
    """Stage report: metrics with intervals, the study beside this run, figures, explanations (reports/)."""
    from cxrexplain.stages import report as stage

    if log_only:
        stage.log_only(load_params(path))
    else:
        stage.run(load_params(path))


@app.command()
def ratings(path: ParamsOption = PARAMS_FILE) -> None:
    """Stage ratings: the readers' ratings of the maps (ratings/*.csv) as a reader study (metrics/ratings.json)."""
    from cxrexplain.stages import ratings as stage

    stage.run(load_params(path))


@app.command()
def view(
    arch: Annotated[str | None, typer.Option(help="a backbone of model.archs [default: the first]")] = None,
    seed: SeedOption = None,
    reader: Annotated[
        str | None, typer.Option(help="your reader id: ratings go to ratings/<reader>.csv [default: your login name]")
    ] = None,
    blind: Annotated[
        bool, typer.Option("--blind", help="blinded reading: method names hidden, images and maps in your own order")
    ] = False,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0: any free port)")] = 8765,
    browser: Annotated[bool, typer.Option("--browser/--no-browser", help="open the page in a browser")] = True,
    path: ParamsOption = PARAMS_FILE,
) -> None:
    """Browse and rate one model's explanations in a browser (a local server on 127.0.0.1; Ctrl-C stops it)."""
    import getpass
    import webbrowser

    import torch

    from cxrexplain.config import require_arch, require_seed
    from cxrexplain.evaluation.ratings import check_reader
    from cxrexplain.viewer.data import load_run
    from cxrexplain.viewer.server import Session, make_server
    from cxrexplain.workspace import Workspace

    params = load_params(path)
    arch = arch or params.model.archs[0]
    require_arch(arch, "view")
    seed = require_seed(params, seed, "view")
    ws = Workspace()
    reader = check_reader(reader or getpass.getuser())
    session = Session(load_run(ws, arch, seed), reader, ws.ratings.reader(reader), blinded=blind)
    server = make_server(session, port)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    run = session.run
    counts = sorted({len(run.available(k)) for k in range(len(run.items))})
    maps = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    typer.echo(
        f"viewer of {arch} seed {seed}: {len(run.items)} images, {maps} maps each ({len(run.methods)} methods); "
        f"reader {reader!r}{' (blinded)' if blind else ''}, ratings saved to {session.file} as you give them.\n"
        f"open {url}  (Ctrl-C stops the viewer)"
    )
    if browser:
        webbrowser.open(url)
    torch.set_num_threads(1)  # one small map per request: more threads only wait for each other on a busy CPU
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("viewer stopped")
    finally:
        server.server_close()


@app.command()
def compare(
    against: Annotated[
        str | None,
        typer.Option(help="compare a report with this one: a commit (hash, prefix, HEAD~1) or a report run's id"),
    ] = None,
    run: Annotated[
        str | None, typer.Option(help="with --against: the report to compare [default: the most recent report run]")
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="with --against: GitHub Markdown (a PR comment)")
    ] = False,
    bootstrap: Annotated[int, typer.Option(help="with --against, one seed on a side: bootstrap resamples")] = 1000,
    experiment: Annotated[str, typer.Option(help="MLflow experiment")] = "cxrexplain",
    last: Annotated[int, typer.Option(help="how many recent runs (without --against)")] = 20,
) -> None:
    """Print recent runs from the tracking store (commit, arch, data source, key and explanation metrics), or, with
    --against, whether each metric of a report changed beyond the noise (seed spread, or one seed: bootstrap)."""
    from rich.table import Table

    from cxrexplain import tracking

    if against is not None:
        _compare_reports(against, run, markdown=markdown, bootstrap=bootstrap, experiment=experiment)
        return
    if run is not None or markdown:
        raise CxrError("--run and --markdown compare two reports: give the reference with --against")
    table = tracking.recent_runs(experiment, last)
    if table.empty:
        typer.echo(f"no runs in experiment {experiment!r} at {tracking.tracking_uri()}")
        return
    view = Table(title=f"last {len(table)} runs of {experiment!r}")
    for column in table.columns:
        view.add_column(column, justify="left" if table[column].dtype == object else "right")
    for row in table.itertuples(index=False):
        view.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    Console(width=None if sys.stdout.isatty() else 200).print(view)


def _compare_reports(against: str, run: str | None, *, markdown: bool, bootstrap: int, experiment: str) -> None:
    """``compare --against``: both report runs and their metrics from MLflow, the primary seeds' per-image data when
    one side has one seed, the rows (evaluation/compare.py), printed as a rich table or Markdown."""
    from rich.table import Table

    from cxrexplain import tracking
    from cxrexplain.evaluation import compare as cmp

    if bootstrap < 100:
        raise CxrError(f"--bootstrap: at least 100 resamples for a 95 % interval, got {bootstrap}")
    mine, theirs = tracking.report_run(run, experiment), tracking.report_run(against, experiment)
    run_metrics, ref_metrics = tracking.report_metrics(mine), tracking.report_metrics(theirs)
    per_image = {
        arch: (cmp.PerImage(*tracking.primary_tables(mine, arch)), cmp.PerImage(*tracking.primary_tables(theirs, arch)))
        for arch in cmp.needs_per_image(run_metrics, ref_metrics)
    }
    for arch, (run_data, ref_data) in per_image.items():  # the tables each report was made from, or a clear refusal
        cmp.check_tables(run_metrics, arch, run_data, f"report run {mine['run_id']}")
        cmp.check_tables(ref_metrics, arch, ref_data, f"report run {theirs['run_id']}")
    table = cmp.compare(run_metrics, ref_metrics, per_image, n=bootstrap)
    if table.empty:
        raise CxrError(f"runs {mine['run_id']} and {theirs['run_id']} share no architecture: nothing to compare")
    if markdown:
        typer.echo(cmp.markdown(table, mine, theirs))
        return
    view = Table(title=f"RUN {cmp.describe(mine)}\nREF {cmp.describe(theirs)}", caption=cmp.LEGEND.replace("**", ""))
    for column in cmp.HEADER:
        view.add_column(column, justify="left" if column in ("arch", "metric", "verdict", "method") else "right")
    for cells, changed in zip(cmp.cells(table), table["changed"], strict=True):
        view.add_row(*cells, style="bold red" if changed else None)
    Console(width=None if sys.stdout.isatty() else 200).print(view)


@app.command("explain-image")
def explain_image(
    image: Annotated[Path, typer.Argument(help="a chest X-ray: DICOM, PNG or any format Pillow reads")],
    checkpoint: Annotated[Path, typer.Option(help="a training checkpoint, e.g. models/resnet50/best.ckpt")],
    method: Annotated[
        str,
        typer.Option(
            help="gradcam, gradcampp, xgradcam, layercam, hirescam, eigengradcam, "
            "saliency, integrated_gradients, occlusion, gradient_shap"
        ),
    ] = "gradcam",
    out: Annotated[Path | None, typer.Option(help="overlay PNG to write [default: <image stem>.<method>.png]")] = None,
    explain_class: Annotated[str, typer.Option("--class", help="predicted, pneumonia or no-finding")] = "predicted",
    size: Annotated[int | None, typer.Option(help="network input side [default: the checkpoint's]")] = None,
) -> None:
    """Explain one image: write its overlay and print the model's probability."""
    from cxrexplain.explain.single import explain_file

    result = explain_file(image, checkpoint, method, out, explain_class=explain_class, size=size)
    name = "Pneumonia" if result.explained_class == 1 else "No Finding"
    typer.echo(f"P(Pneumonia) = {result.probability:.4f}; {method} explains {name}: {result.path}")


def main() -> None:
    """Console-script entry point: run the app, print user errors without a traceback (exit 2)."""
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=Console(stderr=True), show_path=False)]
    )
    # At exit the interpreter's last garbage collection walks every object that torch, Lightning and MLflow created:
    # about 1.1 s of a 7 s `cxrexplain split` on a 2-core CPU. Freezing them (an exit handler, so it runs only when
    # the process ends, after the handlers registered later: logging's flush, MLflow's run end) skips that walk;
    # their memory goes back with the process. Every output is written and closed before (io.atomic_*).
    atexit.unregister(gc.freeze)  # once, however often main() runs in one process (the tests call it in-process)
    atexit.register(gc.freeze)
    try:
        app()
    except CxrError as error:
        Console(stderr=True).print(Text(f"error: {error}", style="bold red"))
        sys.exit(2)


if __name__ == "__main__":
    main()
