"""The report's content: test-set metrics with intervals, the study beside this run, figures and explanation tables.

:func:`build` takes what the earlier stages made, already loaded (one :class:`ArchInputs` per architecture, the
sample/split/consistency metrics as dicts), the run's :class:`RunFacts` and the validated ``params.report`` section,
and writes the whole report into one folder laid out as ``reports/``::

    figures/        confusion, ROC, PR, calibration, training, sanity_<arch> (drawn); gallery_gradcam_<arch> and
                    methods_<arch> (copied from explain/<arch>/)
    plots/          DVC plot data: confusion/<arch>.csv (actual, predicted at 0.5), roc/<arch>.csv (fpr, tpr)
    report.md       GitHub Markdown, figures linked relative to the folder
    report.html     the same document, one self-contained file (figures embedded)
    metrics.json    per architecture: intervals at 0.5 and at Youden's threshold, Grad-CAM headline; DeLong; the seed
                    spread (per seed, mean, sd, t-interval across seeds)

Every section but the seed spread describes the primary training seed's models (``params.seeds[0]``); the seed
spread (:mod:`cxrexplain.evaluation.seeds`) puts every seed's test metrics and Grad-CAM measures side by side.

:func:`write` builds into a temporary folder beside ``reports/`` and moves the result into place (:func:`publish`),
so a failure or a kill never leaves a ``report.md`` that links a figure which is not there. The explanation section
is generated from the measure registry: a new measure appears in the report without an edit here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from cxrexplain import tracking
from cxrexplain.config import Params, ReportParams
from cxrexplain.data.layout import NEGATIVE_NAMES
from cxrexplain.data.split import PROTOCOLS, leaked_test_images
from cxrexplain.errors import CxrError
from cxrexplain.evaluation import classification as cls
from cxrexplain.evaluation import figures
from cxrexplain.evaluation import seeds as seed_spread
from cxrexplain.evaluation.document import Document
from cxrexplain.explain.measures.registry import FAMILIES, MEASURES, Column
from cxrexplain.explain.measures.statistics import holm
from cxrexplain.io import atomic_dir, scratch_dir, write_csv, write_json, write_text
from cxrexplain.workspace import ExplainFiles, ReportFiles, Workspace, stage_name

STUDY = {"accuracy": 0.932, "precision": 0.918, "recall": 0.945, "auroc": 0.96, "heatmaps_on_region": 0.92}
SYNTHETIC_BANNER = (
    "SYNTHETIC DATA: every number and figure below was computed on the project's generated NIH-format mirror, "
    "not on radiographs. It checks the pipeline; it is not medical evidence."
)
CURVES = ("confusion", "roc", "pr", "calibration")  # the figures every architecture's run receives too
PAIRED_SHOWN = ("pointing", "energy", "deletion", "insertion", "average_drop", "increase", "road_morf")
TEST_NAMES = {"t": "t", "wilcoxon": "Wilcoxon", "mcnemar": "McNemar", "sign": "sign"}


@dataclass(frozen=True)
class ArchInputs:
    """One architecture's outputs of ``train@arch`` and ``explain@arch``, loaded.

    ``predictions``: one row per image (``image``, ``patient``, ``label``, ``probability``, ``split``);
    ``history``: one row per epoch (``epoch``, ``train/loss``, ``val/loss``, ``train/auroc``, ``val/auroc``);
    ``explained``: ``metrics/explain/<arch>.json``; ``paired`` and ``sanity_curve``: the explain tables;
    ``galleries``: figure name in the report (``gallery_gradcam``, ``methods``) → the PNG to copy.
    """

    predictions: pd.DataFrame
    history: pd.DataFrame
    explained: Mapping
    paired: pd.DataFrame
    sanity_curve: pd.DataFrame
    galleries: Mapping[str, Path]


@dataclass(frozen=True)
class SeedRun:
    """One training seed's outputs the seed spread reads: its predictions (val, test) and its explain metrics."""

    predictions: pd.DataFrame
    explained: Mapping
    environment: Mapping | None = None  # the training's ``environment`` (machine, torch, precision, deterministic)


@dataclass(frozen=True)
class RunFacts:
    """What the report states about how this run was made (from ``params`` and git)."""

    source: str
    group_by: str
    pretrained: str
    image_size: int
    seed: int  # the data seed: bootstraps
    commit: str
    dirty: bool  # uncommitted changes to tracked files
    seeds: tuple[int, ...] = (42,)  # the training seeds, the primary first

    @classmethod
    def of(cls, params: Params, commit: str, dirty: bool) -> RunFacts:
        p = params
        return cls(
            p.data.source, p.split.group_by, p.model.pretrained, p.train.image_size, p.seed, commit, dirty, p.seeds
        )

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"


@dataclass(frozen=True)
class Inputs:
    """Everything the report reads, loaded: per architecture, and the sample/split/consistency metrics."""

    archs: dict[str, ArchInputs]  # the primary seed's
    sample: dict
    split: dict
    consistency: dict | None  # the consistency stage's metrics: every pair of architectures
    seeds: dict[str, dict[int, SeedRun]]  # every architecture's every training seed, the primary first
    leakage: LeakageInputs | None = None  # the leakage stage's outputs (read_leakage)


def read_inputs(ws: Workspace, archs: Sequence[str], seeds: Sequence[int], *, run_refs: bool) -> Inputs:
    """Load every file the report reads from ``ws``, after checking all are there (:meth:`Workspace.require`: else a
    :class:`CxrError` naming the missing file and the stage that makes it), for every architecture and training seed
    (``seeds[0]``: the primary). ``run_refs``: the MLflow run references are needed too (the report logs into the
    runs)."""
    need = partial(ws.require, needed_by="report")
    primary = seeds[0]
    need([ws.stage_metrics("sample"), ws.stage_metrics("split")], made_by="sample split")
    for a in archs:
        for s in seeds:
            m, e = ws.model(a, s), ws.explain(a, s)
            need(
                [m.predictions, m.history, ws.stage_metrics("train", a, s), *([m.run_ref] if run_refs else [])],
                made_by=stage_name("train", a, s),
            )
            need([*e.complete, ws.stage_metrics("explain", a, s)], made_by=stage_name("explain", a, s))
    need([ws.consistency_metrics], made_by="consistency")
    explained = {a: {s: _json(ws.stage_metrics("explain", a, s)) for s in seeds} for a in archs}
    galleries = {a: linked_galleries(explained[a][primary], ws.explain(a, primary)) for a in archs}
    for a in archs:
        need(galleries[a].values(), made_by=stage_name("explain", a, primary))
    predictions = {a: {s: pd.read_csv(ws.model(a, s).predictions) for s in seeds} for a in archs}
    loaded = {
        a: ArchInputs(
            predictions=predictions[a][primary],
            history=pd.read_csv(ws.model(a, primary).history),
            explained=explained[a][primary],
            paired=pd.read_csv(ws.explain(a, primary).paired),
            sanity_curve=pd.read_csv(ws.explain(a, primary).sanity_curve),
            galleries=galleries[a],
        )
        for a in archs
    }
    environments = {a: {s: _json(ws.stage_metrics("train", a, s)).get("environment") for s in seeds} for a in archs}
    runs = {a: {s: SeedRun(predictions[a][s], explained[a][s], environments[a][s]) for s in seeds} for a in archs}
    consistency = _json(ws.consistency_metrics)
    leakage = read_leakage(ws, {a: x.predictions for a, x in loaded.items()})
    return Inputs(
        loaded, _json(ws.stage_metrics("sample")), _json(ws.stage_metrics("split")), consistency, runs, leakage
    )


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def linked_galleries(explained: Mapping, files: ExplainFiles) -> dict[str, Path]:
    """The explain stage's figures the report links, given its metrics, name in the report → file: the Grad-CAM
    gallery when Grad-CAM ran, the method grid when some test image has a Pneumonia box (the explain stage makes
    exactly these)."""
    out = {"gallery_gradcam": files.gallery("gradcam")} if "gradcam" in explained["methods"] else {}
    return {**out, "methods": files.methods_figure} if explained["images_with_boxes"] > 0 else out


