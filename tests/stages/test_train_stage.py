"""Stage train@arch on a tiny dataset: outputs, the MLflow run, determinism, resume after a kill, DDP, a server."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
import torch
import yaml
from mlflow.tracking import MlflowClient

from cxrexplain import tracking
from cxrexplain.config import validate
from cxrexplain.errors import CxrError
from cxrexplain.models.module import read_checkpoint
from cxrexplain.stages import train
from tinydata import write_tiny_dataset

TINY = {
    "workers": 0,
    "model": {"pretrained": "none"},
    "train": {
        "image_size": 32,
        "batch_size": 8,
        "lr": 1e-3,
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "augment": {"rotate_deg": 5.0},
    },
}
BIN = Path(sys.executable).parent


def workdir(tmp_path: Path, overrides: dict | None = None) -> Path:
    """A project folder as the CLI sees it: params.yaml, data/cache, data/split.csv."""
    write_tiny_dataset(tmp_path / "data")
    params = validate({**TINY, **(overrides or {})}).model_dump(mode="json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def run_in_process(tmp_path: Path, arch: str = "resnet50", models: str = "models", **train_overrides) -> dict:
    params = validate({**TINY, "train": {**TINY["train"], **train_overrides}})
    return train.run(
        params,
        arch,
        cache_dir=tmp_path / "data" / "cache",
        split_file=tmp_path / "data" / "split.csv",
        models_dir=tmp_path / models,
        metrics_dir=tmp_path / "metrics",
        show_progress=False,
    )


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    write_tiny_dataset(tmp_path / "data")
    return tmp_path


def test_outputs_metrics_and_mlflow_run(project):
    metrics = run_in_process(project)
    out = project / "models" / "resnet50"
    assert {p.name for p in out.iterdir()} >= {
        "best.ckpt",
        "last.ckpt",
        "predictions.csv",
        "history.csv",
        "mlflow_run.json",
    }
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["split", "image", "patient", "label", "probability"]
    # the patient of every image, so that the report's intervals resample patients
    assert predictions["patient"].tolist() == [int(name[:8]) for name in predictions["image"]]
    assert predictions["split"].value_counts().to_dict() == {"val": 12, "test": 12}
    assert predictions["probability"].between(0, 1).all()
    assert len(pd.read_csv(out / "history.csv")) == 2
    on_disk = json.loads((project / "metrics" / "train" / "resnet50.json").read_text())
    assert on_disk == metrics
    assert set(metrics["val"]) == {"auroc", "accuracy", "precision", "recall", "specificity", "f1"}

    ref = json.loads((out / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=ref["tracking_uri"])
    run = client.get_run(ref["run_id"])
    assert run.data.params["train.batch_size"] == "8"
    assert run.data.params["arch"] == "resnet50"
    assert run.data.params["data.source"] == "nih"
    assert run.data.tags["dvc.stage"] == "train@resnet50"
    assert run.data.tags["mlflow.runName"].startswith("resnet50 @ ")
    assert {"git.commit", "git.dirty", "version.torch", "version.lightning", "device"} <= set(run.data.tags)
    assert len(client.get_metric_history(run.info.run_id, "val/auroc")) == 2  # per epoch
    assert "best_test/auroc" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "train")}
    assert {"train/best.ckpt", "train/predictions.csv", "train/resnet50.json"} <= artifacts


def test_same_params_and_seed_give_the_same_val_metrics(project):
    first = run_in_process(project, "densenet121", models="a")
    second = run_in_process(project, "densenet121", models="b")
    assert first["val"] == second["val"]
    assert first["best_val_loss"] == second["best_val_loss"]
    for name in ("best.ckpt", "last.ckpt"):  # no absolute path inside: the same bytes (and DVC hash) in any folder
        a, b = (project / d / "densenet121" / name for d in ("a", "b"))
        assert a.read_bytes() == b.read_bytes(), name
    state = read_checkpoint(project / "a" / "densenet121" / "best.ckpt")
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("PortableCheckpoint"))
    assert saved["dirpath"] == "." and saved["best_model_path"] == "best.ckpt"


def test_unreachable_tracking_server_fails_before_training(project, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(CxrError, match=f"MLflow tracking server http://127.0.0.1:{port} is unreachable"):
        run_in_process(project)
    assert time.monotonic() - started < 10
    assert not (project / "models").exists()


def test_killed_training_resumes_from_last_checkpoint(tmp_path):
    project = workdir(tmp_path, {"train": {**TINY["train"], "max_epochs": 4, "patience": 10}})
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db", "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = ["cxrexplain", "train", "--arch", "resnet50", "--no-progress"]
    last = project / "models" / "resnet50" / "last.ckpt"
    process = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists(), "no last.ckpt before the kill"
    killed_run = json.loads((project / "models" / "resnet50" / "mlflow_run.json").read_text())["run_id"]
    time.sleep(0.5)  # let a half-written checkpoint, if any, be visible as such
    resumed = subprocess.run([*cmd, "--resume"], cwd=project, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming resnet50 from models/resnet50/last.ckpt" in resumed.stderr.replace("\n", " ").replace("  ", " ")
    history = pd.read_csv(project / "models" / "resnet50" / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]  # the epochs before the kill are kept, not redone
    ref = json.loads((project / "models" / "resnet50" / "mlflow_run.json").read_text())
    assert ref["run_id"] == killed_run  # the same MLflow run continues


def test_ddp_on_two_cpu_processes_creates_exactly_one_run(tmp_path):
    project = workdir(tmp_path, {"train": {**TINY["train"], "max_epochs": 1, "devices": 2, "strategy": "ddp"}})
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db", "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["cxrexplain", "train", "--arch", "resnet50", "--no-progress"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"
    assert (project / "models" / "resnet50" / "best.ckpt").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "art"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{uri}/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.3)
    else:
        server.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield uri
    server.terminate()
    server.wait(timeout=20)


def test_training_against_a_real_mlflow_server(tmp_path, mlflow_server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    write_tiny_dataset(tmp_path / "data")
    run_in_process(tmp_path, max_epochs=1)
    ref = json.loads((tmp_path / "models" / "resnet50" / "mlflow_run.json").read_text())
    assert ref["tracking_uri"] == mlflow_server
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(ref["run_id"])
    assert run.data.params["train.image_size"] == "32"
    assert run.data.tags["dvc.stage"] == "train@resnet50"
    assert "val/auroc" in run.data.metrics
    local = client.download_artifacts(run.info.run_id, "train/best.ckpt", str(tmp_path / "down"))
    assert Path(local).stat().st_size == (tmp_path / "models" / "resnet50" / "best.ckpt").stat().st_size


def test_portable_checkpoint_state_round_trips_without_absolute_paths(tmp_path):
    import warnings

    saver = train.PortableCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", save_last=True)
    home = saver.dirpath
    saver.best_model_path = saver.kth_best_model_path = os.path.join(home, "best.ckpt")
    saver.last_model_path = os.path.join(home, "last.ckpt")
    saver.best_model_score = torch.tensor(0.25)
    saver.best_k_models = {saver.best_model_path: torch.tensor(0.25)}
    state = saver.state_dict()
    assert str(tmp_path) not in repr(state)  # nothing that names this folder
    resumed = train.PortableCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", save_last=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning warns (and drops the best score) when the directory looks changed
        resumed.load_state_dict(state)
    assert resumed.best_model_score == 0.25 and resumed.best_model_path == saver.best_model_path
    assert resumed.last_model_path == saver.last_model_path and set(resumed.best_k_models) == {saver.best_model_path}
