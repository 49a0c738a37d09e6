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

import numpy as np
import pandas as pd

from cxrexplain import tracking
from cxrexplain.config import ARCHS, EXPLAIN_DIR, METRICS_DIR, MODELS_DIR, Params
from cxrexplain.errors import CxrError
from cxrexplain.evaluation import classification as cls
from cxrexplain.evaluation import figures
from cxrexplain.evaluation.document import Document
from cxrexplain.evaluation.metrics import youden_threshold
from cxrexplain.io import write_csv, write_json, write_text

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
        results[arch] = {
            "test_images": len(test),
            "threshold_youden": youden,
            "at_0.5": cls.bootstrap_metrics(y, p, 0.5, n=bootstrap, seed=params.seed),
            "at_youden": cls.bootstrap_metrics(y, p, youden, n=bootstrap, seed=params.seed),
        }
        test_sets[arch] = (y, p)
        histories[arch] = pd.read_csv(Path(models_dir) / arch / "history.csv")
        explained[arch] = _read_json(Path(metrics_dir) / "explain" / f"{arch}.json")
        gradcam = explained[arch]["methods"].get("gradcam", {})
        results[arch]["gradcam_pointing"] = gradcam.get("pointing")
        results[arch]["pointing_chance"] = explained[arch]["pointing_chance"]
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

    consistency_path = Path(metrics_dir) / "explain" / "consistency.json"
    consistency = _read_json(consistency_path) if consistency_path.is_file() else None
    doc = _document(params, sample, split, results, explained, consistency, made, archs, synthetic)
    write_text(reports_dir / "report.md", doc.markdown(reports_dir))
    write_text(reports_dir / "report.html", doc.html())
    metrics = {
        "source": params.data.source,
        "synthetic": synthetic,
        "split_protocol": params.split.group_by,
        "cohort": sample.get("cached", {}),
        "archs": results,
    }
    write_json(reports_dir / "metrics.json", metrics)
    if log_to_mlflow:
        _log(params, archs, models_dir, reports_dir, made, metrics)
    log.info("report written to %s (report.md, report.html, metrics.json)", reports_dir)
    return metrics


def _document(params, sample, split, results, explained, consistency, made, archs, synthetic) -> Document:
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
        "point estimates with 95 % bootstrap intervals at threshold 0.5."
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
                    + f" Grad-CAM pointing game; chance {results[a]['pointing_chance']:.3f}"
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

    doc.heading("Explanations")
    doc.paragraph(
        "Per method, on the test images with boxes (localisation) and on the explain subset (faithfulness): means with "
        "95 % bootstrap intervals. Pointing game chance level = share of image area inside boxes. IoBB (ChestX-ray8's "
        f"measure) divides by the area of the map binarised at {params.explain.iobb_level:g} × its peak, so sparse "
        "pixel attributions (saliency, Integrated Gradients) score near 1 when their few peak pixels fall inside a "
        "box; the pointing game and the energy in boxes compare CAMs and pixel methods more fairly. Sanity: cascading "
        "model-parameter randomisation; a method passes when its maps' Spearman correlation with the trained model's "
        "falls below 0.5."
    )
    for a in archs:
        doc.heading(f"{a} (chance level {explained[a]['pointing_chance']:.3f})", 3)
        rows = []
        for method, entry in explained[a]["methods"].items():
            acc = entry.get("accuracy_at_iobb", {})
            rows.append(
                [
                    method,
                    *(
                        _fmt(entry[m]) if m in entry else "n/a"
                        for m in ("pointing", "energy", "iobb", "deletion", "insertion")
                    ),
                    " / ".join(
                        f"{acc[t]:.2f}" if acc.get(t) is not None and not math.isnan(acc[t]) else "n/a"
                        for t in ("0.1", "0.25", "0.5", "0.75", "0.9")
                    ),
                    ("passes" if entry["sanity"]["passes"] else "FAILS") + f" ({entry['sanity']['min_spearman']:.2f})"
                    if "sanity" in entry
                    else "n/a",
                ]
            )
        doc.table(
            [
                "method",
                "pointing",
                "energy in boxes",
                "IoBB",
                "deletion AUC ↓",
                "insertion AUC ↑",
                "acc. at T(IoBB) 0.1/0.25/0.5/0.75/0.9",
                "sanity (min ρ)",
            ],
            rows,
        )
        if f"gallery_gradcam_{a}" in made:
            doc.figure(made[f"gallery_gradcam_{a}"], f"{a}: Grad-CAM on TP, FP, FN and TN test images")
        if f"methods_{a}" in made:
            doc.figure(made[f"methods_{a}"], f"{a}: every method on the same images")
    if consistency:
        doc.heading("Consistency across architectures", 3)
        doc.table(
            ["method", "Spearman ρ", "top-20 % region IoU"],
            [[m, _fmt(v["spearman"]), _fmt(v["top_iou"])] for m, v in consistency["methods"].items()],
        )
    return doc


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