def classification(predictions: pd.DataFrame, *, bootstrap: int, seed: int) -> dict:
    """Test-set metrics at 0.5 and at Youden's threshold (chosen on val), patient-clustered bootstrap intervals."""
    val, test = predictions[predictions["split"] == "val"], predictions[predictions["split"] == "test"]
    youden = cls.youden_threshold(val["label"].to_numpy(), val["probability"].to_numpy())
    y, p = test["label"].to_numpy(), test["probability"].to_numpy()
    patients = test["patient"].astype(str).to_numpy() if "patient" in test else None
    return {
        "test_images": len(test),
        "test_patients": len(set(patients)) if patients is not None else None,
        "threshold_youden": youden,
        "at_0.5": cls.bootstrap_metrics(y, p, 0.5, n=bootstrap, seed=seed, clusters=patients),
        "at_youden": cls.bootstrap_metrics(y, p, youden, n=bootstrap, seed=seed, clusters=patients),
    }


def explanation_headline(explained: Mapping) -> dict:
    """Grad-CAM's pointing game, its baselines and its sanity verdict, for ``metrics.json``."""
    gradcam = explained["methods"].get("gradcam", {})
    return {
        "gradcam_pointing": gradcam.get("pointing"),
        "pointing_chance": explained["pointing_chance"],
        "pointing_centre_prior": explained["pointing_centre_prior"],
        "gradcam_sanity_passes": gradcam.get("sanity", {}).get("passes"),
    }


def delong_comparison(predictions: Mapping[str, pd.DataFrame]) -> dict:
    """DeLong's test of two architectures' test AUROCs on the same test images (paired by image name)."""
    archs = list(predictions)
    a, b = (p[p["split"] == "test"].set_index("image") for p in predictions.values())
    common = a.index.intersection(b.index)
    if len(common) != len(a) or len(common) != len(b):
        raise CxrError(f"{archs[0]} and {archs[1]} were tested on different images; re-run both train stages")
    result = cls.delong(
        a.loc[common, "label"].to_numpy(),
        a.loc[common, "probability"].to_numpy(),
        b.loc[common, "probability"].to_numpy(),
    )
    return {"archs": archs, "images": len(common), **{k: float(v) for k, v in result.items()}}


def delong_comparisons(predictions: Mapping[str, pd.DataFrame]) -> list[dict]:
    """:func:`delong_comparison` of every pair of architectures (model.archs' order: (a0, a1), (a0, a2), ...), each
    with ``p_holm``, Holm's adjustment over the pairs; none with one architecture."""
    found = [
        delong_comparison({a: predictions[a], b: predictions[b]})
        for a, b in itertools.combinations(list(predictions), 2)
    ]
    for entry, adjusted in zip(found, holm([e["p"] for e in found]), strict=True):
        entry["p_holm"] = float(adjusted)
    return found


def negatives_of(sample: Mapping) -> tuple[str, str]:
    """The cohort's ``sample.negatives`` setting as ``metrics/sample.json`` records it (a file without it, written
    before the setting existed: ``no_finding``, the study's task) and the negative class's name."""
    setting = sample.get("negatives", "no_finding")
    return setting, NEGATIVE_NAMES.get(setting, setting)


def build(
    inputs: Mapping[str, ArchInputs],
    *,
    facts: RunFacts,
    settings: ReportParams,
    sample: Mapping,
    split: Mapping,
    consistency: Mapping | None,
    folder: Path,
    seed_runs: Mapping[str, Mapping[int, SeedRun]] | None = None,
    leakage: LeakageInputs | None = None,
    ratings: Mapping | None = None,
) -> tuple[dict, dict[str, str]]:
    """Write the report into ``folder`` (layout in the module docstring). ``inputs``: the primary seed's outputs per
    architecture; ``seed_runs``: every seed's, for the seed spread (None: the primary's alone); ``ratings``: the
    ratings stage's reader study (``metrics/ratings.json``; None or no readers: no section).

    Returns ``metrics.json``'s content and the figures made, key (``roc``, ``sanity_<arch>``, …) → file name.
    """
    archs = tuple(inputs)
    fig_dir, plots = Path(folder) / "figures", Path(folder) / "plots"
    fig_dir.mkdir(parents=True, exist_ok=True)
    note = "synthetic data: not medical evidence" if facts.synthetic else ""
    results = {
        a: {
            **classification(x.predictions, bootstrap=settings.bootstrap, seed=facts.seed),
            **explanation_headline(x.explained),
        }
        for a, x in inputs.items()
    }
    test_sets = {a: _test_set(x.predictions) for a, x in inputs.items()}
    comparison = delong_comparisons({a: x.predictions for a, x in inputs.items()})
    made = {
        "confusion": figures.confusion_figure(
            {a: cls.confusion(*test_sets[a], 0.5) for a in archs},
            fig_dir / "confusion.png",
            threshold_note=" (threshold 0.5)",
            note=note,
            classes=(negatives_of(sample)[1], "Pneumonia"),
        ),
        "roc": figures.roc_figure(
            {a: (*cls.roc_points(*test_sets[a]), results[a]["at_0.5"]["auroc"]["value"]) for a in archs},
            fig_dir / "roc.png",
            note=note,
        ),
        "pr": figures.pr_figure(
            {a: (*cls.pr_points(*test_sets[a]), results[a]["at_0.5"]["auprc"]["value"]) for a in archs},
            float(np.mean(test_sets[archs[0]][0])),
            fig_dir / "pr.png",
            note=note,
        ),
        "calibration": figures.calibration_figure(
            {a: cls.calibration_bins(*test_sets[a]) for a in archs}, fig_dir / "calibration.png", note=note
        ),
        "training": figures.training_figure(
            {a: x.history for a, x in inputs.items()}, fig_dir / "training.png", note=note
        ),
    }
    for a, x in inputs.items():
        for name, source in x.galleries.items():
            made[f"{name}_{a}"] = Path(shutil.copyfile(source, fig_dir / f"{name}_{a}.png"))
    for a in archs:  # DVC plot data: per-image actual/predicted (confusion template) and ROC points (simple template)
        y, p = test_sets[a]
        write_csv(plots / "confusion" / f"{a}.csv", pd.DataFrame({"actual": y, "predicted": (p > 0.5).astype(int)}))
        fpr, tpr = cls.roc_points(y, p)
        write_csv(plots / "roc" / f"{a}.csv", pd.DataFrame({"fpr": fpr, "tpr": tpr}))
    for a, x in inputs.items():
        if len(x.sanity_curve):
            made[f"sanity_{a}"] = figures.sanity_figure(
                x.sanity_curve,
                fig_dir / f"sanity_{a}.png",
                threshold=x.explained["settings"]["sanity_threshold"],
                note=note,
            )
    if seed_runs is None:
        seed_runs = {a: {facts.seeds[0]: SeedRun(x.predictions, x.explained)} for a, x in inputs.items()}
    spreads = {a: seed_spread_of(seed_runs[a]) for a in archs}
    doc = document(facts, sample, split, results, made, archs, comparison)
    seed_section(doc, spreads, results, {a: x.explained for a, x in inputs.items()}, facts)
    machines = reproducibility_section(doc, seed_runs, facts)
    explanations(doc, {a: x.explained for a, x in inputs.items()}, {a: x.paired for a, x in inputs.items()}, made)
    consistency_section(doc, consistency)
    cross_architecture_section(doc, results, {a: x.explained for a, x in inputs.items()}, consistency, facts)
    confidence_section(doc, {a: x.explained for a, x in inputs.items()}, {a: x.paired for a, x in inputs.items()})
    ratings_section(doc, ratings)
    audit = leakage_section(doc, leakage_comparison(leakage, bootstrap=settings.bootstrap, seed=facts.seed), facts)
    write_text(Path(folder) / "report.md", doc.markdown(Path(folder)))
    write_text(Path(folder) / "report.html", doc.html())
    metrics = {
        "source": facts.source,
        "synthetic": facts.synthetic,
        "split_protocol": facts.group_by,
        "negatives": negatives_of(sample)[0],  # the task: no_finding (the study's) or all_others
        "cohort": sample.get("cached", {}),
        "archs": results,
        "delong": comparison,
        "primary_seed": facts.seeds[0],
        "seeds": spreads,
        "environments": machines,
        "leakage": audit,
    }
    write_json(Path(folder) / "metrics.json", metrics)
    return metrics, {key: Path(path).name for key, path in made.items()}


