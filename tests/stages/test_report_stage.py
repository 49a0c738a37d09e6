"""Stage report on small written inputs (no training): checks before work, atomic outputs, MLflow checked first.

:func:`write_inputs` writes what ``train@arch``, ``explain@arch``, ``sample``, ``split`` and ``consistency`` leave, in
their formats, with made-up values: the report's content on real outputs is tested in tests/stages/test_explain_stage.py
and tests/test_pipeline.py.
"""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from cxrexplain import tracking
from cxrexplain.config import validate
from cxrexplain.data.split import leakage_audit
from cxrexplain.errors import CxrError
from cxrexplain.evaluation import figures
from cxrexplain.stages import report
from cxrexplain.workspace import Workspace

PARAMS = validate({"report": {"bootstrap": 50}})
ARCHS = PARAMS.model.archs  # the report covers model.archs


def _interval(mean: float, n: int = 12) -> dict:
    return {"mean": mean, "low": mean - 0.1, "high": mean + 0.1, "n": n, "clusters": n - 2}


def write_inputs(ws: Workspace, archs: tuple[str, ...] = ARCHS) -> None:
    """Every file the report reads, as the earlier stages write them (40 images of 20 patients, 24 in test)."""
    rng = np.random.default_rng(0)
    n = 40
    labels = np.tile([0, 1], n // 2)
    frame = pd.DataFrame(
        {
            "image": [f"{k:08d}_000.png" for k in range(n)],
            "patient": [f"{k // 2}" for k in range(n)],
            "label": labels,
            "split": ["val"] * 16 + ["test"] * 24,
        }
    )
    ws.metrics.mkdir(parents=True)
    ws.stage_metrics("sample").write_text(json.dumps({"cached": {"images": n, "pneumonia": 20, "patients": 20}}))
    ws.stage_metrics("split").write_text(json.dumps({"splits": {"val": {"images": 16}, "test": {"images": 24}}}))
    for arch in archs:
        model, explain = ws.model(arch), ws.explain(arch)
        model.dir.mkdir(parents=True)
        probability = np.clip(0.35 * labels + 0.65 * rng.random(n), 0, 1)
        frame.assign(probability=probability).to_csv(model.predictions, index=False)
        history = {"epoch": [0, 1], "train/loss": [0.7, 0.6], "val/loss": [0.7, 0.65], "val/auroc": [0.6, 0.7]}
        pd.DataFrame(history).to_csv(model.history, index=False)
        explain.dir.mkdir(parents=True)
        for table in (explain.per_image, explain.summary, explain.sanity):
            table.write_text("method\ngradcam\n")
        np.savez_compressed(explain.maps, images=frame["image"].to_numpy().astype(str))
        pd.DataFrame(
            {
                "method_a": "gradcam",
                "method_b": "saliency",
                "measure": ["pointing", "deletion"],
                "n": 12,
                "mean_difference": [0.1, -0.05],
                "low": [0.0, -0.1],
                "high": [0.2, 0.0],
                "p": [0.04, 0.0004],
                "p_holm": [0.08, 0.0008],
                "test": ["mcnemar", "t"],
            }
        ).to_csv(explain.paired, index=False)
        curve = [
            ("top_down", s, b, m, r)
            for s, b in enumerate(("none", "head", "layer4"))
            for m, r in [("gradcam", 1 - s / 3)]
        ]
        pd.DataFrame(curve, columns=["mode", "step", "block", "method", "spearman_abs"]).to_csv(
            explain.sanity_curve, index=False
        )
        for png in (explain.gallery("gradcam"), explain.methods_figure):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(png)
        sanity = {"spearman_after_last_block": 0.2, "min_spearman": 0.1, "passes": True}
        explained = {
            "images": 24,
            "images_with_boxes": 6,
            "subset_images": 6,
            "pointing_chance": 0.1,
            "pointing_centre_prior": 0.3,
            "methods": {
                "gradcam": {"pointing": _interval(0.5, 6), "deletion": _interval(0.3), "sanity": sanity},
                "saliency": {"pointing": _interval(0.4, 6), "deletion": _interval(0.35)},
            },
            "settings": {
                "threshold": 0.5,
                "measures": ["pointing", "deletion_insertion"],
                "iobb_level": 0.5,
                "pointing_tolerance": 0.0,
                "tie_orders": 2,
                "bootstrap": 50,
                "sanity_threshold": 0.5,
            },
        }
        ws.stage_metrics("explain", arch).parent.mkdir(exist_ok=True)
        ws.stage_metrics("explain", arch).write_text(json.dumps(explained))
    consistency = {"gradcam": {"spearman": _interval(0.2), "top_iou": _interval(0.15)}}
    ws.consistency_metrics.write_text(json.dumps({"images": 12, "tie_orders": 2, "methods": consistency}))
    write_leakage(ws, frame, archs[0])


def write_leakage(ws: Workspace, frame: pd.DataFrame, arch: str) -> None:
    """The pipeline's patient-wise split of ``frame`` and what the leakage stage leaves: an image-level split in which
    every test image's patient has another image in train or val, its model's predictions, metrics/leakage.json."""
    ws.split.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(ws.split, index=False)
    image_level = frame.assign(split=["test", "train", "val", "test"] * (len(frame) // 4))
    ws.leakage.model.dir.mkdir(parents=True)
    image_level.to_csv(ws.leakage.split, index=False)
    shown = image_level[image_level["split"] != "train"]
    probability = np.clip(0.6 * shown["label"] + 0.4 * np.random.default_rng(1).random(len(shown)), 0, 1)
    shown.assign(probability=probability).to_csv(ws.leakage.model.predictions, index=False)
    audit = leakage_audit({"patient": frame, "image": image_level})
    metrics = {"arch": arch, "protocols": {"pipeline": "patient", "audit": "image"}, **audit}
    ws.stage_metrics("leakage").write_text(json.dumps(metrics))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def ws(tmp_path) -> Workspace:
    """The inputs, no report yet."""
    workspace = Workspace(tmp_path / "repo")
    write_inputs(workspace)
    return workspace


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Workspace, dict]:
    """The inputs and their report (built once: read it, do not change it); the metrics ``run`` returned."""
    workspace = Workspace(tmp_path_factory.mktemp("made") / "repo")
    write_inputs(workspace)
    return workspace, report.run(PARAMS, ws=workspace, log_to_mlflow=False)


@pytest.fixture
def reported(made, tmp_path) -> Workspace:
    """A copy of the inputs and their report, to change."""
    shutil.copytree(made[0].root, tmp_path / "repo")
    return Workspace(tmp_path / "repo")


def test_report_writes_every_output_and_links_only_figures_that_are_there(made):
    ws, metrics = made
    out = ws.report
    written = json.loads(out.metrics.read_text())
    assert written["archs"]["resnet50"]["at_0.5"]["auroc"] == metrics["archs"]["resnet50"]["at_0.5"]["auroc"]
    assert set(metrics["archs"]) == set(ARCHS) and metrics["delong"]["images"] == 24
    assert {p.name for p in out.figures.iterdir()} == {
        *("confusion.png", "roc.png", "pr.png", "calibration.png", "training.png"),
        *(f"{name}_{a}.png" for a in ARCHS for name in ("gallery_gradcam", "methods", "sanity")),
    }
    assert {p.name for p in out.plots.iterdir()} == {f"{kind}_{a}.csv" for a in ARCHS for kind in ("confusion", "roc")}
    # the galleries are the explain stage's files, copied
    assert (out.figures / "methods_resnet50.png").read_bytes() == ws.explain("resnet50").methods_figure.read_bytes()
    markdown = out.markdown.read_text()
    links = [line.split("](")[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")]
    assert len(links) == 11 and all((out.dir / link).is_file() for link in links)
    assert "| pointing | saliency | 12 | +0.100 (+0.000 to +0.200) | McNemar 0.040 (0.080) |" in markdown
    assert "### Consistency across architectures" in markdown
    # the leakage audit: every test image of the image-level split leaked (20 patients), so no "other" images
    audit = metrics["leakage"]
    assert (audit["arch"], audit["leaked_patients"], audit["leaked_test_images"]) == ("resnet50", 20, 20)
    assert audit["patient"]["images"] == 24 and audit["image"]["images"] == 20
    assert audit["image_level_test"]["other"] == {"images": 0, "patients": 0, "auroc": None, "accuracy": None}
    assert written["leakage"] == json.loads(json.dumps(audit))
    assert "## Leakage audit: patient-wise vs image-level split" in markdown
    assert "on the other 0 images n/a (no images)" in markdown
    # the task each number belongs to: sample.json without "negatives" (older runs) is the study's task
    assert markdown.startswith("# cxrexplain report: Pneumonia vs No Finding") and metrics["negatives"] == "no_finding"
    assert "This run's task is the study's" in markdown
    # nothing of the build is left beside reports/
    assert sorted(p.name for p in ws.root.iterdir()) == ["data", "explain", "leakage", "metrics", "models", "reports"]


def test_an_explain_folder_without_its_gallery_stops_the_report_before_it_changes_anything(reported):
    ws = reported
    before = snapshot(ws.report.dir)
    gallery = ws.explain("densenet121").gallery("gradcam")
    gallery.unlink()  # what a killed explain stage left before its outputs were atomic
    with pytest.raises(
        CxrError, match=rf"report: missing input {re.escape(str(gallery))} .*`dvc repro explain@densenet121`"
    ):
        report.run(PARAMS, ws=ws, log_to_mlflow=False)
    assert snapshot(ws.report.dir) == before


def test_each_file_the_report_reads_is_required_before_work(ws, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda *args, **kwargs: drawn.append(args))
    for path, stage in (
        (ws.stage_metrics("split"), "sample split"),
        (ws.model("resnet50").history, "train@resnet50"),
        (ws.explain("resnet50").sanity_curve, "explain@resnet50"),
        (ws.stage_metrics("explain", "densenet121"), "explain@densenet121"),
        (ws.consistency_metrics, "consistency"),
        (ws.leakage.model.predictions, "leakage"),
        (ws.stage_metrics("leakage"), "leakage"),
        (ws.split, "split"),
    ):
        content = path.read_bytes()
        path.unlink()
        with pytest.raises(CxrError, match=rf"missing input {re.escape(str(path))} .*`dvc repro {stage}`"):
            report.run(PARAMS, ws=ws, log_to_mlflow=False)
        path.write_bytes(content)
    assert drawn == [] and not ws.report.dir.exists()


def test_a_failure_half_way_leaves_the_old_report_byte_for_byte(reported, monkeypatch):
    ws = reported
    before = snapshot(ws.report.dir)
    assert len(before) == 11 + 4 + 3

    def broken(*args, **kwargs):
        raise RuntimeError("killed while drawing")

    monkeypatch.setattr(figures, "sanity_figure", broken)  # drawn after the curves, the galleries and the plots
    changed = validate({"report": {"bootstrap": 60}})  # a new report would differ in its intervals
    with pytest.raises(RuntimeError, match="killed while drawing"):
        report.run(changed, ws=ws, log_to_mlflow=False)
    assert snapshot(ws.report.dir) == before
    assert sorted(p.name for p in ws.root.iterdir()) == ["data", "explain", "leakage", "metrics", "models", "reports"]


def test_the_figures_are_in_place_before_the_markdown_that_links_them(reported, monkeypatch):
    ws, moved = reported, []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moved.append(Path(b)), replace(a, b)))
    report.run(PARAMS, ws=ws, log_to_mlflow=False)  # over the old report
    into_reports = [p.name for p in moved if p.parent == ws.report.dir and not p.name.startswith(".")]
    assert into_reports == ["figures", "plots", "metrics.json", "report.html", "report.md"]


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _runs(ws: Workspace, uri: str) -> dict[str, str]:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("cxrexplain")
    runs = {}
    for arch in ARCHS:
        runs[arch] = client.create_run(experiment).info.run_id
        tracking.write_run_ref(ws.model(arch).run_ref, runs[arch], uri, experiment)
    return runs


def test_a_run_reference_to_a_run_not_in_the_store_fails_before_any_figure(ws, store, monkeypatch):
    _runs(ws, store)
    missing = "0" * 32
    tracking.write_run_ref(ws.model("densenet121").run_ref, missing, store, "1")  # made on another machine
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda *args, **kwargs: drawn.append(args))
    with pytest.raises(CxrError, match=rf"mlflow_run.json: MLflow run {missing} is not in the tracking store"):
        report.run(PARAMS, ws=ws)
    assert drawn == [] and not ws.report.dir.exists()


def test_a_one_vs_rest_cohort_is_named_as_such_and_set_apart_from_the_study(reported):
    """sample.negatives: all_others (CheXNet's setting): title, cohort line, split table and the study's comparison
    say so, and metrics.json records it."""
    sample = json.loads(reported.stage_metrics("sample").read_text())
    reported.stage_metrics("sample").write_text(json.dumps({**sample, "negatives": "all_others"}))
    metrics = report.run(PARAMS, ws=reported, log_to_mlflow=False)
    markdown = reported.report.markdown.read_text()
    assert markdown.startswith("# cxrexplain report: Pneumonia vs all others (one-vs-rest)")
    assert "This run's task is NOT the study's" in markdown and "CheXNet 0.768" in markdown
    assert "| negatives | No Finding | without Pneumonia | without Pneumonia |" in markdown
    assert metrics["negatives"] == "all_others"
    assert json.loads(reported.report.metrics.read_text())["negatives"] == "all_others"


def test_the_report_is_logged_into_each_run_and_a_summary_run(ws, store):
    runs = _runs(ws, store)
    report.run(PARAMS, ws=ws)
    client = MlflowClient(tracking_uri=store)
    names = {a.path for a in client.list_artifacts(runs["resnet50"], "report")}
    assert names == {f"report/{f}.png" for f in ("gallery_gradcam_resnet50", "methods_resnet50", "sanity_resnet50")} | {
        f"report/{f}.png" for f in ("confusion", "roc", "pr", "calibration")
    }
    assert "report/at_youden/auroc" in client.get_run(runs["densenet121"]).data.metrics
    (summary,) = client.search_runs(["1"], filter_string="tags.`dvc.stage` = 'report'")
    assert {summary.data.tags[f"report.run.{a}"] for a in ARCHS} == set(runs.values())
    logged = {a.path for a in client.list_artifacts(summary.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/metrics.json", "report/roc.png"} <= logged  # figures/*
