"""tracking.py: the same param keys and readable run names in every run; unsupported stores, dead servers and
missing runs fail early, fast and clearly."""

import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from cxrexplain import tracking
from cxrexplain.config import Params
from cxrexplain.errors import CxrError


def test_flatten_gives_dotted_keys_and_strings():
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    assert flat == {"a.b": "1", "a.c": "1,2", "d": "None"}


def test_flattened_params_have_stable_keys():
    flat = tracking.flatten(Params().model_dump(mode="json"))
    assert flat["train.lr"] == "0.0001"
    assert flat["sample.views"] == "PA,AP"
    assert flat["train.augment.rotate_deg"] == "10.0"
    assert len(flat) == len(set(flat))


def test_run_names_are_readable_and_flag_synthetic_data():
    assert tracking.run_name("resnet50", "0123456789abcdef", "nih") == "resnet50 @ 0123456"
    assert tracking.run_name("densenet121", "0123456789abcdef", "synthetic") == "densenet121 @ 0123456 [synthetic]"
    assert tracking.run_name("resnet50", "0123456789abcdef", "nih", seed=43) == "resnet50 s43 @ 0123456"


def test_tracking_uri_defaults_to_the_embedded_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_artifacts_live_beside_the_embedded_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.artifact_location(uri) == (tmp_path / "mlartifacts").as_uri()
    assert tracking.artifact_location("http://host:5000") is None


def test_git_state_outside_a_repository(tmp_path):
    assert tracking.git_state(tmp_path) == ("unknown", True)
    commit, dirty = tracking.git_state(Path(__file__).parent)
    assert len(commit) == 40 and isinstance(dirty, bool)


def test_git_state_ignores_the_pipeline_records_but_not_code_or_params(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for name in ("dvc.lock", "metrics/train.json", "reports/report.md", "params.yaml", "src/code.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("committed\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "-m", "c")
    for name in ("dvc.lock", "metrics/train.json", "reports/report.md"):  # what `dvc repro` rewrites
        (tmp_path / name).write_text("rewritten by a run\n")
    assert tracking.git_state(tmp_path / "src") == (tracking.git_state(tmp_path)[0], False)
    for name in ("params.yaml", "src/code.py"):
        (tmp_path / name).write_text("edited\n")
        assert tracking.git_state(tmp_path)[1] is True, name
        (tmp_path / name).write_text("committed\n")


# --------------------------------------------------------------------------------------------------------------------
# Failing early and fast


@pytest.mark.parametrize("uri", ["file:./mlruns", "./mlruns", "postgres://db/mlflow", "databricks"])
def test_unsupported_tracking_uris_are_refused(uri):
    with pytest.raises(CxrError, match="not supported; use sqlite:///<file>"):
        tracking.check_reachable(uri)


def test_http_retries_are_bounded_unless_the_user_set_them(monkeypatch):
    for key in tracking.HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    tracking.check_reachable("sqlite:///mlflow.db")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"  # the user's own value stands


class _DyingServer(BaseHTTPRequestHandler):
    """Healthy on /health, then HTTP 503 for every API call (a server that died behind its proxy)."""

    calls: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        type(self).calls.append(self.path)
        status = 200 if self.path.endswith("/health") else 503
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args) -> None:
        pass


def test_a_dying_server_costs_a_bounded_number_of_retries(monkeypatch):
    # MLflow's own defaults (7 retries, backoff factor 2) kept a dead server busy for about 8.5 minutes
    for key in tracking.HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # the count, not the waiting, is under test
    _DyingServer.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DyingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        tracking.check_reachable(uri)  # healthy: passes, and bounds the retries
        with pytest.raises(Exception):  # noqa: B017 (MLflow raises its own exception types for HTTP errors)
            tracking.log_metrics("0" * 32, {"x": 1.0}, uri=uri)
    finally:
        server.shutdown()
    api_calls = [c for c in _DyingServer.calls if not c.endswith("/health")]
    assert 1 <= len(api_calls) <= 1 + int(tracking.HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])


def test_require_run_names_the_missing_run_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = tmp_path / "mlflow_run.json"
    tracking.write_run_ref(ref, "f" * 32, f"sqlite:///{tmp_path / 'other.db'}", "1")
    with pytest.raises(CxrError) as info:
        tracking.require_run(ref)
    message = str(info.value)
    assert str(ref) in message and "f" * 32 in message and "not in the tracking store" in message
    ref.write_text("<html>")
    with pytest.raises(CxrError, match="not a run reference"):
        tracking.require_run(ref)


# --------------------------------------------------------------------------------------------------------------------
# The trained model as an MLflow model: registered, loaded by alias, weights-only


def _checkpoint(path: Path, arch: str = "resnet18", size: int = 32, seed: int = 0) -> Path:
    """What training's best.ckpt holds for the loader (weights under ``model.``, the hyper-parameters), untrained."""
    import torch

    from cxrexplain.models.backbones import build_classifier

    torch.manual_seed(seed)
    net = build_classifier(arch, dropout=0.5)
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        {"epoch": 0, "state_dict": state, "hyper_parameters": {"arch": arch, "dropout": 0.5, "image_size": size}}, path
    )
    return path


def _run(uri: str, source: str = "synthetic") -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("cxrexplain", artifact_location=tracking.artifact_location(uri))
    tags = {"git.commit": "0123456789abcdef0123456789abcdef01234567", "data.source": source, "arch": "resnet18"}
    run = client.create_run(experiment, tags=tags).info.run_id
    client.set_terminated(run)
    return run


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A checkpoint logged and registered in an embedded store (once: read it, do not change it)."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    checkpoint = _checkpoint(folder / "best.ckpt")
    run = _run(uri)
    return uri, run, checkpoint, tracking.log_model(run, checkpoint, val_auroc=0.75, uri=uri)