def write(inputs: Mapping[str, ArchInputs], reports: Path, **content) -> tuple[dict, dict[str, str]]:
    """:func:`build` into a uniquely named temporary folder beside ``reports``, then :func:`publish` it there.

    ``content``: :func:`build`'s keyword arguments but ``folder``. On an error the temporary folder goes and
    ``reports`` is left byte for byte as it was; after a kill a ``.<name>.<random>.part`` folder stays, which no one
    reads.
    """
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    with scratch_dir(reports) as built:
        result = build(inputs, folder=built, **content)
        publish(built, reports)
    return result


def publish(built: Path, reports: Path) -> None:
    """Move a report built in ``built`` into ``reports``, each part by one rename, the Markdown last.

    ``figures/`` and ``plots/`` first (each folder renamed onto its old self: :func:`cxrexplain.io.atomic_dir`), then
    ``metrics.json``, ``report.html`` and ``report.md``: at every instant ``report.md`` links figures that are there.
    """
    for name in ("figures", "plots"):
        with atomic_dir(Path(reports) / name) as part:
            os.replace(Path(built) / name, part)  # a folder renamed onto the fresh, empty one
    for name in ("metrics.json", "report.html", "report.md"):
        os.replace(Path(built) / name, Path(reports) / name)


def log_runs(
    refs: Mapping[str, Mapping[int, Mapping[str, str]]],
    params: Params,
    files: ReportFiles,
    metrics: Mapping,
    made: Mapping[str, str],
    tags: Mapping[str, str] | None = None,
    tables: Mapping[str, Sequence[Path]] | None = None,
) -> str | None:
    """Each architecture's primary-seed MLflow run gets its figures and report metrics, every other seed's run its own
    test metrics at 0.5 (``report/at_0.5/<metric>``, from the seed spread); a summary run (in the store of the first
    architecture's run) gets the report, tagged with the runs it covers, the MD5 of ``metrics.json``
    (:func:`report_digest`) and ``tags``, and ``tables``: arch → the primary seed's ``predictions.csv`` and
    ``per_image.csv`` the report was made from, under ``report/tables/<arch>/`` (:data:`tracking.REPORT_TABLES`).
    ``compare --against`` bootstraps from these copies: the training run's own ``explain/per_image.csv`` is
    overwritten when the model is explained again, after which it no longer belongs to this report. ``refs``: arch →
    seed → run reference. Returns the summary run's id (None without runs)."""
    primary = params.primary_seed
    for arch, by_seed in refs.items():
        ref = by_seed[primary]
        figures = [files.figures / name for name in arch_figures(made, arch)]
        tracking.log_artifacts(ref["run_id"], figures, "report", uri=ref["tracking_uri"])
        tracking.log_metrics(ref["run_id"], flat_metrics(metrics["archs"][arch]), uri=ref["tracking_uri"])
        spread = metrics["seeds"][arch]
        for k, seed in enumerate(spread["seeds"]):
            if seed == primary:
                continue
            own = {
                f"report/at_0.5/{m}": entry["values"][k]
                for m, entry in spread["metrics"].items()
                if "/" not in m and not math.isnan(entry["values"][k])
            }
            tracking.log_metrics(by_seed[seed]["run_id"], own, uri=by_seed[seed]["tracking_uri"])
    if refs:
        uri = next(iter(refs.values()))[primary]["tracking_uri"]
        runs = {arch: {seed: ref["run_id"] for seed, ref in by_seed.items()} for arch, by_seed in refs.items()}
        extra = {tracking.REPORT_DIGEST_TAG: report_digest(files), **(tags or {})}
        summary = tracking.summary_run(params, runs, uri=uri, extra=extra)
        tracking.log_artifacts(summary, [files.markdown, files.html, files.metrics, files.figures], "report", uri=uri)
        for arch, paths in (tables or {}).items():
            tracking.log_artifacts(summary, list(paths), f"{tracking.REPORT_TABLES}/{arch}", uri=uri)
        return summary
    return None


def primary_tables(ws: Workspace, archs: Sequence[str], seeds: Sequence[int]) -> dict[str, list[Path]]:
    """arch → the primary seed's ``predictions.csv`` and ``per_image.csv``: what a summary run keeps a copy of."""
    return {a: [ws.model(a, seeds[0]).predictions, ws.explain(a, seeds[0]).per_image] for a in archs}


def report_digest(files: ReportFiles) -> str:
    """The MD5 of ``metrics.json``: what a report run is tagged with (:data:`cxrexplain.tracking.REPORT_DIGEST_TAG`)
    and what DVC records for it in ``dvc.lock``."""
    return hashlib.md5(files.metrics.read_bytes()).hexdigest()


def published(ws: Workspace, archs: Sequence[str], seeds: Sequence[int]) -> tuple[dict, dict[str, str]]:
    """The report in ``ws.report`` as it is, to log without rebuilding it: ``metrics.json``'s content and its figures
    (key -> file name, as :func:`build` returns them: a figure's key is its file's stem).

    Checked first, each failure a :class:`CxrError` naming the file and what to run: the report's files are there
    (``report.md``, ``report.html``, ``metrics.json``, the curves); ``metrics.json`` is JSON with a result and a seed
    spread for every arch of ``archs`` over exactly ``seeds``; and it is the report of the current trainings: every
    seed's test metrics at 0.5, recomputed from its ``predictions.csv`` now, equal the values the report recorded (a
    report of older trainings would otherwise be logged into the new trainings' runs).
    """
    files, need = ws.report, "report --log-only"
    curves = [files.figures / f"{key}.png" for key in CURVES]
    ws.require([files.metrics, files.markdown, files.html, *curves], needed_by=need, made_by="report")
    for a in archs:
        for s in seeds:
            ws.require([ws.model(a, s).predictions], needed_by=need, made_by=stage_name("train", a, s))
    try:
        metrics = _json(files.metrics)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CxrError(f"{files.metrics}: not JSON; rebuild the report (dvc repro report)") from None
    spreads = metrics.get("seeds") or {}
    missing = [a for a in archs if a not in (metrics.get("archs") or {}) or a not in spreads]
    if missing or any(spreads[a].get("seeds") != list(seeds) for a in archs):
        raise CxrError(
            f"{files.metrics}: not a report of model.archs ({', '.join(archs)}) with the training seeds "
            f"{', '.join(map(str, seeds))}; rebuild it (dvc repro report)"
        )
    for a in archs:
        for k, s in enumerate(seeds):
            now = seed_spread.test_metrics(pd.read_csv(ws.model(a, s).predictions))
            recorded = {m: spreads[a]["metrics"][m]["values"][k] for m in now if m in spreads[a]["metrics"]}
            if any(not _same(now[m], v) for m, v in recorded.items()) or len(recorded) != len(now):
                raise CxrError(
                    f"{files.metrics}: its {a} seed {s} test metrics differ from those of "
                    f"{ws.model(a, s).predictions}, so reports/ is not the report of the current trainings; run "
                    "`dvc repro` (the report stage logs its report itself)"
                )
    made = {png.stem: png.name for png in sorted(files.figures.glob("*.png"))}
    return metrics, made


