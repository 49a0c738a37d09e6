"""Stage report on small written inputs (no training): checks before work, atomic outputs, MLflow checked first.

:func:`write_inputs` writes what ``train@arch``, ``explain@arch``, ``sample``, ``split`` and ``consistency`` leave, in
their formats, with made-up values: the report's content on real outputs is tested in tests/stages/test_explain_stage.py
and tests/test_pipeline.py.
"""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from cxrexplain import tracking
from cxrexplain.config import validate
from cxrexplain.data.split import leakage_audit
from cxrexplain.errors import CxrError
from cxrexplain.evaluation import figures
from cxrexplain.evaluation import ratings as rt
from cxrexplain.io import write_json
from cxrexplain.stages import report
from cxrexplain.workspace import Workspace
from inprocess import cli

PARAMS = validate({"report": {"bootstrap": 50}})
ARCHS = PARAMS.model.archs  # the report covers model.archs


def _interval(mean: float, n: int = 12) -> dict:
    return {"mean": mean, "low": mean - 0.1, "high": mean + 0.1, "n": n, "clusters": n - 2}


def write_inputs(ws: Workspace, archs: tuple[str, ...] = ARCHS, seeds: tuple[int, ...] = PARAMS.seeds) -> None:
    """Every file the report reads, as the earlier stages write them (40 images of 20 patients, 24 in test), for every
    architecture and training seed (each seed its own random probabilities; Grad-CAM's pointing 0.50, 0.51, 0.52)."""
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
        for seed in seeds:
            model, explain = ws.model(arch, seed), ws.explain(arch, seed)
            model.dir.mkdir(parents=True)
            train_metrics = ws.stage_metrics("train", arch, seed)
            train_metrics.parent.mkdir(parents=True, exist_ok=True)
            environment = {"machine": "CPU X (2 threads)", "torch": "2.14.1", "precision": "32-true"}
            train_metrics.write_text(json.dumps({"arch": arch, "seed": seed, "environment": environment}))
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
                    "measure": ["pointing", "deletion", "average_drop", "increase"],
                    "n": 12,
                    "mean_difference": [0.1, -0.05, -0.1, 0.2],
                    "low": [0.0, -0.1, -0.2, 0.0],
                    "high": [0.2, 0.0, 0.0, 0.4],
                    "p": [0.04, 0.0004, 0.01, 0.15],
                    "p_holm": [0.08, 0.0008, 0.02, 0.3],
                    "test": ["mcnemar", "t", "t", "mcnemar"],
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
                    "gradcam": {
                        "pointing": _interval(0.5 + (seed - 42) / 100, 6),
                        "deletion": _interval(0.3),
                        "increase": _interval(0.4),
                        "average_drop": _interval(0.2),
                        "sanity": sanity,
                    },
                    "saliency": {
                        "pointing": _interval(0.4, 6),
                        "deletion": _interval(0.35),
                        "increase": _interval(0.6),
                        "average_drop": _interval(0.3),
                    },
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
            ws.stage_metrics("explain", arch, seed).parent.mkdir(parents=True, exist_ok=True)
            ws.stage_metrics("explain", arch, seed).write_text(json.dumps(explained))
    consistency = {"gradcam": {"spearman": _interval(0.2), "top_iou": _interval(0.15)}}
    pairs = [{"archs": [a, b], "methods": consistency} for k, a in enumerate(archs) for b in archs[k + 1 :]]
    ws.consistency_metrics.write_text(json.dumps({"images": 12, "tie_orders": 2, "archs": list(archs), "pairs": pairs}))
    write_leakage(ws, frame, archs[0])
    # the ratings stage's reader study: one reader's two ratings of the primary seed's Grad-CAM maps
    rated = pd.DataFrame(
        [
            {c: "" for c in rt.COLUMNS}
            | {"reader": "ann", "arch": archs[0], "seed": seeds[0], "image": image, "method": "gradcam"}
            | {"rating": rating, "blinded": "False"}
            for image, rating in zip(frame["image"][-2:], ("off", "on"), strict=True)
        ]
    )
    write_json(ws.ratings_metrics, rt.summarise(rated, frame, {}, n=50, seed=0))


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
    assert set(metrics["archs"]) == set(ARCHS)
    (delong,) = metrics["delong"]  # one pair
    assert delong["images"] == 24 and delong["archs"] == list(ARCHS) and delong["p_holm"] == delong["p"]
    assert {p.name for p in out.figures.iterdir()} == {
        *("confusion.png", "roc.png", "pr.png", "calibration.png", "training.png"),
        *(f"{name}_{a}.png" for a in ARCHS for name in ("gallery_gradcam", "methods", "sanity")),
    }
    assert {str(p.relative_to(out.plots)) for p in out.plots.rglob("*.csv")} == {
        f"{kind}/{a}.csv" for a in ARCHS for kind in ("confusion", "roc")
    }
    # the galleries are the explain stage's files, copied
    assert (out.figures / "methods_resnet50.png").read_bytes() == ws.explain("resnet50", 42).methods_figure.read_bytes()
    markdown = out.markdown.read_text()
    links = [line.split("](")[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")]
    assert len(links) == 11 and all((out.dir / link).is_file() for link in links)
    assert "| pointing | saliency | 12 | +0.100 (+0.000 to +0.200) | McNemar 0.040 (0.080) |" in markdown
    assert "### Consistency across architectures" in markdown
    assert f"| {ARCHS[0]}/seed42 | gradcam | 2 (1) | 1.00 (1.00-1.00, n=1) | 1.00 (1.00-1.00, n=1) |" in markdown
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
    gallery = ws.explain("densenet121", 42).gallery("gradcam")
    gallery.unlink()  # what a killed explain stage left before its outputs were atomic
    with pytest.raises(
        CxrError, match=rf"report: missing input {re.escape(str(gallery))} .*`dvc repro explain@densenet121-42`"
    ):
        report.run(PARAMS, ws=ws, log_to_mlflow=False)
    assert snapshot(ws.report.dir) == before


def test_each_file_the_report_reads_is_required_before_work(ws, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda *args, **kwargs: drawn.append(args))
    for path, stage in (
        (ws.stage_metrics("split"), "sample split"),
        (ws.model("resnet50", 42).history, "train@resnet50-42"),
        (ws.explain("resnet50", 42).sanity_curve, "explain@resnet50-42"),
        (ws.stage_metrics("explain", "densenet121", 42), "explain@densenet121-42"),
        (ws.model("densenet121", 44).predictions, "train@densenet121-44"),  # every seed's
        (ws.stage_metrics("explain", "resnet50", 43), "explain@resnet50-43"),
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


def _runs(ws: Workspace, uri: str) -> dict[str, dict[int, str]]:
    """A training run per architecture and seed, referenced where the train stage writes the reference."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("cxrexplain")
    runs: dict[str, dict[int, str]] = {}
    for arch in ARCHS:
        for seed in PARAMS.seeds:
            runs.setdefault(arch, {})[seed] = client.create_run(experiment).info.run_id
            tracking.write_run_ref(ws.model(arch, seed).run_ref, runs[arch][seed], uri, experiment)
    return runs


def test_a_run_reference_to_a_run_not_in_the_store_fails_before_any_figure(ws, store, monkeypatch):
    _runs(ws, store)
    missing = "0" * 32
    tracking.write_run_ref(ws.model("densenet121", 42).run_ref, missing, store, "1")  # made on another machine
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
    names = {a.path for a in client.list_artifacts(runs["resnet50"][42], "report")}
    assert names == {f"report/{f}.png" for f in ("gallery_gradcam_resnet50", "methods_resnet50", "sanity_resnet50")} | {
        f"report/{f}.png" for f in ("confusion", "roc", "pr", "calibration")
    }
    assert "report/at_youden/auroc" in client.get_run(runs["densenet121"][42]).data.metrics
    # every other seed's run gets its own test metrics at 0.5 (the seed spread's values), no figures
    written = json.loads(ws.report.metrics.read_text())["seeds"]["densenet121"]
    other = client.get_run(runs["densenet121"][43]).data.metrics
    assert other["report/at_0.5/auroc"] == pytest.approx(written["metrics"]["auroc"]["values"][1], abs=1e-12)
    assert not client.list_artifacts(runs["densenet121"][43], "report")
    (summary,) = client.search_runs(["1"], filter_string="tags.`dvc.stage` = 'report'")
    assert {summary.data.tags[f"report.run.{a}"] for a in ARCHS} == {runs[a][42] for a in ARCHS}
    assert {summary.data.tags[f"report.run.{a}.seed{s}"] for a in ARCHS for s in PARAMS.seeds} == {
        r for by_seed in runs.values() for r in by_seed.values()
    }
    assert summary.data.tags["seeds"] == "42,43,44"
    logged = {a.path for a in client.list_artifacts(summary.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/metrics.json", "report/roc.png"} <= logged  # figures/*
    # the primary seed's tables it was made from, kept: compare --against bootstraps from them
    for arch in ARCHS:
        kept = {a.path for a in client.list_artifacts(summary.info.run_id, f"{tracking.REPORT_TABLES}/{arch}")}
        assert kept == {f"report/tables/{arch}/predictions.csv", f"report/tables/{arch}/per_image.csv"}
        copy = tracking.read_artifact(summary.info.run_id, f"report/tables/{arch}/per_image.csv", store)
        assert copy == ws.explain(arch, 42).per_image.read_bytes()


def test_the_seed_spread_gives_every_seed_its_mean_sd_and_t_interval(made):
    """Per architecture: each seed's test metrics at 0.5 from its own predictions, Grad-CAM's measures from its explain
    metrics, and mean, sd (ddof 1) and the t-interval across the seeds (numpy and scipy as the references)."""
    from scipy import stats

    from cxrexplain.evaluation.classification import point_metrics

    ws, metrics = made
    spread = metrics["seeds"]["resnet50"]
    assert spread["seeds"] == [42, 43, 44] and metrics["primary_seed"] == 42
    aurocs = []
    for seed in PARAMS.seeds:
        test = pd.read_csv(ws.model("resnet50", seed).predictions).query("split == 'test'")
        aurocs.append(point_metrics(test["label"], test["probability"], 0.5)["auroc"])
    auroc = spread["metrics"]["auroc"]
    assert auroc["values"] == pytest.approx(aurocs, abs=1e-12)
    assert auroc["mean"] == pytest.approx(np.mean(aurocs)) and auroc["sd"] == pytest.approx(np.std(aurocs, ddof=1))
    low, high = stats.t.interval(0.95, 2, loc=np.mean(aurocs), scale=stats.sem(aurocs))
    assert (auroc["low"], auroc["high"]) == pytest.approx((low, high))
    # the primary seed's value is the one every other section reports
    assert auroc["values"][0] == pytest.approx(metrics["archs"]["resnet50"]["at_0.5"]["auroc"]["value"], abs=1e-12)
    pointing = spread["metrics"]["gradcam/pointing"]
    assert pointing["values"] == pytest.approx([0.50, 0.51, 0.52]) and pointing["sd"] == pytest.approx(0.01)
    markdown = ws.report.markdown.read_text()
    assert "## Seed spread: what retraining changes" in markdown
    assert (
        "| metric | seed 42 | seed 43 | seed 44 | mean ± sd | 95 % t-interval (seeds) | 95 % bootstrap (primary) |"
        in (markdown)
    )
    assert "| gradcam/pointing | 0.500 | 0.510 | 0.520 | 0.510 ± 0.010 | 0.485 to 0.535 | 0.400 to 0.600 |" in markdown
    assert "t(0.975, 2) = 4.30" in markdown


def test_one_training_seed_says_that_no_spread_can_be_estimated(tmp_path):
    one = validate({"report": {"bootstrap": 50}, "seeds": [7]})
    ws = Workspace(tmp_path / "repo")
    write_inputs(ws, seeds=(7,))
    metrics = report.run(one, ws=ws, log_to_mlflow=False)
    auroc = metrics["seeds"]["densenet121"]["metrics"]["auroc"]
    assert auroc["n"] == 1 and np.isnan(auroc["sd"]) and np.isnan(auroc["low"])
    markdown = ws.report.markdown.read_text()
    assert "One training seed (7): no seed spread can be estimated" in markdown
    assert "With one training seed nothing here measures how much retraining moves these numbers" in markdown


def test_the_papers_sections_compare_backbones_and_rank_methods_by_confidence_increase(made):
    ws, _ = made
    markdown = ws.report.markdown.read_text()
    assert "## Across backbones: Grad-CAM's localisation, faithfulness, sanity and consistency" in markdown
    header = "| backbone | test AUROC | Grad-CAM pointing ↑ | energy in boxes ↑ | deletion AUC ↓ | insertion AUC ↑ |"
    assert header in markdown
    for arch in ARCHS:  # the fixture's sanity: passes at 0.20; no energy or insertion measured: n/a
        row = next(
            line for line in markdown.splitlines() if line.startswith(f"| {arch} | ") and "passes (0.20)" in line
        )
        assert " n/a " in row
    assert f"| {ARCHS[0]} | 1 | 0.20 |" in markdown  # the Grad-CAM consistency matrix: the pair's mean ρ
    assert "## Methods compared by confidence increase" in markdown
    # ranked by increase: saliency (0.60) before gradcam (0.40); the pairwise cells, each pair read both ways
    assert "| 1 | saliency | 0.600" in markdown and "| 2 | gradcam | 0.400" in markdown
    assert "| saliency |  | drop +0.10 pp (p 0.020); incr. -0.200 (p 0.300) |" in markdown
    assert "| gradcam | drop -0.10 pp (p 0.020); incr. +0.200 (p 0.300) |  |" in markdown


def test_the_report_says_what_is_identical_where_and_names_each_trainings_environment(made, tmp_path):
    ws, metrics = made
    markdown = ws.report.markdown.read_text()
    assert "## Reproducibility: what is identical where" in markdown
    assert "Not identical across CPU kinds or GPUs" in markdown and "tests/stages/test_train_stage.py" in markdown
    trainings = ", ".join(f"{a} s{s}" for a in ARCHS for s in PARAMS.seeds)
    # the fixture's metrics predate the deterministic record: said, not guessed
    assert f"| CPU X (2 threads) | 2.14.1 | 32-true | not recorded | {trainings} |" in markdown
    assert metrics["environments"] == [
        {
            "machine": "CPU X (2 threads)",
            "torch": "2.14.1",
            "precision": "32-true",
            "deterministic": "not recorded",
            "trainings": trainings.split(", "),
        }
    ]
    assert "the seed spread above" in markdown and "more than one environment" not in markdown
    # one training on another machine: two environments, and the report says what that mixes
    other = tmp_path / "repo"
    shutil.copytree(ws.root, other)
    other_ws = Workspace(other)
    moved = other_ws.stage_metrics("train", ARCHS[1], PARAMS.seeds[-1])
    moved.write_text(
        json.dumps({"environment": {"machine": "cuda:GPU Y x1", "torch": "2.14.1", "precision": "bf16-mixed"}})
    )
    again = report.run(PARAMS, ws=other_ws, log_to_mlflow=False)
    assert [e["trainings"] for e in again["environments"]][1] == [f"{ARCHS[1]} s{PARAMS.seeds[-1]}"]
    assert "These trainings ran in more than one environment" in other_ws.report.markdown.read_text()


# --------------------------------------------------------------------------------------------------------------------
# report --log-only: the report in reports/ logged without rebuilding it, once


def _summaries(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    return client.search_runs(["1"], filter_string="tags.`dvc.stage` = 'report'")


def test_log_only_logs_the_committed_report_once(reported, store):
    """A fresh clone: new training runs, the report DVC kept; logged on the first call, skipped on the second."""
    runs = _runs(reported, store)
    before = snapshot(reported.report.dir)
    summary = report.log_only(PARAMS, ws=reported)
    assert snapshot(reported.report.dir) == before  # not rebuilt
    client = MlflowClient(tracking_uri=store)
    (logged,) = _summaries(store)
    assert logged.info.run_id == summary
    tags = logged.data.tags
    assert tags[tracking.REPORT_DIGEST_TAG] == hashlib.md5(before["metrics.json"]).hexdigest()
    assert {tags[f"report.run.{a}"] for a in ARCHS} == {runs[a][42] for a in ARCHS}
    assert tags["report.run.densenet121.seed44"] == runs["densenet121"][44] and tags["report.logged_by"] == "log-only"
    assert {"report/report.md", "report/metrics.json"} <= {a.path for a in client.list_artifacts(summary, "report")}
    names = {a.path for a in client.list_artifacts(runs["resnet50"][42], "report")}  # as the stage logs each arch's run
    assert "report/sanity_resnet50.png" in names and "report/roc.png" in names and "report/training.png" not in names
    assert "report/at_youden/auroc" in client.get_run(runs["densenet121"][42]).data.metrics
    assert report.log_only(PARAMS, ws=reported) is None  # the second time: already there
    assert len(_summaries(store)) == 1
    # a new training (a retrain of one seed) is not covered by that run: logged again
    run = client.create_run("1").info.run_id
    tracking.write_run_ref(reported.model("resnet50", 43).run_ref, run, store, "1")
    assert report.log_only(PARAMS, ws=reported) is not None
    assert len(_summaries(store)) == 2


def test_log_only_after_the_report_stage_logs_nothing(ws, store):
    _runs(ws, store)
    report.run(PARAMS, ws=ws)
    assert report.log_only(PARAMS, ws=ws) is None
    assert len(_summaries(store)) == 1


def test_log_only_without_a_report_or_its_runs_says_what_to_run(reported, store):
    with pytest.raises(
        CxrError, match=r"missing input .*resnet50/seed42/mlflow_run\.json.*dvc repro train@resnet50-42"
    ):
        report.log_only(PARAMS, ws=reported)
    _runs(reported, store)
    retrained = reported.model("resnet50", 43).predictions  # one seed retrained since the report was made
    frame = pd.read_csv(retrained)
    frame.assign(probability=1 - frame["probability"]).to_csv(retrained, index=False)
    with pytest.raises(CxrError, match=r"its resnet50 seed 43 test metrics differ from those of .*seed43/predictions"):
        report.log_only(PARAMS, ws=reported)
    shutil.rmtree(reported.report.dir)
    with pytest.raises(CxrError, match=r"report --log-only: missing input .*reports/metrics\.json.*dvc repro report"):
        report.log_only(PARAMS, ws=reported)
    (reported.root / "params.yaml").write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    result = cli("report", "--log-only", cwd=reported.root, env={"MLFLOW_TRACKING_URI": store})
    printed = result.stderr.replace("\n", "")  # rich wraps the line
    assert result.returncode == 2 and "reports/metrics.json" in printed and "Traceback" not in printed
    assert _summaries(store) == []
