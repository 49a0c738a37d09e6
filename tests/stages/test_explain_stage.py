"""Stage explain@arch and consistency on a tiny trained model: outputs, metrics, MLflow artifacts, explain-image."""

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from cxrexplain.config import validate
from cxrexplain.data.sample import to_gray8
from cxrexplain.errors import CxrError
from cxrexplain.explain import pipeline
from cxrexplain.explain.agreement import read_pneumonia_maps
from cxrexplain.explain.single import explain_file
from cxrexplain.stages import consistency, explain, leakage, train
from cxrexplain.workspace import Workspace
from dicomfiles import make_dicom
from inprocess import cli
from tinydata import write_tiny_dataset

PARAMS = {
    "workers": 0,
    "seeds": [42],  # one training seed per architecture (several: tests/stages/test_report_stage.py)
    "model": {"archs": ["resnet18", "densenet121"], "pretrained": "none"},
    "train": {"image_size": 64, "batch_size": 8, "lr": 1e-3, "max_epochs": 2, "accelerator": "cpu", "devices": 1},
    "explain": {
        "attributions": ["saliency", "occlusion"],
        "subset": 4,
        "batch_size": 4,
        "tie_orders": 2,
        "bootstrap": 50,
        "attribution": {"ig_steps": 3, "occlusion_window": 0.5, "occlusion_stride": 0.5, "shap_samples": 2},
        "faithfulness": {"steps": 4, "road_percentiles": [50]},  # several percentiles: test_faithfulness.py
        "sanity": {"images": 2, "modes": ["top_down", "bottom_up"], "data_randomisation": True, "data_epochs": 1},
        "gallery": {"per_outcome": 3, "compare_images": 2},
    },
}
CAMS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigengradcam")
ATTRIBUTIONS = ("saliency", "occlusion")  # all four are tested in tests/explain/test_attributions.py


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    write_tiny_dataset(root / "data")
    params = validate(PARAMS)
    one_epoch = validate({**PARAMS, "train": {**PARAMS["train"], "max_epochs": 1}})
    for arch in params.model.archs:
        train.run(one_epoch, arch, ws=Workspace(root), show_progress=False)
    ws = Workspace(root)
    # the data randomisation test retrains the architecture on permuted labels: once (ResNet-18) is enough here
    sanity = {**PARAMS["explain"]["sanity"], "data_randomisation": False}
    without = validate({**PARAMS, "explain": {**PARAMS["explain"], "sanity": sanity}})
    results = {
        arch: explain.run(p, arch, ws=ws, device="cpu", show_progress=False)
        for arch, p in zip(params.model.archs, (params, without), strict=True)
    }
    yield root, params, results
    mp.undo()