def _same(a: float, b: float | None) -> bool:
    """Equal to 1e-12, NaN equal to NaN (an undefined metric), as ``metrics.json`` round-trips floats."""
    if b is None:
        return False
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12


def arch_figures(made: Mapping[str, str], arch: str) -> list[str]:
    """The figure files an architecture's own MLflow run receives: its own figures, then the shared curves."""
    return [name for key, name in made.items() if key.endswith(arch)] + [made[key] for key in CURVES]


def flat_metrics(result: Mapping) -> dict[str, float]:
    """One architecture's ``metrics.json`` entry as MLflow metrics ``report/<threshold>/<metric>`` (NaN left out)."""
    return {
        f"report/{key}/{m}": v["value"]
        for key in ("at_0.5", "at_youden")
        for m, v in result[key].items()
        if not math.isnan(v["value"])
    }


def _test_set(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    test = predictions[predictions["split"] == "test"]
    return test["label"].to_numpy(), test["probability"].to_numpy()


def _fmt(entry: dict, key: str = "value") -> str:
    value = entry[key] if key in entry else entry["mean"]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f} ({entry['low']:.3f}-{entry['high']:.3f})"


def document(
    facts: RunFacts,
    sample: Mapping,
    split: Mapping,
    results: Mapping[str, dict],
    made: Mapping[str, Path],
    archs: Sequence[str],
    comparison: Sequence[Mapping],
) -> Document:
    """The cohort, the study beside this run, the classification metrics and their figures, DeLong's tests."""
    negatives, negative = negatives_of(sample)
    task = "Pneumonia vs No Finding" if negatives == "no_finding" else "Pneumonia vs all others (one-vs-rest)"
    doc = Document(f"cxrexplain report: {task}" + (" [SYNTHETIC DATA]" if facts.synthetic else ""))
    if facts.synthetic:
        doc.banner(SYNTHETIC_BANNER)
    cached = sample.get("cached", {})
    leak = "no patient in two splits" if facts.group_by == "patient" else "patients leak between splits"
    doc.paragraph(
        f"Commit `{facts.commit}`{' (dirty)' if facts.dirty else ''} · data source **{facts.source}** · split "
        f"protocol **{facts.group_by}-wise** ({leak}) "
        f"· cohort {cached.get('images', '?')} images ({cached.get('pneumonia', '?')} Pneumonia, "
        f"{cached.get('negative', '?')} {negative}) of {cached.get('patients', '?')} patients · "
        f"pretrained {facts.pretrained} · input {facts.image_size} px · training seeds "
        f"{', '.join(map(str, facts.seeds))}: every section describes the primary seed's ({facts.seeds[0]}) models "
        "but the seed spread."
    )
    splits = split.get("splits", {})
    if splits:
        doc.table(
            ["split", "images", "Pneumonia", negative, "patients"],
            [
                [name, v.get("images"), v.get("pneumonia"), v.get("negative"), v.get("patients")]
                for name, v in splits.items()
            ],
        )

    doc.heading("The study and this run")
    doc.paragraph(
        "The study reports an image-level random split of NIH ChestX-ray14 with 5,000 images per class; NIH has only "
        "1,431 Pneumonia images (1,008 patients), and an image-level split leaks patients. Values below are test-set "
        "point estimates with 95 % patient-clustered bootstrap intervals (patients resampled) at threshold 0.5."
        + (
            " This run's task is the study's: Pneumonia vs No Finding images (`sample.negatives: no_finding`)."
            if negatives == "no_finding"
            else " This run's task is NOT the study's: Pneumonia vs every image without Pneumonia "
            "(`sample.negatives: all_others`, one-vs-rest), the setting of CheXNet and the ChestX-ray14 literature "
            "(Pneumonia AUROC 0.63-0.78 on NIH's patient-wise official test list; CheXNet 0.768): compare its "
            "numbers with those, not with the study's."
        )
    )
    header = ["measure", "study (reported)", *archs]
    rows = []
    for key, name in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("auroc", "AUC")):
        rows.append([name, f"{STUDY[key]:.3f}", *(_fmt(results[a]["at_0.5"][key]) for a in archs)])
    rows.append(
        [
            "heatmaps on the relevant region",
            "~0.92 (how measured: not stated)",
            *(
                (
                    _fmt(results[a]["gradcam_pointing"])
                    + f" Grad-CAM pointing game on the Pneumonia map, n={results[a]['gradcam_pointing']['n']}; "
                    f"chance {results[a]['pointing_chance']:.3f}, "
                    f"centre prior {results[a]['pointing_centre_prior']:.3f}"
                )
                if results[a]["gradcam_pointing"]
                else "n/a"
                for a in archs
            ),
        ]
    )
    rows.append(["data source / split", "NIH / image-level", *(f"{facts.source} / {facts.group_by}" for a in archs)])
    rows.append(["negatives", "No Finding", *(negative for a in archs)])
    doc.table(header, rows)

    doc.heading("Test-set classification metrics")
    for label, key in (("threshold 0.5", "at_0.5"), ("threshold chosen on val (Youden's J)", "at_youden")):
        doc.heading(label, 3)
        table_rows = []
        for a in archs:
            threshold = 0.5 if key == "at_0.5" else results[a]["threshold_youden"]
            table_rows.append([a, f"{threshold:.3f}", *(_fmt(results[a][key][m]) for m in cls.METRICS)])
        doc.table(["arch", "threshold", *cls.METRICS], table_rows)
    doc.figure(made["confusion"], "Confusion matrices (test, threshold 0.5): counts and normalised")
    doc.figure(made["roc"], "ROC curves (test), AUC in the legend")
    doc.figure(made["pr"], "Precision-recall curves (test)")
    doc.figure(made["calibration"], "Calibration diagram (test)")
    doc.figure(made["training"], "Training curves: loss and AUROC per epoch")

    if comparison:
        doc.paragraph(
            f"DeLong's test of the test AUROCs of every pair of architectures on the same {comparison[0]['images']} "
            "images (difference = first − second with its 95 % CI; p Holm-adjusted over the pairs)."
        )
        doc.table(
            ["pair", "AUROC", "difference (95 % CI)", "z", "p (Holm)"],
            [
                [
                    f"{c['archs'][0]} vs {c['archs'][1]}",
                    f"{c['auc_a']:.3f} vs {c['auc_b']:.3f}",
                    f"{c['difference']:+.3f} ({c['low']:+.3f} to {c['high']:+.3f})",
                    f"{c['z']:.2f}",
                    f"{_p(c['p'])} ({_p(c['p_holm'])})",
                ]
                for c in comparison
            ],
        )
    return doc


def seed_spread_of(runs: Mapping[int, SeedRun]) -> dict:
    """One architecture's seed spread for ``metrics.json``: the seeds, per metric the per-seed values, mean, sd and
    t-interval (:func:`cxrexplain.evaluation.seeds.summarise`)."""
    table = seed_spread.seed_table(
        {s: r.predictions for s, r in runs.items()}, {s: r.explained for s, r in runs.items()}
    )
    return {"seeds": [int(s) for s in runs], "metrics": seed_spread.summarise(table)}


SEED_MEASURES = tuple(f"{seed_spread.METHOD}/{m}" for m in PAIRED_SHOWN)  # the Grad-CAM measures shown


