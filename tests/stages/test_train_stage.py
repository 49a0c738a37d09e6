"""Stage train@arch on a tiny dataset: outputs, the MLflow run, determinism, checks before anything is deleted,
resume after a kill that gives the uninterrupted run's checkpoint bit for bit, DDP, a real tracking server."""

import hashlib
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import cxrexplain
from cxrexplain import tracking
from cxrexplain.config import validate
from cxrexplain.errors import CxrError
from cxrexplain.models import training
from cxrexplain.models.module import read_checkpoint
from cxrexplain.stages import train
from cxrexplain.workspace import Workspace
from inprocess import cli
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
# three epochs in which the best val loss is not the last one's (so last.ckpt must be written without an improvement):
# on data whose val labels go against the training rule (tinydata's val_against_train) the best epoch is the first
RESUMABLE = {"max_epochs": 3, "patience": 10}
BIN = Path(sys.executable).parent
SRC = Path(cxrexplain.__file__).resolve().parents[1]  # subprocesses import this checkout, however pytest was started


def params_of(workers: int = 0, **train_overrides):
    return validate({**TINY, "workers": workers, "train": {**TINY["train"], **train_overrides}})


def run_in_process(root: Path, arch: str = "resnet18", *, resume: bool = False, workers: int = 0, **overrides) -> dict:
    return train.run(params_of(workers, **overrides), arch, ws=Workspace(root), resume=resume, show_progress=False)


def workdir(root: Path, val_against_train: bool = False, **train_overrides) -> Path:
    """A project folder as the CLI sees it: params.yaml, data/cache, data/split.csv."""
    write_tiny_dataset(root / "data", val_against_train=val_against_train)
    write_params(root, **train_overrides)
    return root


def write_params(root: Path, workers: int = 0, **train_overrides) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params_of(workers, **train_overrides).model_dump(mode="json")))


def cli_env(root: Path) -> dict[str, str]:
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": path,
    }


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_training(a: Path, b: Path, arch: str = "resnet18") -> None:
    """Two trainings ended with the same weights (bitwise), optimizer state, history and metrics."""
    for name in ("best.ckpt", "last.ckpt"):
        first, second = (read_checkpoint(root / "models" / arch / "seed42" / name) for root in (a, b))
        assert first["epoch"] == second["epoch"], name
        assert first["state_dict"].keys() == second["state_dict"].keys()
        for key, tensor in first["state_dict"].items():
            assert torch.equal(tensor, second["state_dict"][key]), f"{name}: {key}"
        assert first["history"] == second["history"]
    first, second = (
        read_checkpoint(root / "models" / arch / "seed42" / "last.ckpt") for root in (a, b)
    )  # the best has none
    for x, y in zip(
        first["optimizer_states"][0]["state"].values(), second["optimizer_states"][0]["state"].values(), strict=True
    ):
        assert all(torch.equal(x[k], y[k]) for k in x)
    for name in ("history.csv", "predictions.csv"):
        assert (a / "models" / arch / "seed42" / name).read_bytes() == (
            b / "models" / arch / "seed42" / name
        ).read_bytes(), name
    metrics = [(root / "metrics" / "train" / arch / "seed42.json").read_text() for root in (a, b)]
    assert metrics[0] == metrics[1]


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    write_tiny_dataset(tmp_path / "data")
    return tmp_path