def test_outputs_per_image_table_and_metrics(project):
    root, _, results = project
    out = root / "explain" / "resnet18" / "seed42"
    assert {p.name for p in out.iterdir()} == {
        "per_image.csv",
        "summary.csv",
        "paired.csv",
        "sanity.csv",
        "sanity_curve.csv",
        "data_randomisation.csv",
        "maps.npz",
        "gallery_gradcam.png",
        "methods.png",
    }
    assert not list((root / "explain").glob("*.part"))  # written through a temporary folder, renamed on success
    table = pd.read_csv(out / "per_image.csv")
    test_images = 12  # tinydata: the last quarter of 48; its Pneumonia images (6) have boxes
    methods = (*CAMS, *ATTRIBUTIONS)
    assert set(table["method"]) == set(methods)
    assert set(table["outcome"]) <= {"TP", "FP", "FN", "TN"}
    assert {"explained_class", "maps_for", "patient", "predicted", "tied_share", "centre_prior"} <= set(table.columns)
    # localisation: the Pneumonia map of every image with a box, whatever the prediction, for every method
    localised = table[table["pointing"].notna()]
    assert (localised["explained_class"] == 1).all() and localised["has_box"].all()
    assert localised.groupby("method")["index"].nunique().eq(6).all()
    # faithfulness: the decision map (class = prediction at the threshold) of the subset, for every method
    faithful = table[table["deletion"].notna()]
    assert (faithful["explained_class"] == faithful["predicted"]).all() and faithful["in_subset"].all()
    assert faithful.groupby("method")["index"].nunique().eq(4).all()
    assert faithful["insertion"].between(0, 1).all() and faithful["road_morf"].between(0, 1).all()
    assert (table["predicted"] == (table["probability"] > 0.5)).all()
    metrics = json.loads((root / "metrics" / "explain" / "resnet18" / "seed42.json").read_text())
    assert metrics == results["resnet18"]
    assert metrics["images"] == test_images and metrics["images_with_boxes"] == 6 and metrics["subset_images"] == 4
    assert 0 < metrics["pointing_chance"] < 0.1  # 10×10 boxes on 32 px: 100/1024 of the image, minus edge pixels
    assert 0 <= metrics["pointing_centre_prior"] <= 1
    grad = metrics["methods"]["gradcam"]
    assert grad["pointing"]["low"] <= grad["pointing"]["mean"] <= grad["pointing"]["high"]
    assert grad["pointing"]["n"] == 6 and grad["deletion"]["n"] == 4
    assert {f"box_acc_{t:g}" for t in (0.1, 0.25, 0.5, 0.75, 0.9)} <= set(grad)
    assert isinstance(grad["sanity"]["passes"], bool)
    assert set(grad["data_randomisation"]) == {"mean_abs_spearman", "passes", "permuted_train_accuracy", "images"}
    curve = pd.read_csv(out / "sanity_curve.csv")
    top_down = curve[(curve["method"] == "gradcam") & (curve["mode"] == "top_down") & (curve["image"] == 0)]
    assert list(top_down["block"]) == ["none", "head", "layer4", "layer3", "layer2", "layer1", "stem"]
    assert set(curve["mode"]) == {"top_down", "bottom_up"}
    assert curve.loc[curve["block"] == "none", "spearman"].round(6).eq(1.0).all()  # deterministic maps
    verdict = pd.read_csv(out / "sanity.csv")
    assert set(verdict["method"]) == set(methods)
    summary = pd.read_csv(out / "summary.csv")
    assert {"method", "group", "metric", "n", "clusters", "mean", "low", "high"} <= set(summary.columns)
    paired = pd.read_csv(out / "paired.csv")
    pairs = len(methods) * (len(methods) - 1) // 2
    assert len(paired[(paired["measure"] == "deletion") & (paired["test"] == "t")]) == pairs
    assert paired["p_holm"].dropna().ge(paired["p"].dropna().min()).all()
    with np.load(out / "maps.npz") as maps:
        assert (maps["explained_class"] == 1).all() and len(maps["patients"]) == test_images