def test_the_champion_loads_by_alias_and_gives_the_checkpoints_probabilities(logged, monkeypatch):
    import mlflow.pyfunc
    import numpy as np
    import torch
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from cxrexplain.models.checkpoint import load_classifier

    uri, run, checkpoint, (name, version, champion) = logged
    assert (name, version, champion) == ("cxrexplain-resnet18-synthetic", "1", True)  # a synthetic-data run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@{tracking.CHAMPION}")
    images = np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32)
    network, _ = load_classifier(checkpoint)
    with torch.no_grad():
        expected = torch.sigmoid(network(torch.from_numpy(images))).numpy()
    predicted = model.predict(images)
    assert predicted.dtype == np.float32 and predicted.shape == (5,)
    np.testing.assert_allclose(predicted, expected, atol=1e-6, rtol=0)
    # the signature: one-channel float32 images of the training's size, one probability each; enforced
    signature = model.metadata.signature
    assert signature.inputs.to_dict() == [
        {"name": "image", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 1, 32, 32)}}
    ]
    assert signature.outputs.to_dict() == [
        {"name": "probability", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1,)}}
    ]
    for wrong in (np.zeros((2, 3, 32, 32), np.float32), np.zeros((2, 1, 64, 64), np.float32), images[:, 0]):
        with pytest.raises(MlflowException, match="enforce schema"):
            model.predict(wrong)
    # the version says where it comes from; a synthetic one says so
    client = MlflowClient(tracking_uri=uri)
    registered = client.get_model_version(name, version)
    assert registered.run_id == run and registered.source == f"runs:/{run}/model"
    assert registered.tags["git.commit"].startswith("0123456") and registered.tags["data.source"] == "synthetic"
    assert float(registered.tags[tracking.VAL_AUROC_TAG]) == 0.75
    assert registered.description.startswith("SYNTHETIC DATA") and "(N, 1, 32, 32)" in registered.description


def test_the_logged_model_is_weights_only_no_pickle(logged, monkeypatch):
    """The MLmodel names a loader module (no pickled python_model), every file but the checkpoint is text, and
    loading reads the checkpoint with ``torch.load(weights_only=True)`` only."""
    import mlflow.pyfunc
    import torch
    import yaml
    from mlflow.tracking import MlflowClient

    uri, run, checkpoint, (name, version, _) = logged
    local = Path(MlflowClient(tracking_uri=uri).download_artifacts(run, "model", str(checkpoint.parent / "down")))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "cxrexplain.tracking" and "python_model" not in flavor
    assert flavor["data"] == "data/best.ckpt"
    for path in local.rglob("*"):
        if path.is_file() and path.name != "best.ckpt":
            path.read_text(encoding="utf-8")  # text: no pickle, no archive
    assert (local / "code" / "cxrexplain" / "tracking.py").is_file()  # the code it was trained with
    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    assert loads == [True]


def _version(client, name: str, run: str, auroc: float | str) -> str:
    return client.create_model_version(
        name, f"runs:/{run}/model", run, tags={tracking.VAL_AUROC_TAG: str(auroc)}
    ).version


def test_the_champion_moves_to_a_better_val_auroc_and_stays_on_a_tie_or_a_worse_one(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, run, name = MlflowClient(tracking_uri=uri), _run(uri), "cxrexplain-resnet18"
    client.create_registered_model(name)
    assert tracking.elect_champion(name, uri=uri) is None  # no version yet
    steps = [(0.70, "1"), (0.90, "2"), (0.80, "2"), (0.90, "2"), ("nan", "2"), (0.95, "6")]
    for auroc, champion in steps:
        _version(client, name, run, auroc)
        assert tracking.elect_champion(name, uri=uri) == champion, auroc
        assert str(client.get_model_version_by_alias(name, tracking.CHAMPION).version) == champion


def test_a_first_version_without_a_val_auroc_is_still_the_champion(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, run, name = MlflowClient(tracking_uri=uri), _run(uri), "cxrexplain-resnet18"
    client.create_registered_model(name)
    _version(client, name, run, "nan")  # one class in val: AUROC undefined
    assert tracking.elect_champion(name, uri=uri) == "1"
    _version(client, name, run, 0.6)
    assert tracking.elect_champion(name, uri=uri) == "2"


def test_a_store_that_fails_while_logging_the_model_is_a_clear_error(tmp_path, monkeypatch):
    for key in tracking.HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    tracking.bound_retries()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DyingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(CxrError) as info:
            tracking.log_model("f" * 32, _checkpoint(tmp_path / "best.ckpt"), val_auroc=0.8, uri=uri, seed=43)
    finally:
        server.shutdown()
    message = str(info.value)
    assert "f" * 32 in message and "cxrexplain-resnet18" in message and uri in message
    assert "cxrexplain train --arch resnet18 --seed 43 --resume" in message


def test_one_registered_model_per_data_source_and_task():
    assert tracking.registered_model("resnet50") == "cxrexplain-resnet50"  # real data, the study's task
    assert tracking.registered_model("resnet50", "synthetic") == "cxrexplain-resnet50-synthetic"
    assert tracking.registered_model("densenet121", "nih", "all_others") == "cxrexplain-densenet121-onevsrest"
    assert tracking.registered_model("resnet50", "dicom") == "cxrexplain-resnet50-dicom"  # other radiographs