def seed_section(
    doc: Document,
    spreads: Mapping[str, dict],
    results: Mapping[str, dict],
    explained: Mapping[str, Mapping],
    facts: RunFacts,
) -> None:
    """Per architecture: every training seed's test metrics (threshold 0.5) and Grad-CAM measures, their mean ± sd and
    95 % t-interval across seeds, beside the primary seed's patient-clustered bootstrap interval."""
    doc.heading("Seed spread: what retraining changes")
    n = len(facts.seeds)
    if n == 1:
        doc.paragraph(
            f"One training seed ({facts.seeds[0]}): no seed spread can be estimated, so nothing here says how much "
            "these numbers would move if the models were trained again. Give `seeds` two or more values in "
            "params.yaml (every architecture is then trained and explained once per seed) to measure it."
        )
    else:
        doc.paragraph(
            f"Every architecture was trained and explained once per training seed ({', '.join(map(str, facts.seeds))}; "
            f"the primary, {facts.seeds[0]}, is the run every other section describes), on the same cohort, split, "
            "explained images and tie orders: only the training's randomness (initial weights, shuffling, dropout, "
            "augmentation) differs. Per metric: each seed's value, mean ± sd (sample, ddof 1), the 95 % Student-t "
            f"interval of the mean across the {n} seeds (t(0.975, {n - 1}) = "
            f"{seed_spread.t_quantile(n):.2f}), and, for comparison, the primary "
            "seed's 95 % patient-clustered bootstrap interval (test patients resampled, one model): the two answer "
            "different questions, retraining vs resampling the test set. The t-interval is not clipped to a metric's "
            "range: with few seeds it can leave [0, 1], which says that the runs scatter too much for their mean to "
            "be pinned down. A difference between two commits smaller than the seed spread is not evidence of a "
            "change (`cxrexplain compare --against`)."
        )
    for arch, spread in spreads.items():
        metrics = spread["metrics"]
        seeds = spread["seeds"]
        rows = []
        for key in (*seed_spread.CLASSIFICATION, *SEED_MEASURES):
            if key not in metrics:
                continue
            entry = metrics[key]
            boot = _bootstrap_cell(results[arch], explained[arch], key)
            rows.append(
                [
                    key if "/" in key else f"test {key} (0.5)",
                    *(_num(v) for v in entry["values"]),
                    f"{_num(entry['mean'])} ± {_num(entry['sd'])}",
                    "n/a" if math.isnan(entry["low"]) else f"{entry['low']:.3f} to {entry['high']:.3f}",
                    boot,
                ]
            )
        doc.heading(arch, 3)
        doc.table(
            [
                "metric",
                *(f"seed {s}" for s in seeds),
                "mean ± sd",
                "95 % t-interval (seeds)",
                "95 % bootstrap (primary)",
            ],
            rows,
        )


ENVIRONMENT_KEYS = ("machine", "torch", "precision", "deterministic")


def environments(seed_runs: Mapping[str, Mapping[int, SeedRun]]) -> list[dict]:
    """The distinct training environments of a run, each with the trainings (``<arch> s<seed>``) made in it, in the
    order first met; a training whose metrics predate the record counts as ``not recorded``."""
    groups: dict[tuple, dict] = {}
    for arch, runs in seed_runs.items():
        for seed, run in runs.items():
            env = run.environment or {}
            key = tuple(str(env.get(k, "not recorded")) for k in ENVIRONMENT_KEYS)
            entry = groups.setdefault(key, {**dict(zip(ENVIRONMENT_KEYS, key, strict=True)), "trainings": []})
            entry["trainings"].append(f"{arch} s{seed}")
    return list(groups.values())


def reproducibility_section(doc: Document, seed_runs: Mapping[str, Mapping[int, SeedRun]], facts: RunFacts) -> list:
    """What in this report is identical where: the environments its trainings ran in, what reproduces bit for bit
    (and where that was tested), what does not, and the yardstick for a difference. Returns the environments."""
    found = environments(seed_runs)
    doc.heading("Reproducibility: what is identical where")
    inputs = (
        "the synthetic mirror (its generator is seeded), the cohort and the split"
        if facts.synthetic
        else f"from the same {facts.source} files, the cohort and the split"
    )
    doc.paragraph(
        f"Identical bytes on any machine: {inputs} "
        "(their MD5s are in `dvc.lock`; `dvc status` says whether a clone's match). Identical on the same machine "
        "kind with the same software and params: the trainings (weights bit for bit, tested on this repository's "
        "CPU machine by `tests/stages/test_train_stage.py`) and so everything computed from them. Not identical "
        "across CPU kinds or GPUs: their kernels round differently and a few epochs from scratch amplify that, so "
        "a clone on another machine re-makes this report with its own numbers. The trainings of this report ran "
        "in the environment(s) below."
    )
    doc.table(
        ["machine", "torch", "precision", "deterministic algorithms", "trainings"],
        [[e["machine"], e["torch"], e["precision"], e["deterministic"], ", ".join(e["trainings"])] for e in found],
    )
    if len(found) > 1:
        doc.paragraph(
            "These trainings ran in more than one environment: differences between them mix the environment's "
            "with the seeds' and the code's."
        )
    doc.paragraph(
        (
            "The yardstick for a difference from another run (another commit or machine) is the seed spread above: "
            if len(facts.seeds) > 1
            else "With one training seed nothing here measures how much retraining moves these numbers; the "
            "yardstick for a difference from another run is then the test set's bootstrap interval only: "
        )
        + "`cxrexplain compare --against <commit or run>` tells for every metric whether it moved beyond it."
    )
    return found