def test_galleries_are_images_and_logged_to_the_train_run(project):
    root, _, _ = project
    for name in ("gallery_gradcam.png", "methods.png"):
        with Image.open(root / "explain" / "densenet121" / "seed42" / name) as image:
            assert image.format == "PNG" and image.width > 300
    ref = json.loads((root / "models" / "densenet121" / "seed42" / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=ref["tracking_uri"])
    names = {a.path for a in client.list_artifacts(ref["run_id"], "explain")}
    assert {
        "explain/gallery_gradcam.png",
        "explain/methods.png",
        "explain/per_image.csv",
        "explain/seed42.json",
    } <= names
    run = client.get_run(ref["run_id"])
    assert "explain/gradcam/pointing" in run.data.metrics


def test_consistency_compares_the_two_architectures(project):
    root, params, _ = project
    metrics = consistency.run(params, ws=Workspace(root))
    assert metrics["images"] == 12
    (pair,) = metrics["pairs"]  # two architectures: one pair
    assert pair["archs"] == list(params.model.archs) and set(pair["methods"]) == set(CAMS)
    for entry in pair["methods"].values():
        assert -1 <= entry["spearman"]["mean"] <= 1 and 0 <= entry["top_iou"]["mean"] <= 1
    table = pd.read_csv(root / "consistency" / "consistency.csv")
    assert len(table) == 12 * len(CAMS)
    assert set(zip(table["arch_a"], table["arch_b"], strict=True)) == {tuple(params.model.archs)}


def test_youden_threshold_reproduces_the_explained_outcomes(project, tmp_path):
    root, params, _ = project
    youden = validate({**PARAMS, "explain": {**PARAMS["explain"], "threshold": "youden"}})
    threshold = pipeline.choose_threshold(youden.explain, Workspace(root).model("resnet18", 42).predictions)
    assert 0 <= threshold <= 1
    assert pipeline.choose_threshold(params.explain, Path("unused")) == 0.5


def test_explain_image_cli_writes_an_overlay(project, tmp_path):
    root, _, _ = project
    images = np.load(root / "data" / "cache" / "images.npy")
    png = tmp_path / "xray.png"
    Image.fromarray(images[1]).save(png)
    out = tmp_path / "overlay.png"
    ckpt = ["--checkpoint", str(root / "models" / "resnet18" / "seed42" / "best.ckpt")]
    done = cli("explain-image", str(png), *ckpt, "--out", str(out), "--class", "pneumonia", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "P(Pneumonia) = " in done.stdout and "explains Pneumonia" in done.stdout
    with Image.open(out) as image:
        assert image.format == "PNG"
    # user errors name the problem (in process: the CLI prints the same CxrError and exits 2, see tests/test_cli.py)
    with pytest.raises(CxrError, match=r"--method 'magic': unknown \(available: gradcam, "):
        explain_file(png, root / "models" / "resnet18" / "seed42" / "best.ckpt", "magic")
    with pytest.raises(CxrError, match=r"none.ckpt: checkpoint not found"):
        explain_file(png, tmp_path / "none.ckpt")
    with pytest.raises(CxrError, match=r"missing.png: image not found"):
        explain_file(tmp_path / "missing.png", root / "models" / "resnet18" / "seed42" / "best.ckpt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CxrError, match=r"broken.png: not a readable image"):
        explain_file(tmp_path / "broken.png", root / "models" / "resnet18" / "seed42" / "best.ckpt")


def test_explain_image_reads_dicom_as_the_same_input_as_png(project, tmp_path):
    root, _, _ = project
    ckpt = root / "models" / "resnet18" / "seed42" / "best.ckpt"
    pixels = np.load(root / "data" / "cache" / "images.npy")[1]  # 32 px, the network's 64 px input is resized
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    # an 8-bit MONOCHROME1 file (stored 255 - g) whose LINEAR window 128/256 is the identity: the PNG's pixels, so the
    # rest of explain_file (shared by both) sees the same input
    data = make_dicom(
        255 - pixels, bits_stored=8, bits_allocated=8, photometric="MONOCHROME1", WindowCenter=128, WindowWidth=256
    )
    (tmp_path / "xray.dcm").write_bytes(data)
    result = explain_file(tmp_path / "xray.dcm", ckpt, out=tmp_path / "dcm.png")
    np.testing.assert_array_equal(result.image, to_gray8(buffer.getvalue(), 64)[0])
    assert 0 < result.probability < 1 and result.heatmap.shape == (64, 64) and result.path.is_file()
    (tmp_path / "fake.dcm").write_bytes(b"\x89PNG not DICOM" * 20)
    with pytest.raises(CxrError, match=r"fake.dcm: not a DICOM file"):
        explain_file(tmp_path / "fake.dcm", ckpt)


def test_missing_checkpoint_names_the_stage_to_run(tmp_path):
    write_tiny_dataset(tmp_path / "data")
    with pytest.raises(
        CxrError, match=r"explain@resnet18-42: missing input .*best.ckpt.*run `dvc repro train@resnet18-42`"
    ):
        explain.run(validate(PARAMS), "resnet18", ws=Workspace(tmp_path), log_to_mlflow=False)


def _never(*args, **kwargs):
    raise AssertionError("the stage started its work before checking its inputs")


def test_missing_inputs_are_named_before_any_work(project, tmp_path, monkeypatch):
    root, params, _ = project
    ws = Workspace(tmp_path)
    monkeypatch.setattr(pipeline, "load_model", _never)
    shutil.copytree(Workspace(root).model("resnet18", 42).dir, ws.model("resnet18", 42).dir)
    with pytest.raises(
        CxrError, match=r"explain@resnet18-42: missing input .*images.npy, .*index.csv .*dvc repro sample`"
    ):
        explain.run(params, "resnet18", ws=ws, log_to_mlflow=False)
    shutil.copytree(Workspace(root).cache.dir, ws.cache.dir)
    with pytest.raises(CxrError, match=r"explain@resnet18-42: missing input .*split.csv .*`dvc repro split` first"):
        explain.run(params, "resnet18", ws=ws, log_to_mlflow=False)
    ws.model("resnet18", 42).run_ref.unlink()
    with pytest.raises(CxrError, match=r"missing input .*mlflow_run.json .*`dvc repro train@resnet18-42` first"):
        explain.run(params, "resnet18", ws=ws)  # logging needs the training's run
    assert not ws.explain("resnet18", 42).dir.exists()


def test_a_run_missing_from_the_tracking_store_stops_explain_before_any_work(project, tmp_path, monkeypatch):
    # after `dvc pull` on another machine the run reference names a run of a store that is not there: the old stage
    # explained and measured everything, then failed with MLflow's "Run not found" when it logged
    root, params, _ = project
    ws = Workspace(tmp_path)
    shutil.copytree(root / "data", tmp_path / "data")
    shutil.copytree(Workspace(root).model("resnet18", 42).dir, ws.model("resnet18", 42).dir)
    ref = json.loads(ws.model("resnet18", 42).run_ref.read_text())
    ws.model("resnet18", 42).run_ref.write_text(json.dumps({**ref, "tracking_uri": f"sqlite:///{tmp_path}/fresh.db"}))
    monkeypatch.setattr(pipeline, "explain_split", _never)
    with pytest.raises(CxrError, match=rf"MLflow run {ref['run_id']} is not in the tracking store sqlite:///"):
        explain.run(params, "resnet18", ws=ws, device="cpu", show_progress=False)
    assert not ws.explain("resnet18", 42).dir.exists() and not ws.stage_metrics("explain", "resnet18", 42).exists()


KILLED_WHILE_WRITING = """
import json, os, signal, sys
from cxrexplain.config import validate
from cxrexplain.data.sample import to_gray8
from cxrexplain.explain import gallery
from cxrexplain.stages import explain
from cxrexplain.workspace import Workspace

def killed(*args, **kwargs):  # the galleries are drawn after the tables and maps.npz are written
    os.kill(os.getpid(), signal.SIGKILL)

gallery.outcome_gallery = killed
params = validate(json.loads(sys.argv[2]))
explain.run(params, "resnet18", ws=Workspace(sys.argv[1]), device="cpu", show_progress=False, log_to_mlflow=False)
"""


def test_a_kill_while_writing_leaves_the_old_complete_outputs(project, tmp_path):
    # the audit: a SIGKILL during explain left 4 of 6 files, and a following report exited 0 without the galleries
    root, _, _ = project
    ws = Workspace(tmp_path)
    shutil.copytree(root / "data", tmp_path / "data")
    shutil.copytree(Workspace(root).model("resnet18", 42).dir, ws.model("resnet18", 42).dir)
    shutil.copytree(Workspace(root).explain("resnet18", 42).dir, ws.explain("resnet18", 42).dir)
    metrics_file = ws.stage_metrics("explain", "resnet18", 42)
    metrics_file.parent.mkdir(parents=True)
    shutil.copy(Workspace(root).stage_metrics("explain", "resnet18", 42), metrics_file)
    out = ws.explain("resnet18", 42)
    before = {p.name: p.read_bytes() for p in out.dir.iterdir()}
    metrics_before = metrics_file.read_bytes()
    cheap = {
        "cams": ["gradcam"],
        "attributions": [],
        "measures": ["pointing"],
        "sanity": {"images": 2, "modes": ["top_down"]},
    }
    cheap = {**PARAMS, "explain": {**PARAMS["explain"], **cheap}}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_WRITING, str(tmp_path), json.dumps(cheap)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert {p.name: p.read_bytes() for p in out.dir.iterdir()} == before  # the old folder, whole and unchanged
    assert metrics_file.read_bytes() == metrics_before
    (part,) = out.dir.parent.glob(".seed42.*.part")  # the new one, killed half-written, under a name no one reads
    assert {"per_image.csv", "summary.csv", "maps.npz"} <= {p.name for p in part.iterdir()}
    assert not (part / "gallery_gradcam.png").exists()
    Workspace.require(
        out.complete, needed_by="consistency", made_by="explain@resnet18-42"
    )  # a reader finds it complete
    assert len(read_pneumonia_maps(out.maps, made_by="explain@resnet18-42").images) == 12


def test_report_stage_writes_markdown_html_metrics_and_a_summary_run(project):
    from cxrexplain.stages import report

    root, params, _ = project
    consistency.run(params, ws=Workspace(root))  # the report reads its metrics (whatever order the tests run in)
    one_epoch = validate({**PARAMS, "train": {**PARAMS["train"], "max_epochs": 1}})  # as the fixture's trainings
    leakage.run(one_epoch, ws=Workspace(root), show_progress=False)  # and the audit's (one image per patient here)
    metrics_dir = root / "metrics"
    (metrics_dir / "sample.json").write_text(json.dumps({"cached": {"images": 48, "pneumonia": 24}}))
    (metrics_dir / "split.json").write_text(json.dumps({"splits": {"test": {"images": 12}}}))
    metrics = report.run(params, ws=Workspace(root), bootstrap=50)
    assert set(metrics["archs"]) == {"resnet18", "densenet121"}
    entry = metrics["archs"]["resnet18"]["at_0.5"]["auroc"]
    assert entry["low"] <= entry["value"] <= entry["high"]
    md = (root / "reports" / "report.md").read_text()
    assert "| accuracy | 0.932 |" in md  # the study's number beside ours
    figures = {p.name for p in (root / "reports" / "figures").iterdir()}
    assert {"confusion.png", "roc.png", "pr.png", "calibration.png", "training.png"} <= figures
    assert {"gallery_gradcam_resnet18.png", "methods_densenet121.png"} <= figures
    linked = re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", md, flags=re.M)
    embedded = re.findall(
        r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', (root / "reports/report.html").read_text()
    )
    assert len(embedded) == len(linked) >= 9  # every figure the Markdown links is embedded in the HTML
    for link, data in zip(linked, embedded, strict=True):  # the same PNG, and one a browser can decode
        assert base64.b64decode(data) == (root / "reports" / link).read_bytes(), link
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    ref = json.loads((root / "models" / "resnet18" / "seed42" / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=ref["tracking_uri"])
    summary = client.search_runs(["1"], filter_string="tags.`dvc.stage` = 'report'")
    assert len(summary) == 1 and summary[0].data.tags["report.run.resnet18"] == ref["run_id"]
    assert {a.path for a in client.list_artifacts(summary[0].info.run_id, "report")} >= {
        "report/report.md",
        "report/report.html",
        "report/metrics.json",
    }
    assert "report/at_0.5/auroc" in client.get_run(ref["run_id"]).data.metrics
    assert metrics["leakage"]["arch"] == "resnet18" and metrics["leakage"]["leaked_patients"] == 0
    assert "## Leakage audit: patient-wise vs image-level split" in md
