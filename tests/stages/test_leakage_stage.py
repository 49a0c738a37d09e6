"""Stage leakage on a tiny cohort whose patients have two images each: the other split protocol, the same training,
the counts of what the image-level split leaks, the audit's own MLflow run, and checks before anything is written."""

import json

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from cxrexplain.config import validate
from cxrexplain.data.split import assign_splits, leakage_audit
from cxrexplain.errors import CxrError
from cxrexplain.stages import leakage
from cxrexplain.workspace import Workspace
from inprocess import cli
from tinydata import write_tiny_dataset

TINY = {
    "workers": 0,
    "model": {"archs": ["resnet18", "densenet121"], "pretrained": "none"},
    "train": {"image_size": 32, "batch_size": 8, "max_epochs": 1, "accelerator": "cpu", "devices": 1},
}


def paired_cohort(root, group_by: str = "patient") -> Workspace:
    """tinydata's 48 images, two per patient (one of each class), split by ``group_by`` as the split stage would."""
    ws = Workspace(root)
    write_tiny_dataset(root / "data")
    index = pd.read_csv(ws.cache.index)
    index["patient"] = index["row"] // 2 + 1
    index.to_csv(ws.cache.index, index=False)
    split = assign_splits(index, train=0.7, val=0.15, test=0.15, group_by=group_by, seed=0)
    index.assign(split=split)[["image", "patient", "label", "split"]].to_csv(ws.split, index=False)
    return ws


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def test_the_audit_trains_the_first_arch_on_an_image_level_split_and_counts_the_leak(tracked):
    ws = paired_cohort(tracked / "repo")
    params = validate(TINY)
    metrics = leakage.run(params, ws=ws, show_progress=False)
    assert json.loads(ws.stage_metrics("leakage").read_text()) == metrics
    assert metrics["arch"] == "resnet18" and metrics["protocols"] == {"pipeline": "patient", "audit": "image"}
    index = pd.read_csv(ws.cache.index)
    image_level = pd.read_csv(ws.leakage.split)
    # the other protocol of the same cohort: same fractions and seed, by image
    assert (
        image_level["split"].tolist()
        == assign_splits(index, train=0.7, val=0.15, test=0.15, group_by="image", seed=params.seed).tolist()
    )
    assert image_level.groupby("patient")["split"].nunique().max() == 2  # patients straddle splits
    expected = leakage_audit({"patient": pd.read_csv(ws.split), "image": image_level})
    assert {k: metrics[k] for k in expected} == expected
    assert metrics["leaked_patients"] > 0 and metrics["leaked_test_image_share"] > 0
    assert metrics["split"]["group_by"] == "image" and metrics["split"]["patients_in_two_splits"]["any"] > 0
    # the training, as train@resnet18 leaves it, of the val and test images of that split
    model = ws.leakage.model
    assert all(p.is_file() for p in model.complete)
    predictions = pd.read_csv(model.predictions)
    shown = image_level[image_level["split"] != "train"]
    assert sorted(predictions["image"]) == sorted(shown["image"])
    assert metrics["training"]["epochs"] == 1 and metrics["training"]["arch"] == "resnet18"
    assert metrics["seed"] == 42 and metrics["training"]["seed"] == 42  # the primary training seed
    # its own MLflow run, tagged as the audit, with the split it was trained on as a param
    ref = json.loads(model.run_ref.read_text())
    run = MlflowClient(tracking_uri=ref["tracking_uri"]).get_run(ref["run_id"])
    assert run.data.tags["dvc.stage"] == "leakage" and run.data.tags["audit"] == "leakage"
    assert run.data.tags["mlflow.runName"].startswith("leakage: resnet18 @ ")
    assert run.data.tags["mlflow.runName"].endswith(", image-level split")
    assert run.data.params["split.group_by"] == "image" and run.data.params["arch"] == "resnet18"
    assert "best_test/auroc" in run.data.metrics
    # not registered: a model of a leaky split must never become a champion
    assert not MlflowClient(tracking_uri=ref["tracking_uri"]).search_model_versions(f"run_id = '{ref['run_id']}'")
    assert not ws.model("resnet18", 42).dir.exists()  # the pipeline's own model is left alone


def test_an_image_level_pipeline_is_audited_with_a_patient_wise_split(tracked):
    ws = paired_cohort(tracked / "repo", group_by="image")
    params = validate({**TINY, "split": {"group_by": "image"}})
    (ws.root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    result = cli("leakage", "--no-progress", cwd=ws.root)  # the command dvc.yaml runs
    assert result.returncode == 0, result.stderr
    metrics = json.loads(ws.stage_metrics("leakage").read_text())
    assert metrics["protocols"] == {"pipeline": "image", "audit": "patient"}
    patient_wise = pd.read_csv(ws.leakage.split)
    assert patient_wise.groupby("patient")["split"].nunique().max() == 1
    # the counts are still those of the image-level split: here the pipeline's
    expected = leakage_audit({"patient": patient_wise, "image": pd.read_csv(ws.split)})
    assert {k: metrics[k] for k in expected} == expected and metrics["leaked_patients"] > 0


def test_missing_inputs_stop_the_audit_before_anything_is_written(tracked):
    ws = paired_cohort(tracked / "repo")
    ws.split.unlink()
    with pytest.raises(CxrError, match=r"leakage: missing input .*split.csv .*`dvc repro sample split`"):
        leakage.run(validate(TINY), ws=ws, show_progress=False)
    assert not ws.leakage.dir.exists() and not ws.stage_metrics("leakage").exists()