def _num(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _bootstrap_cell(result: Mapping, explained: Mapping, key: str) -> str:
    """The primary seed's bootstrap interval of ``key``: a classification metric at 0.5 (``metrics.json``), or a
    Grad-CAM measure (its explain metrics)."""
    if "/" in key:
        method, column = key.split("/", 1)
        entry = explained.get("methods", {}).get(method, {}).get(column)
    else:
        entry = result["at_0.5"].get(key)
    if not entry or entry.get("low") is None or math.isnan(entry["low"]):
        return "n/a"
    return f"{entry['low']:.3f} to {entry['high']:.3f}"


def consistency_section(doc: Document, consistency: Mapping | None) -> None:
    """Agreement of every pair of architectures' maps (``metrics/explain/consistency.json``), when there is a pair."""
    pairs = (consistency or {}).get("pairs") or []
    if not pairs:
        return
    doc.heading("Consistency across architectures", 3)
    doc.paragraph(
        f"Every pair of architectures' maps of class Pneumonia on the same {consistency['images']} test images (every "
        "map explains Pneumonia, whatever either model predicted): Spearman rank correlation over the pixels (a "
        "constant map counts as ρ = 0) and IoU of the two top-20 % regions, ties broken at random and averaged "
        f"over {consistency['tie_orders']} orders; patient-clustered 95 % intervals."
    )
    doc.table(
        ["pair", "method", "Spearman ρ", "top-20 % region IoU"],
        [
            [f"{pair['archs'][0]} vs {pair['archs'][1]}", m, _cell(v["spearman"]), _cell(v["top_iou"])]
            for pair in pairs
            for m, v in pair["methods"].items()
        ],
    )


CROSS_MEASURES = (
    ("pointing", "Grad-CAM pointing ↑"),
    ("energy", "energy in boxes ↑"),
    ("deletion", "deletion AUC ↓"),
    ("insertion", "insertion AUC ↑"),
    ("increase", "increase in confidence ↑"),
)
"""The Grad-CAM measures of the cross-architecture table: localisation, then perturbation faithfulness."""


def consistency_matrix(consistency: Mapping | None, archs: Sequence[str], method: str = "gradcam") -> list[list[str]]:
    """Rows of an arch × arch table of ``method``'s mean Spearman ρ between the two backbones' Pneumonia maps (the
    consistency stage's pairs; the diagonal is 1 by definition, a pair without the method ``n/a``)."""
    found = {}
    for pair in (consistency or {}).get("pairs") or []:
        entry = pair["methods"].get(method, {}).get("spearman")
        if entry:
            a, b = pair["archs"]
            found[a, b] = found[b, a] = f"{entry['mean']:.2f}"
    return [[a, *("1" if a == b else found.get((a, b), "n/a") for b in archs)] for a in archs]


def cross_architecture_section(
    doc: Document,
    results: Mapping[str, Mapping],
    explained: Mapping[str, Mapping],
    consistency: Mapping | None,
    facts: RunFacts,
) -> None:
    """The quantitative framework's table: per backbone, test AUROC, Grad-CAM's localisation, faithfulness and sanity;
    then the backbones' pairwise Grad-CAM consistency."""
    archs = list(results)
    doc.heading("Across backbones: Grad-CAM's localisation, faithfulness, sanity and consistency")
    doc.paragraph(
        "The cross-architecture analysis of the papers this project answers (localisation, perturbation "
        "faithfulness and cross-model consistency per backbone; one of them finds Grad-CAM's fidelity degrading for "
        "a Vision Transformer), computed on this run's backbones, primary training seed: test AUROC at 0.5 with its "
        "patient-clustered interval, Grad-CAM's measures (means with intervals, from the sections above) and its "
        "sanity verdict (mean |ρ| once the head and the last block are randomised)."
        + (" On synthetic data this tests the machinery; it says nothing about radiographs." if facts.synthetic else "")
    )
    rows = []
    for a in archs:
        gradcam = explained[a]["methods"].get("gradcam", {})
        sanity = gradcam.get("sanity")
        rows.append(
            [
                a,
                _fmt(results[a]["at_0.5"]["auroc"]),
                *(_cell(gradcam.get(key)) for key, _ in CROSS_MEASURES),
                (
                    f"{'passes' if sanity['passes'] else 'FAILS'} ({sanity['spearman_after_last_block']:.2f})"
                    if sanity
                    else "n/a"
                ),
            ]
        )
    doc.table(["backbone", "test AUROC", *(label for _, label in CROSS_MEASURES), "sanity (mean abs ρ)"], rows)
    if len(archs) > 1:
        doc.paragraph(
            "Grad-CAM's consistency between backbones: mean Spearman ρ of the two backbones' Pneumonia maps of the "
            "same test images (intervals in the consistency table above)."
        )
        doc.table(["", *archs], consistency_matrix(consistency, archs))


def confidence_section(doc: Document, explained: Mapping[str, Mapping], paired: Mapping[str, pd.DataFrame]) -> None:
    """The CAM-variant comparison by confidence: per backbone, every method's increase in confidence and average drop
    (the decision maps of the subset), ranked, and every pair of methods' paired tests on them (the explain stage's
    ``paired.csv``: McNemar's exact test on the 0/1 increase, the paired t-test on the drop; Holm-adjusted)."""
    if not any("increase" in e for x in explained.values() for e in x["methods"].values()):
        return
    doc.heading("Methods compared by confidence increase")
    doc.paragraph(
        "As the papers that compare CAM variants do (Chattopadhay et al. 2018's measures): the image multiplied by "
        "the map is shown to the model; *increase in confidence* is the share of images whose score for the "
        "explained class rises, *average drop* the mean relative fall of that score in % (lower is better). Methods "
        "are ranked by increase, ties by average drop; the pairwise table gives, for every pair of methods on the "
        "same images, the difference (row − column) of the average drop in percentage points with the paired "
        "t-test's Holm-adjusted p, and the difference of the increase with McNemar's exact test's."
    )
    for a, info in explained.items():
        methods = {m: e for m, e in info["methods"].items() if "increase" in e}
        if not methods:
            continue
        ranked = sorted(
            methods, key=lambda m: (-_mean(methods[m], "increase", -math.inf), _mean(methods[m], "average_drop"))
        )
        doc.heading(a, 3)
        doc.table(
            ["rank", "method", "increase in confidence (share) ↑", "average drop (%) ↓"],
            [
                [str(k + 1), m, _cell(methods[m].get("increase")), _cell(methods[m].get("average_drop"))]
                for k, m in enumerate(ranked)
            ],
        )
        table = paired.get(a)
        if table is None or not len(table):
            continue
        doc.table(["row − column", *ranked], pairwise_cells(table, ranked))


def _mean(entry: Mapping, measure: str, missing: float = math.inf) -> float:
    """``entry[measure]["mean"]``, or ``missing`` when it is absent or NaN."""
    value = (entry.get(measure) or {}).get("mean")
    return missing if value is None or math.isnan(value) else float(value)


def pairwise_cells(table: pd.DataFrame, methods: Sequence[str]) -> list[list[str]]:
    """Rows of a method × method table from ``paired.csv``: per pair, the average drop's difference (row − column)
    with the paired t-test's Holm p, and the increase's with McNemar's (a pair stored as (column, row) is negated)."""

    def cell(row: str, column: str) -> str:
        parts = []
        for measure, test in (("average_drop", "t"), ("increase", "mcnemar")):
            found = table[(table["measure"] == measure) & (table["test"] == test)]
            forward = found[(found["method_a"] == row) & (found["method_b"] == column)]
            backward = found[(found["method_a"] == column) & (found["method_b"] == row)]
            if len(forward):
                entry, sign = forward.iloc[0], 1.0
            elif len(backward):
                entry, sign = backward.iloc[0], -1.0
            else:
                continue
            value = sign * entry["mean_difference"] + 0.0  # + 0.0: no "-0.000"
            shown = f"drop {value:+.2f} pp" if measure == "average_drop" else f"incr. {value:+.3f}"
            parts.append(f"{shown} (p {_p(entry['p_holm'])})")
        return "; ".join(parts) or "n/a"

    return [[r, *("" if r == c else cell(r, c) for c in methods)] for r in methods]


def ratings_section(doc: Document, ratings: Mapping | None) -> None:
    """The reader study (the ratings stage's ``metrics/ratings.json``), when some reader has rated a map."""
    if not ratings or not ratings.get("readers"):
        return

    def share(entry: Mapping) -> str:
        if entry["mean"] is None:
            return "n/a"
        return f"{entry['mean']:.2f} ({entry['low']:.2f}-{entry['high']:.2f}, n={entry['n']})"

    doc.heading("Reader study: the maps rated", 3)
    doc.paragraph(
        f"{ratings['ratings']} ratings by {len(ratings['readers'])} reader(s) ({', '.join(ratings['readers'])}) in "
        "`cxrexplain view`: each map of class Pneumonia rated on the finding, partly on it, off it, or on an artefact "
        "(ribs, clavicles, ECG leads, image edges). *On the finding*: the share among the ratings of Pneumonia images "
        '(the study\'s "heatmaps on the relevant region in about 92 % of cases", measured), with a 95 % '
        "patient-clustered bootstrap interval; *on an artefact*: among the ratings of every image. *Pointing*: the "
        "ratings of maps the pointing game scored, pointing hit against rated on the finding: agreement and Cohen's "
        "κ (n ratings)."
    )
    rows = []
    for name, model in ratings["models"].items():
        for method, m in model["methods"].items():
            p = m["pointing"]
            agreement = (
                f"{p['agreement']:.2f}, κ {_num(p['kappa'])} (n={p['n']})" if p["agreement"] is not None else "n/a"
            )
            rows.append(
                [
                    name,
                    method,
                    f"{m['ratings']} ({m['readers']})",
                    share(m["on_finding"]),
                    share(m["on_or_partly"]),
                    share(m["artefact"]),
                    agreement,
                ]
            )
    doc.table(
        ["model", "method", "ratings (readers)", "on the finding", "on or partly", "on an artefact", "pointing"], rows
    )
    agreeing = [(name, m["inter_reader"]) for name, m in ratings["models"].items() if m["inter_reader"]]
    if agreeing:
        doc.paragraph(
            "Inter-reader agreement over the four categories, on the maps every reader of a model rated: "
            + "; ".join(
                f"{name}: {a['statistic']} {_num(a['kappa'])} on {a['maps']} maps of {a['readers']} readers "
                f"(the same rating from every reader on a share {_num(a['agreement'])} of them)"
                for name, a in agreeing
            )
            + "."
        )


@dataclass(frozen=True)
class LeakageInputs:
    """The leakage audit's outputs beside the pipeline's, loaded (:func:`read_leakage`).

    ``predictions`` and ``splits``: per split protocol (``patient``, ``image``), the audited architecture's
    predictions (val and test rows, as ``models/<arch>/predictions.csv``) and the split table (``image``,
    ``patient``, ``split``); one pair is the pipeline's (``models/<arch>/``, ``data/split.csv``), the other the
    leakage stage's (``leakage/``). ``audit``: ``metrics/leakage.json``.
    """

    arch: str
    predictions: Mapping[str, pd.DataFrame]
    splits: Mapping[str, pd.DataFrame]
    audit: Mapping


def read_leakage(ws: Workspace, predictions: Mapping[str, pd.DataFrame]) -> LeakageInputs:
    """The leakage stage's outputs, and the pipeline's predictions (``predictions``: arch → loaded predictions) and
    split of the architecture it audited, each under its protocol; the files are checked first (a missing one is a
    :class:`CxrError` naming ``dvc repro leakage``), and an audit of an architecture not in ``model.archs``."""
    files = ws.leakage
    ws.require(
        [files.split, files.model.predictions, ws.stage_metrics("leakage")], needed_by="report", made_by="leakage"
    )
    ws.require([ws.split], needed_by="report", made_by="split")
    audit = _json(ws.stage_metrics("leakage"))
    arch, protocols = audit["arch"], audit["protocols"]
    if arch not in predictions:
        raise CxrError(
            f"{ws.stage_metrics('leakage')}: the leakage audit trained {arch}, which is not one of model.archs "
            f"({', '.join(predictions)}); re-run it (dvc repro leakage)"
        )
    return LeakageInputs(
        arch,
        {protocols["pipeline"]: predictions[arch], protocols["audit"]: pd.read_csv(files.model.predictions)},
        {protocols["pipeline"]: pd.read_csv(ws.split), protocols["audit"]: pd.read_csv(files.split)},
        audit,
    )


def leakage_comparison(leakage: LeakageInputs | None, *, bootstrap: int, seed: int) -> dict | None:
    """The audited architecture's test AUROC and accuracy at 0.5 under each split protocol, their difference, and
    within the image-level test set the images of leaked patients against the others; ``None`` without an audit.

    Each protocol's values carry patient-clustered percentile bootstrap intervals (:func:`cls.bootstrap_metrics`).
    The difference is image-level minus patient-wise; its interval comes from :func:`cls.bootstrap_difference`: the
    two test sets hold different images, so each resample draws the patients of each set independently and the
    interval is the 2.5 and 97.5 percentiles of the resamples' differences. A leaked image is a test image of the
    image-level split whose patient has an image in train or val (:func:`leaked_test_images`); the AUROC of the
    leaked and of the other images is given (with its interval) only where the group holds both classes.
    """
    if leakage is None:
        return None
    tests = {p: leakage.predictions[p][leakage.predictions[p]["split"] == "test"] for p in PROTOCOLS}

    def scored(test: pd.DataFrame) -> dict:
        y, p, patients = test["label"].to_numpy(), test["probability"].to_numpy(), test["patient"].astype(str)
        both = len(np.unique(y)) == 2
        m = cls.bootstrap_metrics(y, p, 0.5, n=bootstrap, seed=seed, clusters=patients.to_numpy()) if both else None
        return {
            "images": len(test),
            "patients": int(patients.nunique()),
            "auroc": m["auroc"] if m else None,
            "accuracy": m["accuracy"] if m else None,
        }

    sets = [(t["label"].to_numpy(), t["probability"].to_numpy()) for t in tests.values()]
    clusters = [t["patient"].astype(str).to_numpy() for t in tests.values()]
    difference = cls.bootstrap_difference(
        *sets, 0.5, n=bootstrap, seed=seed, clusters_a=clusters[0], clusters_b=clusters[1]
    )
    split = leakage.splits["image"]
    leaked = set(split.loc[leaked_test_images(split), "image"])
    within = tests["image"]["image"].isin(leaked)
    audit = leakage.audit
    return {
        "arch": leakage.arch,
        "protocols": dict(audit["protocols"]),
        "leaked_patients": audit["leaked_patients"],
        "leaked_test_images": audit["leaked_test_images"],
        "leaked_test_image_share": audit["leaked_test_image_share"],
        **{p: scored(tests[p]) for p in PROTOCOLS},
        "difference": {"auroc": difference["auroc"], "accuracy": difference["accuracy"]},  # image - patient
        "image_level_test": {"leaked": scored(tests["image"][within]), "other": scored(tests["image"][~within])},
    }


def leakage_section(doc: Document, result: Mapping | None, facts: RunFacts) -> dict | None:
    """ "Leakage audit: patient-wise vs image-level split" (:func:`leakage_comparison`'s ``result``), when there is
    one; returns ``result`` (``metrics.json``'s ``leakage``)."""
    if result is None:
        return None
    patient, image, difference = result["patient"], result["image"], result["difference"]
    doc.heading("Leakage audit: patient-wise vs image-level split")
    pipeline = result["protocols"]["pipeline"]
    doc.paragraph(
        f"The same architecture ({result['arch']}), params and training seed, trained on two splits of the same "
        "cohort with the same fractions and split seed: patient-wise (no patient in two splits) and image-level (the "
        f"study's protocol). The pipeline's models use the {pipeline}-wise split; the other model is the `leakage` "
        f"stage's. The image-level split puts {result['leaked_test_images']} of its {image['images']} test images "
        f"({result['leaked_test_image_share']:.0%}) in test although their patients ({result['leaked_patients']}) "
        "have other images in train or val. Test-set values at threshold 0.5 with 95 % patient-clustered bootstrap "
        "intervals; the difference (image-level − patient-wise) has a 95 % bootstrap interval that resamples the "
        "two test sets (different images) independently, patients as clusters."
    )
    rows = [
        [name, v["images"], v["patients"], _auroc_cell(v), _fmt(v["accuracy"]) if v["accuracy"] else "n/a"]
        for name, v in (("patient-wise", patient), ("image-level", image))
    ]
    rows.append(["difference (image − patient)", "", "", _signed(difference["auroc"]), _signed(difference["accuracy"])])
    doc.table(["split", "test images", "test patients", "AUROC", "accuracy"], rows)
    leaked, other = result["image_level_test"]["leaked"], result["image_level_test"]["other"]
    doc.paragraph(
        f"Inside the image-level test set: AUROC on the {leaked['images']} images of leaked patients "
        f"{_auroc_cell(leaked)}, on the other {other['images']} images {_auroc_cell(other)}."
    )
    if facts.synthetic:
        saturated = all(v["auroc"] and v["auroc"]["value"] >= 0.999 for v in (patient, image))
        doc.paragraph(
            "Synthetic data: a patient's follow-ups share their anatomy, devices and markers, as on NIH, so an "
            "image-level split can leak here too; these numbers test the audit's machinery, they are not evidence "
            "about NIH or the study."
            + (
                " Both models separate their test sets perfectly (AUROC 1.000): at this setting the audit cannot show "
                "any inflation."
                if saturated
                else ""
            )
        )
    return result


def _auroc_cell(group: Mapping) -> str:
    if group["auroc"]:
        return _fmt(group["auroc"])
    return "n/a (one class only)" if group["images"] else "n/a (no images)"


def _signed(entry: Mapping) -> str:
    """``+0.012 (-0.030 to +0.054)``: a difference and its interval."""
    if entry["value"] is None or math.isnan(entry["value"]):
        return "n/a"
    return f"{entry['value']:+.3f} ({entry['low']:+.3f} to {entry['high']:+.3f})"


def _cell(entry: dict | None) -> str:
    """``mean (low-high) n=…``: every cell of an explanation table carries how many images it is a mean of."""
    if not entry or entry.get("mean") is None or (isinstance(entry["mean"], float) and math.isnan(entry["mean"])):
        return "n/a"
    clusters = f", {entry['clusters']} pat." if "clusters" in entry else ""
    return f"{entry['mean']:.3f} ({entry['low']:.3f}-{entry['high']:.3f}) n={entry.get('n', '?')}{clusters}"


def _arrow(column: Column) -> str:
    return column.label + (" ↑" if column.better == "higher" else " ↓" if column.better == "lower" else "")


def explanations(
    doc: Document, explained: Mapping[str, Mapping], paired: Mapping[str, pd.DataFrame], made: Mapping[str, Path]
) -> None:
    """The explanation section, built from the measure registry: a new measure appears here without an edit."""
    archs = list(explained)
    e = SimpleNamespace(**explained[archs[0]]["settings"])
    doc.heading("Explanations")
    doc.paragraph(
        f"Decision threshold {e.threshold} defines the outcomes and the class each *decision map* explains. "
        "**Localisation** scores the map of class Pneumonia on every test image with a Pneumonia box, whatever the "
        "prediction (group 'all'); its TP row is the predicted-class map on true positives (CheXlocalize's "
        "protocol). **Faithfulness** and **complexity** score the decision maps of the explain subset (balanced "
        "classes). Every method is scored on the same images; each cell gives the mean, its 95 % patient-clustered "
        f"bootstrap interval ({e.bootstrap} resamples: patients, not images, are resampled) and its n (images, "
        "patients). Rankings (deletion/insertion, ROAD, top-k regions) break ties between equal map values at "
        f"random, averaged over {e.tie_orders} seeded orders; the share of tied pixels is reported. Pointing game: "
        "ties count as the share of maximal points inside a box, a constant map is a miss"
        + (f", tolerance {e.pointing_tolerance:g} × the image side" if e.pointing_tolerance else "")
        + ". Pixel IoBB divides by the area of the map binarised at "
        f"{e.iobb_level:g} × its peak, so one hot pixel inside a box gives 1.0 for a sparse pixel attribution: read "
        "it beside the box-level protocol and the energy in boxes."
    )
    measures_doc = [
        [
            m.name,
            m.family,
            "Pneumonia maps, images with boxes" if m.on == "pneumonia" else "decision maps, subset",
            ", ".join(_arrow(c) for c in m.columns),
            m.reference,
        ]
        for m in MEASURES.values()
        if m.name in e.measures
    ]
    doc.table(["measure", "family", "scored on", "columns (↑ higher is better)", "reference"], measures_doc)
    for a in archs:
        info = explained[a]
        doc.heading(f"{a}", 3)
        doc.paragraph(
            f"{info['images']} test images explained, {info['images_with_boxes']} with Pneumonia boxes, "
            f"{info['subset_images']} in the subset. Pointing-game baselines on the images with boxes: chance (share "
            f"of the image inside boxes) {info['pointing_chance']:.3f}, centre prior (a map peaking at the image "
            f"centre) {info['pointing_centre_prior']:.3f}."
        )
        if skipped := info.get("not_applicable"):
            doc.paragraph(
                f"Configured but not run on {a}, because they do not apply to it: "
                + "; ".join(f"{method} ({reason})" for method, reason in skipped.items())
                + "."
            )
        for title, cols in explanation_tables():
            present = [c for c in cols if any(c.name in entry for entry in info["methods"].values())]
            if not present:
                continue
            doc.paragraph(f"**{title}**")
            doc.table(
                ["method", *(_arrow(c) for c in present)],
                [[method, *(_cell(entry.get(c.name)) for c in present)] for method, entry in info["methods"].items()],
            )
        doc.paragraph(
            "**Sanity checks** (Adebayo et al. 2018): mean |Spearman ρ| between the trained model's decision maps and "
            "those of a copy with randomised weights, on the first images of the subset. A method passes when its "
            f"maps have decorrelated (below {e.sanity_threshold:g}) once the head and the last block are randomised; "
            "a map that only changes when the stem is randomised behaves like an edge detector and fails. A map that "
            "becomes constant counts as fully changed (ρ = 0)."
        )
        doc.table(
            [
                "method",
                "mean abs ρ after head + last block",
                "lowest mean abs ρ",
                "model randomisation",
                "data randomisation",
            ],
            [_sanity_row(method, entry) for method, entry in info["methods"].items()],
        )
        if f"sanity_{a}" in made:
            doc.figure(made[f"sanity_{a}"], f"{a}: randomisation curves, top-down, bottom-up and independent")
        table = paired.get(a)
        if table is not None and len(table):
            doc.paragraph(
                "**Paired comparisons** on the same images: Grad-CAM against every other method on the headline "
                "measures (difference = Grad-CAM − other, with its paired patient-clustered bootstrap interval; "
                "continuous measures: the paired t-test, as in the papers that compare CAM variants by confidence "
                "increase, and the Wilcoxon signed-rank test; 0/1 outcomes: McNemar's exact test (the sign test "
                "where tied pointing hits are fractional); p (Holm-adjusted over the method pairs of one measure and "
                f"test). All {len(table)} comparisons, every pair of methods: `explain/{a}/paired.csv`."
            )
            doc.table(["measure", "Grad-CAM vs", "n", "difference (95 % CI)", "p (Holm)"], paired_rows(table))
        if f"gallery_gradcam_{a}" in made:
            doc.figure(
                made[f"gallery_gradcam_{a}"],
                f"{a}: Grad-CAM decision maps on TP, FP, FN and TN test images (each tile names the class explained)",
            )
        if f"methods_{a}" in made:
            doc.figure(made[f"methods_{a}"], f"{a}: every method's map of Pneumonia on the same images with boxes")


def _sanity_row(method: str, entry: Mapping) -> list[str]:
    s_, d_ = entry.get("sanity"), entry.get("data_randomisation")
    return [
        method,
        f"{s_['spearman_after_last_block']:.2f}" if s_ else "n/a",
        f"{s_['min_spearman']:.2f}" if s_ else "n/a",
        ("passes" if s_["passes"] else "FAILS") if s_ else "n/a",
        (
            f"{d_['mean_abs_spearman']:.2f} ({'passes' if d_['passes'] else 'FAILS'}; permuted-label train "
            f"accuracy {d_['permuted_train_accuracy']:.2f}, n={d_['images']})"
        )
        if d_
        else "not run",
    ]


def paired_rows(table: pd.DataFrame, reference: str = "gradcam") -> list[list[str]]:
    """One row per (measure, other method): the difference and every test's p with its Holm adjustment."""
    rows = []
    mine = table[(table["method_a"] == reference) & table["measure"].isin(PAIRED_SHOWN)]
    for (measure, other), part in mine.groupby(["measure", "method_b"], sort=False):
        first = part.iloc[0]
        tests = " · ".join(f"{TEST_NAMES.get(r.test, r.test)} {_p(r.p)} ({_p(r.p_holm)})" for r in part.itertuples())
        rows.append(
            [
                measure,
                other,
                str(int(first["n"])),
                f"{first['mean_difference']:+.3f} ({first['low']:+.3f} to {first['high']:+.3f})",
                tests,
            ]
        )
    order = {m: k for k, m in enumerate(PAIRED_SHOWN)}
    return sorted(rows, key=lambda r: (order[r[0]], r[1]))


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def explanation_tables() -> list[tuple[str, list[Column]]]:
    """The explanation tables: one per family, a measure with more than three columns in a table of its own."""
    out = []
    for family in FAMILIES:
        small = [c for m in MEASURES.values() if m.family == family and len(m.columns) <= 3 for c in m.columns]
        if small:
            out.append((f"{family.capitalize()}", small))
        for m in MEASURES.values():
            if m.family == family and len(m.columns) > 3:
                out.append((f"{family.capitalize()}: {m.reference}", list(m.columns)))
    out.append(("Ties", [Column("tied_share", "tied pixels (share)", None)]))
    return out


__all__ = [
    "STUDY",
    "ArchInputs",
    "RunFacts",
    "arch_figures",
    "build",
    "classification",
    "confidence_section",
    "consistency_matrix",
    "cross_architecture_section",
    "delong_comparison",
    "delong_comparisons",
    "flat_metrics",
    "linked_galleries",
    "pairwise_cells",
    "publish",
    "write",
]