def test_outputs_metrics_and_mlflow_run(project, monkeypatch):
    monkeypatch.setattr(tracking, "SYSTEM_METRICS_INTERVAL_S", 0.5)  # a few samples in this short training
    metrics = run_in_process(project)
    out = project / "models" / "resnet18" / "seed42"
    assert {p.name for p in out.iterdir()} == {
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
    on_disk = json.loads((project / "metrics" / "train" / "resnet18" / "seed42.json").read_text())
    assert on_disk == metrics
    assert set(metrics["val"]) == {"auroc", "accuracy", "precision", "recall", "specificity", "f1"}
    # what the numbers depend on besides params and data: the report's reproducibility section reads it
    environment = metrics["environment"]
    assert environment["machine"] == f"{training.cpu_model()} ({torch.get_num_threads()} threads)"
    assert (environment["torch"], environment["precision"], environment["deterministic"]) == (
        torch.__version__,
        "32-true",
        True,
    )

    ref = json.loads((out / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=ref["tracking_uri"])
    run = client.get_run(ref["run_id"])
    assert run.data.params["train.batch_size"] == "8"
    assert run.data.params["arch"] == "resnet18"
    assert run.data.params["data.source"] == "nih"
    # run-control settings are not params of the run: a resume may change them (MLflow refuses a changed param)
    assert "train.resume" not in run.data.params and "workers" not in run.data.params
    assert run.data.tags["dvc.stage"] == "train@resnet18-42"
    assert run.data.tags["mlflow.runName"].startswith("resnet18 s42 @ ")
    assert {"git.commit", "git.dirty", "version.torch", "version.lightning", "device"} <= set(run.data.tags)
    assert len(client.get_metric_history(run.info.run_id, "val/auroc")) == 2  # per epoch
    assert "best_test/auroc" in run.data.metrics
    # lineage: the cohort's index and the split as dataset inputs, their digests DVC's MD5s of the files
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"cohort", "split"}
    for name, path in (("cohort", project / "data/cache/index.csv"), ("split", project / "data/split.csv")):
        assert inputs[name].dataset.digest == hashlib.md5(path.read_bytes()).hexdigest()
        assert json.loads(inputs[name].dataset.source)["data.source"] == "nih"
        assert json.loads(inputs[name].dataset.profile)["rows"] == len(pd.read_csv(path))
        assert {(t.key, t.value) for t in inputs[name].tags} == {("mlflow.data.context", "training")}
    # the machine's load during the fit (MLflow's system metrics monitor), one step per sample
    load = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert load and [m.step for m in load] == list(range(len(load)))
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "train")}
    assert {"train/best.ckpt", "train/predictions.csv", "train/seed42.json"} <= artifacts
    # the best checkpoint as an MLflow model, registered, the champion of a first training
    version = client.get_model_version_by_alias("cxrexplain-resnet18", tracking.CHAMPION)
    assert version.run_id == run.info.run_id and version.source == f"runs:/{run.info.run_id}/model"
    assert float(version.tags[tracking.VAL_AUROC_TAG]) == metrics["val"]["auroc"]
    assert version.tags["git.commit"] == run.data.tags["git.commit"] and version.tags["data.source"] == "nih"


