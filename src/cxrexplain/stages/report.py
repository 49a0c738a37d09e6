"""Stage report: test-set metrics with intervals, the study beside this run, figures, explanation tables → reports/.

Reads the train and explain outputs of every architecture (predictions, histories, metrics JSONs, galleries) and the
sample/split metrics; writes ``reports/report.md`` (figures under ``reports/figures/``), a self-contained
``reports/report.html``, ``reports/metrics.json`` and DVC plot data under ``reports/plots/``. Everything is logged to
MLflow too: each architecture's figures into its run, the report into a summary run that names the runs it covers.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from cxrexplain import tracking
from cxrexplain.config import ARCHS, Params
from cxrexplain.errors import CxrError
from cxrexplain.evaluation import classification as cls
from cxrexplain.evaluation import figures
from cxrexplain.evaluation.classification import delong
from cxrexplain.evaluation.document import Document
from cxrexplain.evaluation.metrics import youden_threshold
from cxrexplain.explain.measures.registry import FAMILIES, MEASURES, Column
from cxrexplain.io import write_csv, write_json, write_text
from cxrexplain.workspace import Workspace

EXPLAIN_DIR = Workspace().consistency.parent  # the workspace's path
METRICS_DIR = Workspace().metrics  # the workspace's path
MODELS_DIR = Workspace().model("_").dir.parent  # the workspace's path

log = logging.getLogger(__name__)

REPORTS_DIR = Path("reports")
STUDY = {"accuracy": 0.932, "precision": 0.918, "recall": 0.945, "auroc": 0.96, "heatmaps_on_region": 0.92}
SYNTHETIC_BANNER = (
    "SYNTHETIC DATA: every number and figure below was computed on the project's generated NIH-format mirror, "
    "not on radiographs. It checks the pipeline; it is not medical evidence."
)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CxrError(f"{path}: not found; run the earlier stages first (dvc repro)") from None


def _fmt(entry: dict, key: str = "value") -> str:
    value = entry[key] if key in entry else entry["mean"]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f} ({entry['low']:.3f}-{entry['high']:.3f})"


def run(
    params: Params,
    *,
    models_dir: Path = MODELS_DIR,
    explain_dir: Path = EXPLAIN_DIR,
    metrics_dir: Path = METRICS_DIR,
    reports_dir: Path = REPORTS_DIR,
    archs: tuple[str, ...] = ARCHS,
    log_to_mlflow: bool = True,
    bootstrap: int | None = None,
) -> dict:
    """Build the report; returns ``reports/metrics.json``'s content."""
    reports_dir = Path(reports_dir)
    fig_dir = reports_dir / "figures"
    shutil.rmtree(fig_dir, ignore_errors=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = bootstrap or params.report.bootstrap
    synthetic = params.data.source == "synthetic"
    note = "synthetic data: not medical evidence" if synthetic else ""
    sample = _read_json(Path(metrics_dir) / "sample.json")
    split = _read_json(Path(metrics_dir) / "split.json")

    results: dict[str, dict] = {}
    test_sets, histories, explained = {}, {}, {}
    for arch in archs:
        predictions = pd.read_csv(Path(models_dir) / arch / "predictions.csv")
        val, test = predictions[predictions["split"] == "val"], predictions[predictions["split"] == "test"]
        youden = youden_threshold(val["label"].to_numpy(), val["probability"].to_numpy())
        y, p = test["label"].to_numpy(), test["probability"].to_numpy()
        patients = test["patient"].astype(str).to_numpy() if "patient" in test else None
        results[arch] = {
            "test_images": len(test),
            "test_patients": len(set(patients)) if patients is not None else None,
            "threshold_youden": youden,
            "at_0.5": cls.bootstrap_metrics(y, p, 0.5, n=bootstrap, seed=params.seed, clusters=patients),
            "at_youden": cls.bootstrap_metrics(y, p, youden, n=bootstrap, seed=params.seed, clusters=patients),
        }
        test_sets[arch] = (y, p)
        histories[arch] = pd.read_csv(Path(models_dir) / arch / "history.csv")
        explained[arch] = _read_json(Path(metrics_dir) / "explain" / f"{arch}.json")
        gradcam = explained[arch]["methods"].get("gradcam", {})
        results[arch]["gradcam_pointing"] = gradcam.get("pointing")
        results[arch]["pointing_chance"] = explained[arch]["pointing_chance"]
        results[arch]["pointing_centre_prior"] = explained[arch]["pointing_centre_prior"]
        results[arch]["gradcam_sanity_passes"] = gradcam.get("sanity", {}).get("passes")

    # figures
    made = {
        "confusion": figures.confusion_figure(
            {a: cls.confusion(*test_sets[a], 0.5) for a in archs},
            fig_dir / "confusion.png",
            threshold_note=" (threshold 0.5)",
            note=note,
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
        "training": figures.training_figure(histories, fig_dir / "training.png", note=note),
    }
    for arch in archs:
        for name in ("gallery_gradcam", "methods"):
            source = Path(explain_dir) / arch / f"{name}.png"
            if source.is_file():
                target = fig_dir / f"{name}_{arch}.png"
                shutil.copyfile(source, target)
                made[f"{name}_{arch}"] = target

    # DVC plot data: per-image actual/predicted (confusion template) and ROC points (simple template)
    plots = reports_dir / "plots"
    for arch in archs:
        y, p = test_sets[arch]
        write_csv(plots / f"confusion_{arch}.csv", pd.DataFrame({"actual": y, "predicted": (p > 0.5).astype(int)}))
        fpr, tpr = cls.roc_points(y, p)
        write_csv(plots / f"roc_{arch}.csv", pd.DataFrame({"fpr": fpr, "tpr": tpr}))

    paired = {}
    for arch in archs:
        folder = Path(explain_dir) / arch
        paired[arch] = _read_csv(folder / "paired.csv")
        curve = _read_csv(folder / "sanity_curve.csv")
        if len(curve):
            made[f"sanity_{arch}"] = figures.sanity_figure(
                curve,
                fig_dir / f"sanity_{arch}.png",
                threshold=explained[arch]["settings"]["sanity_threshold"],
                note=note,
            )
    comparison = _delong(archs, models_dir) if len(archs) == 2 else None
    if comparison is not None:
        metrics_delong = comparison
    consistency_path = Path(metrics_dir) / "explain" / "consistency.json"
    consistency = _read_json(consistency_path) if consistency_path.is_file() else None
    doc = _document(params, sample, split, results, explained, consistency, made, archs, synthetic, comparison)
    _explanations(doc, params, explained, paired, made, archs)
    _consistency(doc, consistency)
    write_text(reports_dir / "report.md", doc.markdown(reports_dir))
    write_text(reports_dir / "report.html", doc.html())
    metrics = {
        "source": params.data.source,
        "synthetic": synthetic,
        "split_protocol": params.split.group_by,
        "cohort": sample.get("cached", {}),
        "archs": results,
        "delong": metrics_delong if comparison is not None else None,
    }
    write_json(reports_dir / "metrics.json", metrics)
    if log_to_mlflow:
        _log(params, archs, models_dir, reports_dir, made, metrics)
    log.info("report written to %s (report.md, report.html, metrics.json)", reports_dir)
    return metrics


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise CxrError(f"{path}: not found; run the earlier stages first (dvc repro)") from None


def _delong(archs, models_dir: Path) -> dict:
    """DeLong's test of the two architectures' test AUROCs on the same test images (paired by image name)."""
    tables = []
    for arch in archs:
        p = pd.read_csv(Path(models_dir) / arch / "predictions.csv")
        tables.append(p[p["split"] == "test"].set_index("image"))
    a, b = tables
    common = a.index.intersection(b.index)
    if len(common) != len(a) or len(common) != len(b):
        raise CxrError(f"{archs[0]} and {archs[1]} were tested on different images; re-run both train stages")
    result = delong(
        a.loc[common, "label"].to_numpy(),
        a.loc[common, "probability"].to_numpy(),
        b.loc[common, "probability"].to_numpy(),
    )
    return {"archs": list(archs), "images": len(common), **{k: float(v) for k, v in result.items()}}


def _document(params, sample, split, results, explained, consistency, made, archs, synthetic, comparison) -> Document:
    commit, dirty = tracking.git_state()
    doc = Document("cxrexplain report: Pneumonia vs No Finding" + (" [SYNTHETIC DATA]" if synthetic else ""))
    if synthetic:
        doc.banner(SYNTHETIC_BANNER)
    cached = sample.get("cached", {})
    leak = "no patient in two splits" if params.split.group_by == "patient" else "patients leak between splits"
    doc.paragraph(
        f"Commit `{commit}`{' (dirty)' if dirty else ''} · data source **{params.data.source}** · split protocol "
        f"**{params.split.group_by}-wise** ({leak}) "
        f"· cohort {cached.get('images', '?')} images ({cached.get('pneumonia', '?')} Pneumonia, "
        f"{cached.get('no_finding', '?')} No Finding) of {cached.get('patients', '?')} patients · "
        f"pretrained {params.model.pretrained} · input {params.train.image_size} px."
    )
    splits = split.get("splits", {})
    if splits:
        doc.table(
            ["split", "images", "Pneumonia", "No Finding", "patients"],
            [
                [name, v.get("images"), v.get("pneumonia"), v.get("no_finding"), v.get("patients")]
                for name, v in splits.items()
            ],
        )

    doc.heading("The study and this run")
    doc.paragraph(
        "The study reports an image-level random split of NIH ChestX-ray14 with 5,000 images per class; NIH has only "
        "1,431 Pneumonia images (1,008 patients), and an image-level split leaks patients. Values below are test-set "
        "point estimates with 95 % patient-clustered bootstrap intervals (patients resampled) at threshold 0.5."
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
    rows.append(
        [
            "data source / split",
            "NIH / image-level",
            *(f"{params.data.source} / {params.split.group_by}" for a in archs),
        ]
    )
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

    if comparison is not None:
        doc.paragraph(
            f"DeLong's test of the two test AUROCs on the same {comparison['images']} images: {archs[0]} "
            f"{comparison['auc_a']:.3f}, {archs[1]} {comparison['auc_b']:.3f}, difference "
            f"{comparison['difference']:+.3f} (95 % CI {comparison['low']:+.3f} to {comparison['high']:+.3f}), "
            f"z = {comparison['z']:.2f}, p = {_p(comparison['p'])}."
        )
    return doc


def _consistency(doc: Document, consistency: dict | None) -> None:
    if consistency:
        doc.heading("Consistency across architectures", 3)
        doc.paragraph(
            f"Both architectures' maps of class Pneumonia on the same {consistency['images']} test images (every map "
            "explains Pneumonia, whatever either model predicted): Spearman rank correlation over the pixels (a "
            "constant map counts as ρ = 0) and IoU of the two top-20 % regions, ties broken at random and averaged "
            f"over {consistency['tie_orders']} orders; patient-clustered 95 % intervals."
        )
        doc.table(
            ["method", "Spearman ρ", "top-20 % region IoU"],
            [[m, _cell(v["spearman"]), _cell(v["top_iou"])] for m, v in consistency["methods"].items()],
        )


def _cell(entry: dict | None) -> str:
    """``mean (low-high) n=…``: every cell of an explanation table carries how many images it is a mean of."""
    if not entry or entry.get("mean") is None or (isinstance(entry["mean"], float) and math.isnan(entry["mean"])):
        return "n/a"
    clusters = f", {entry['clusters']} pat." if "clusters" in entry else ""
    return f"{entry['mean']:.3f} ({entry['low']:.3f}-{entry['high']:.3f}) n={entry.get('n', '?')}{clusters}"


def _explanations(doc: Document, params: Params, explained: dict, paired: dict, made: dict, archs) -> None:
    """The explanation section, built from the measure registry: a new measure appears here without an edit."""
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
            ", ".join(
                c.label + (" ↑" if c.better == "higher" else " ↓" if c.better == "lower" else "") for c in m.columns
            ),
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
        for title, cols in _tables():
            present = [c for c in cols if any(c.name in entry for entry in info["methods"].values())]
            if not present:
                continue
            doc.paragraph(f"**{title}**")
            doc.table(
                [
                    "method",
                    *(
                        c.label + (" ↑" if c.better == "higher" else " ↓" if c.better == "lower" else "")
                        for c in present
                    ),
                ],
                [[method, *(_cell(entry.get(c.name)) for c in present)] for method, entry in info["methods"].items()],
            )
        doc.paragraph(
            "**Sanity checks** (Adebayo et al. 2018): mean |Spearman ρ| between the trained model's decision maps and "
            "those of a copy with randomised weights, on the first images of the subset. A method passes when its "
            f"maps have decorrelated (below {e.sanity_threshold:g}) once the head and the last block are randomised; "
            "a map that only changes when the stem is randomised behaves like an edge detector and fails. A map that "
            "becomes constant counts as fully changed (ρ = 0)."
        )
        rows = []
        for method, entry in info["methods"].items():
            s_ = entry.get("sanity")
            d_ = entry.get("data_randomisation")
            rows.append(
                [
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
            )
        doc.table(
            [
                "method",
                "mean abs ρ after head + last block",
                "lowest mean abs ρ",
                "model randomisation",
                "data randomisation",
            ],
            rows,
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
            doc.table(["measure", "Grad-CAM vs", "n", "difference (95 % CI)", "p (Holm)"], _paired_rows(table))
        if f"gallery_gradcam_{a}" in made:
            doc.figure(
                made[f"gallery_gradcam_{a}"],
                f"{a}: Grad-CAM decision maps on TP, FP, FN and TN test images (each tile names the class explained)",
            )
        if f"methods_{a}" in made:
            doc.figure(made[f"methods_{a}"], f"{a}: every method's map of Pneumonia on the same images with boxes")


PAIRED_SHOWN = ("pointing", "energy", "deletion", "insertion", "average_drop", "increase", "road_morf")
TEST_NAMES = {"t": "t", "wilcoxon": "Wilcoxon", "mcnemar": "McNemar", "sign": "sign"}


def _paired_rows(table: pd.DataFrame, reference: str = "gradcam") -> list[list[str]]:
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


def _tables() -> list[tuple[str, list]]:
    """The explanation tables: one per family, a measure with more than three columns in a table of its own."""
    out = []
    for family in FAMILIES:
        small = [c for m in MEASURES.values() if m.family == family and len(m.columns) <= 3 for c in m.columns]
        if small:
            out.append((f"{family.capitalize()}", small))
        for m in MEASURES.values():
            if m.family == family and len(m.columns) > 3:
                out.append((f"{family.capitalize()}: {m.reference}", list(m.columns)))
    tied = Column("tied_share", "tied pixels (share)", None)
    out.append(("Ties", [tied]))
    return out


def _log(params: Params, archs, models_dir: Path, reports_dir: Path, made: dict, metrics: dict) -> None:
    refs = {a: tracking.read_run_ref(Path(models_dir) / a / tracking.RUN_REF) for a in archs}
    uri = next(iter(refs.values()))["tracking_uri"]
    tracking.check_reachable(uri)
    for a, ref in refs.items():
        mine = [p for k, p in made.items() if k.endswith(a)] + [
            made[k] for k in ("confusion", "roc", "pr", "calibration")
        ]
        tracking.log_artifacts(ref["run_id"], mine, "report", uri=uri)
        flat = {
            f"report/{key}/{m}": v["value"]
            for key in ("at_0.5", "at_youden")
            for m, v in metrics["archs"][a][key].items()
            if not math.isnan(v["value"])
        }
        tracking.log_metrics(ref["run_id"], flat, uri=uri)
    run_id = tracking.summary_run(params, {a: ref["run_id"] for a, ref in refs.items()}, uri=uri)
    tracking.log_artifacts(
        run_id,
        [reports_dir / "report.md", reports_dir / "report.html", reports_dir / "metrics.json", reports_dir / "figures"],
        "report",
        uri=uri,
    )


__all__ = ["REPORTS_DIR", "STUDY", "run"]