def test_a_model_that_fails_to_register_keeps_the_training_and_a_resume_registers_it(project, monkeypatch):
    def refuse(*args, **kwargs):
        raise CxrError("the registry refused")

    with monkeypatch.context() as patch:
        patch.setattr(tracking, "log_model", refuse)
        with pytest.raises(CxrError, match="the registry refused"):
            run_in_process(project, max_epochs=1)
    out = project / "models" / "resnet18" / "seed42"
    assert {p.name for p in out.iterdir()} == {
        "best.ckpt",
        "last.ckpt",
        "predictions.csv",
        "history.csv",
        "mlflow_run.json",
    }
    assert (project / "metrics" / "train" / "resnet18" / "seed42.json").is_file()
    weights = out.joinpath("best.ckpt").read_bytes()
    run_in_process(project, resume=True, max_epochs=1)  # trains nothing more: registers the model
    assert out.joinpath("best.ckpt").read_bytes() == weights
    ref = json.loads((out / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=ref["tracking_uri"])
    (version,) = client.search_model_versions("name = 'cxrexplain-resnet18'")
    assert version.run_id == ref["run_id"]
    assert client.get_model_version_by_alias("cxrexplain-resnet18", tracking.CHAMPION).version == version.version


def test_same_params_and_seed_give_the_same_bytes_in_any_folder(project):
    for root in ("a", "b"):
        write_tiny_dataset(project / root / "data")
    first = run_in_process(project / "a", "densenet121")
    second = run_in_process(project / "b", "densenet121")
    assert first == second
    for name in ("best.ckpt", "last.ckpt"):  # no absolute path inside: the same bytes (and DVC hash) in any folder
        a, b = (project / d / "models" / "densenet121" / "seed42" / name for d in ("a", "b"))
        assert a.read_bytes() == b.read_bytes(), name
    state = read_checkpoint(project / "a" / "models" / "densenet121" / "seed42" / "last.ckpt")
    assert state["callbacks"]["EpochCheckpoint"] == {
        "best_score": first["best_val_loss"],
        "best_epoch": first["best_epoch"],
        "stopped": False,
    }
    assert state[training.PARAMS_KEY] == training.run_params(params_of(), "densenet121", 42)
    best = read_checkpoint(project / "a" / "models" / "densenet121" / "seed42" / "best.ckpt")
    assert "optimizer_states" not in best and "callbacks" not in best  # weights, hyperparameters, history only
    assert best["state_dict"].keys() == state["state_dict"].keys() and best["history"]
    folder = project / "a" / "models" / "densenet121" / "seed42"
    last_size, best_size = ((folder / name).stat().st_size for name in ("last.ckpt", "best.ckpt"))
    assert best_size < 0.5 * last_size  # Adam's two moments per weight stay in last.ckpt


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


# ------------------------------------------------------------------------------------ checks before destruction
@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    write_tiny_dataset(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        run_in_process(root, max_epochs=1)
    return root


def copy_project(source: Path, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("data", "models", "metrics"):
        subprocess.run(["cp", "-a", str(source / name), str(root / name)], check=True)
    return root


@pytest.fixture
def trained(trained_once, project):
    """A finished one-epoch training whose folder the failing runs below must leave exactly as it is."""
    return copy_project(trained_once, project / "copy")


FAILURES = {
    "unsupported tracking URI": ({"env": "file:./mlruns"}, "MLFLOW_TRACKING_URI='file:./mlruns': not supported"),
    "seed beyond numpy's range": ({"seed": 2**32}, r"seed: Input should be less than or equal to 4294967295"),
    "negative seed": ({"seed": -1}, r"seed: Input should be greater than or equal to 0"),
    "no device": ({"train": {"devices": 0}}, r"train.devices.*: Input should be greater than or equal to 1 \(got 0\)"),
    "missing accelerator": (
        {"train": {"accelerator": "cuda", "devices": 1000}},
        r"train@resnet18-42: train.accelerator='cuda', train.devices=1000.*not available on this machine",
    ),
    "missing split": ({"remove": "data/split.csv"}, r"train@resnet18-42: missing input .*split.csv.*dvc repro split"),
    "resume with another lr": (
        {"train": {"lr": 0.5}, "resume": True},
        r"cannot resume from .*last.ckpt: params differ from those of its run \(train.lr: 0.001 -> 0.5\)",
    ),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_failing_check_leaves_the_previous_outputs_untouched(trained, monkeypatch, case):
    change, message = FAILURES[case]
    before = snapshot(trained / "models")
    if "env" in change:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", change["env"])
    if "remove" in change:
        (trained / change["remove"]).unlink()
    raw = {**TINY, "train": {**TINY["train"], "max_epochs": 1, **change.get("train", {})}}
    if "seed" in change:
        raw["seed"] = change["seed"]
    with pytest.raises(CxrError, match=message):
        train.run(validate(raw), "resnet18", ws=Workspace(trained), resume=change.get("resume", False))
    assert snapshot(trained / "models") == before


def test_a_nan_loss_stops_training_with_a_clear_error(project):
    with pytest.raises(
        CxrError, match=r"training resnet18: loss is nan at epoch 0 step \d+; .*lower train.lr \(now 1e\+30\)"
    ):
        run_in_process(project, lr=1e30, max_epochs=3)
    assert not (project / "metrics" / "train" / "resnet18" / "seed42.json").exists()


# ------------------------------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: three epochs without interruption."""
    root = tmp_path_factory.mktemp("uninterrupted")
    write_tiny_dataset(root / "data", val_against_train=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        metrics = run_in_process(root, **RESUMABLE)
    # the case the resume must handle: a last epoch that did not improve (last.ckpt is not best.ckpt)
    assert metrics["epochs"] == 3 and metrics["best_epoch"] == 0
    return root


def test_killed_training_resumes_to_the_uninterrupted_checkpoint(uninterrupted, tmp_path, caplog):
    project = workdir(tmp_path, val_against_train=True, **RESUMABLE)
    env = cli_env(project)
    cmd = ["cxrexplain", "train", "--arch", "resnet18", "--no-progress"]
    last = project / "models" / "resnet18" / "seed42" / "last.ckpt"
    process = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # during epoch 1, after the save of epoch 0
    process.wait()
    assert read_checkpoint(last)["epoch"] == 0, "the kill came too late"
    killed_run = json.loads((project / "models" / "resnet18" / "seed42" / "mlflow_run.json").read_text())["run_id"]
    # the documented way (train.resume in params.yaml), with another number of loader workers: both run control
    (project / "params.yaml").write_text(
        yaml.safe_dump(
            validate({**TINY, "workers": 2, "train": {**TINY["train"], **RESUMABLE, "resume": True}}).model_dump(
                mode="json"
            )
        )
    )
    # the same command, in this process (a second interpreter would add seconds of imports, not coverage)
    with caplog.at_level(logging.INFO):
        resumed = cli(*cmd[1:], cwd=project, env={"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming train@resnet18-42 from models/resnet18/seed42/last.ckpt" in caplog.text
    assert_same_training(uninterrupted, project)
    ref = json.loads((project / "models" / "resnet18" / "seed42" / "mlflow_run.json").read_text())
    assert ref["run_id"] == killed_run  # the same MLflow run continues
    assert not list((project / "models" / "resnet18" / "seed42").glob(".*"))  # no temporary file left behind


def other_file_system(tmp_path: Path) -> Path:
    """A folder on another file system than ``tmp_path`` (where a move between the two copies the bytes)."""
    here = os.stat(tmp_path).st_dev
    for candidate in ("/dev/shm", "/run/user", "/var/tmp"):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK) and os.stat(candidate).st_dev != here:
            return Path(tempfile.mkdtemp(dir=candidate))
    pytest.skip("no writable folder on another file system than the test's")


def test_interrupted_run_resumes_exactly_logs_each_step_once_and_never_writes_into_the_dvc_cache(
    uninterrupted, project, monkeypatch
):
    """Interrupted after epoch 1's validation was logged but before its checkpoint: the resume redoes epoch 1."""
    original = training.EpochCheckpoint.on_train_epoch_end

    def interrupt_at_epoch_1(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("interrupted")
        original(self, trainer, pl_module)

    monkeypatch.setattr(training.EpochCheckpoint, "on_train_epoch_end", interrupt_at_epoch_1)
    write_tiny_dataset(project / "data", val_against_train=True)  # the uninterrupted run's data
    with pytest.raises(RuntimeError, match="interrupted"):
        run_in_process(project, **RESUMABLE)
    monkeypatch.setattr(training.EpochCheckpoint, "on_train_epoch_end", original)
    last = project / "models" / "resnet18" / "seed42" / "last.ckpt"
    assert read_checkpoint(last)["epoch"] == 0
    # DVC links outputs into its cache: the old last.ckpt's inode must keep its bytes when the resume saves
    cached = project / "dvc-cache-object"
    os.link(last, cached)
    cached_bytes = cached.read_bytes()
    elsewhere = other_file_system(project)
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))  # where a save through $TMPDIR would stage its file
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    run_in_process(project, resume=True, **RESUMABLE)
    assert cached.read_bytes() == cached_bytes
    assert last.read_bytes() != cached_bytes and read_checkpoint(last)["epoch"] == 2
    assert_same_training(uninterrupted, project)

    ref = json.loads((project / "models" / "resnet18" / "seed42" / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=ref["tracking_uri"])
    history = pd.read_csv(project / "models" / "resnet18" / "seed42" / "history.csv")
    for key in ("val/loss", "val/auroc", "train/loss"):
        logged = client.get_metric_history(ref["run_id"], key)
        assert [m.step for m in logged] == sorted({m.step for m in logged}), f"{key}: a step logged twice"
        assert [m.value for m in sorted(logged, key=lambda m: m.step)] == pytest.approx(history[key].tolist(), rel=1e-6)


def test_resuming_a_training_that_early_stopping_ended_trains_no_more_and_writes_the_same_outputs(project):
    """E.g. killed after the last epoch's checkpoint, before the predictions: the resume only finishes."""
    finished = project / "finished"
    write_tiny_dataset(finished / "data", val_against_train=True)
    metrics = run_in_process(finished, max_epochs=3, patience=1)
    assert metrics["epochs"] == 2  # val loss rose after epoch 0: stopped after epoch 1 of 3
    killed = copy_project(finished, project / "killed")
    for name in ("predictions.csv", "history.csv"):
        (killed / "models" / "resnet18" / "seed42" / name).unlink()
    (killed / "metrics" / "train" / "resnet18" / "seed42.json").unlink()
    run_in_process(killed, resume=True, max_epochs=3, patience=1)
    assert_same_training(finished, killed)


def test_ddp_on_two_cpu_processes_creates_exactly_one_run(tmp_path):
    project = workdir(tmp_path, max_epochs=1, devices=2, strategy="ddp")
    env = cli_env(project)
    result = subprocess.run(
        ["cxrexplain", "train", "--arch", "resnet18", "--no-progress"],
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
    assert (project / "models" / "resnet18" / "seed42" / "best.ckpt").is_file()


def test_training_against_a_real_mlflow_server(tmp_path, mlflow_server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    write_tiny_dataset(tmp_path / "data")
    run_in_process(tmp_path, max_epochs=1)
    ref = json.loads((tmp_path / "models" / "resnet18" / "seed42" / "mlflow_run.json").read_text())
    assert ref["tracking_uri"] == mlflow_server
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(ref["run_id"])
    assert run.data.params["train.image_size"] == "32"
    assert run.data.tags["dvc.stage"] == "train@resnet18-42"
    assert "val/auroc" in run.data.metrics
    local = client.download_artifacts(run.info.run_id, "train/best.ckpt", str(tmp_path / "down"))
    assert Path(local).stat().st_size == (tmp_path / "models" / "resnet18" / "seed42" / "best.ckpt").stat().st_size
    # the registered model through the server: loaded by alias, it gives the training's val probabilities
    import mlflow.pyfunc

    from cxrexplain.data.datamodule import CxrDataModule

    versions = client.search_model_versions(f"name = 'cxrexplain-resnet18' and run_id = '{run.info.run_id}'")
    assert len(versions) == 1
    model = mlflow.pyfunc.load_model(f"models:/cxrexplain-resnet18/{versions[0].version}")
    val = CxrDataModule(tmp_path / "data" / "cache", tmp_path / "data" / "split.csv", image_size=32).dataset("val")
    images = torch.stack([val[i]["image"] for i in range(len(val))]).numpy()
    predictions = pd.read_csv(tmp_path / "models" / "resnet18" / "seed42" / "predictions.csv")
    expected = predictions[predictions["split"] == "val"]["probability"].to_numpy()
    assert model.predict(images) == pytest.approx(expected, abs=1e-6)


def test_each_training_seed_has_its_own_folder_weights_and_run(project):
    """Two seeds of one architecture: their own folders and metrics files, different initial weights (so different
    trained weights), runs tagged with the seed; the data (cohort, split) is the same."""
    params = params_of()
    assert params.seeds == (42, 43, 44) and params.primary_seed == 42
    ws = Workspace(project)
    first = train.run(params, "resnet18", ws=ws, seed=42, show_progress=False)
    second = train.run(params, "resnet18", ws=ws, seed=43, show_progress=False)
    assert (first["seed"], second["seed"]) == (42, 43)
    assert json.loads(ws.stage_metrics("train", "resnet18", 43).read_text()) == second
    a, b = (read_checkpoint(ws.model("resnet18", s).best)["state_dict"] for s in (42, 43))
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)
    rows = [pd.read_csv(ws.model("resnet18", s).predictions)[["split", "image"]] for s in (42, 43)]
    pd.testing.assert_frame_equal(rows[0], rows[1])  # the same images: only the training differs
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    runs = [json.loads(ws.model("resnet18", s).run_ref.read_text())["run_id"] for s in (42, 43)]
    tags = [client.get_run(r).data.tags for r in runs]
    assert [(t["seed"], t["seed.primary"], t["dvc.stage"]) for t in tags] == [
        ("42", "true", "train@resnet18-42"),
        ("43", "false", "train@resnet18-43"),
    ]
    assert client.get_run(runs[1]).data.params["train.seed"] == "43"
    assert "seeds" not in client.get_run(runs[1]).data.params  # the list is not a param of one training


def test_a_seed_outside_the_list_is_refused_before_anything(project):
    with pytest.raises(CxrError, match=r"train@resnet18: seed 7 is not one of the training seeds .*seeds: 42, 43, 44"):
        train.run(params_of(), "resnet18", ws=Workspace(project), seed=7, show_progress=False)
    assert not (project / "models").exists()


def test_the_cpu_model_is_read_from_cpuinfo_and_falls_back_without_it(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC   9B14\n\nprocessor\t: 1\n")
    assert training.cpu_model(cpuinfo) == "AMD EPYC 9B14"
    fallback = training.cpu_model(tmp_path / "missing")
    assert fallback and fallback == (platform.processor() or platform.machine() or "unknown")
