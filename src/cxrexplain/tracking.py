"""Everything MLflow: tracking URI, run names, tags, flattened params, artifacts, and run references.

The default store is an embedded SQLite file at the repository root (``sqlite:///mlflow.db``) with artifacts under
``mlartifacts/``, both outside every DVC output; ``MLFLOW_TRACKING_URI`` points everything at a tracking server
instead. An unreachable server fails fast, before any training.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from cxrexplain.errors import CxrError
from cxrexplain.io import write_json

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR = Path("mlartifacts")
EXPERIMENT = "cxrexplain"
SYNTHETIC_NOTICE = "synthetic data: not medical evidence"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the embedded default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


SUPPORTED_SCHEMES = ("sqlite:///", "http://", "https://")
# MLflow's HTTP client retries a failing server for minutes by default (7 retries, backoff factor 2: about 8.5 min);
# a run here fails within about half a minute instead, with a message that says what to do.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def bound_retries() -> None:
    """Cap MLflow's HTTP retries (unless the user set them): a dead server costs seconds, not minutes."""
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def check_uri(uri: str) -> None:
    """A tracking URI this project can use: ``sqlite:///<file>`` or an ``http(s)://`` server; else a CxrError."""
    if not uri.startswith(SUPPORTED_SCHEMES):
        raise CxrError(
            f"MLFLOW_TRACKING_URI={uri!r}: not supported; use sqlite:///<file> (the default is {DEFAULT_URI}) or "
            "http(s)://<server>"
        )


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the URI, when it is not supported or a tracking server does not answer its health check."""
    check_uri(uri)
    bound_retries()
    if not uri.startswith(("http://", "https://")):
        return
    health = uri.rstrip("/") + "/health"
    try:
        response = requests.get(health, timeout=timeout_s)
    except requests.RequestException as error:
        raise CxrError(
            f"MLflow tracking server {uri} is unreachable ({type(error).__name__}); start it, fix "
            "MLFLOW_TRACKING_URI, or unset it to use the embedded store sqlite:///mlflow.db"
        ) from None
    if response.status_code != 200:
        raise CxrError(f"MLflow tracking server {uri}: {health} answered HTTP {response.status_code}")


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: ``mlartifacts/`` beside an embedded store; the server's choice else."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACT_DIR).as_uri()
    return None


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}``; lists become comma-joined strings. Same keys in every run."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = ",".join(str(v) for v in value)
        else:
            flat[name] = str(value)
    return flat


# The pipeline's own records, committed from a run and rewritten by the next one (DVC's lock file, the metrics and the
# report): a run that is writing them is not "dirty" because of them.
PIPELINE_RECORDS = ("dvc.lock", "metrics", "reports")


def git_state(cwd: Path | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the repository, or ("unknown", True) outside git.

    Dirty: a tracked file differs from the commit, other than :data:`PIPELINE_RECORDS` (a ``dvc repro`` updates
    ``dvc.lock`` after each stage, which would otherwise mark every later stage of the same run dirty).
    """
    records = [f":(top,exclude){path}" for path in PIPELINE_RECORDS]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", *records],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return commit, bool(status.strip())


def run_name(arch: str, commit: str, source: str) -> str:
    """``resnet50 @ 1a2b3c4 [synthetic]``: readable in the MLflow UI's run list."""
    suffix = " [synthetic]" if source == "synthetic" else ""
    return f"{arch} @ {commit[:7]}{suffix}"


def run_tags(
    *, stage: str, arch: str, source: str, device: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Tags every run carries: commit, dirty flag, DVC stage, data source, versions, device."""
    import lightning
    import torch

    commit, dirty = git_state()
    tags = {
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "dvc.stage": stage,
        "arch": arch,
        "data.source": source,
        "version.torch": torch.__version__,
        "version.lightning": lightning.__version__,
        "version.python": platform.python_version(),
        "device": device,
    }
    if source == "synthetic":
        tags["data.notice"] = SYNTHETIC_NOTICE
    tags.update(extra or {})
    return tags


RUN_REF = "mlflow_run.json"  # in models/<arch>/: the training's MLflow run, which later stages log into


def write_run_ref(path: Path, run_id: str, uri: str, experiment_id: str) -> None:
    """Record which run a stage logged to, for the later stages (explain, report) to log into the same run."""
    write_json(path, {"run_id": run_id, "tracking_uri": uri, "experiment_id": experiment_id})


def read_run_ref(path: Path) -> dict[str, str]:
    try:
        ref = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CxrError(f"{path}: not found; run the train stage first (dvc repro train)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CxrError(f"{path}: not a run reference (not JSON); re-run the train stage") from None
    if not isinstance(ref, dict) or not {"run_id", "tracking_uri"} <= set(ref):
        raise CxrError(f"{path}: not a run reference (needs run_id and tracking_uri); re-run the train stage")
    return ref


def require_run(path: Path) -> dict[str, str]:
    """The run reference at ``path``, checked *before* a stage's work: the store answers and holds the run.

    After ``dvc pull`` on another machine the reference names a run of a store that is not there; the stage then
    stops at once with what to do instead of failing after its work.
    """
    ref = read_run_ref(path)
    uri = ref["tracking_uri"]
    check_reachable(uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).get_run(ref["run_id"])
    except MlflowException:
        raise CxrError(
            f"{path}: MLflow run {ref['run_id']} is not in the tracking store {uri} (models made on another machine, "
            "or the store was reset); point MLFLOW_TRACKING_URI at the store that has it, or re-run the train stage "
            "here (dvc repro --force train)"
        ) from None
    return ref


def log_artifacts(run_id: str, paths: list[Path], artifact_path: str | None = None, uri: str | None = None) -> None:
    """Upload files (or folders) to a run's artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or tracking_uri())
    for path in paths:
        if Path(path).is_dir():
            client.log_artifacts(run_id, str(path), artifact_path)
        else:
            client.log_artifact(run_id, str(path), artifact_path)


def log_datasets(run_id: str, files: Mapping[str, Path], *, source: str, context: str, uri: str | None = None) -> None:
    """Record ``files`` (name -> CSV file) as the run's MLflow dataset inputs (lineage): each a dataset named
    ``name`` whose digest is the file's MD5, the hash DVC records for it (``dvc.lock``; inside a folder output, its
    ``.dir`` manifest), with the file's path and the data source (``data.source``) as its source and its row count as
    its profile; tagged with ``context`` (``mlflow.data.context``: training, evaluation, ...). MLflow's UI shows them
    in the run's "Datasets used", and runs trained on the same cohort and split share them."""
    import hashlib

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    inputs = []
    for name, path in files.items():
        data = Path(path).read_bytes()
        rows = max(data.count(b"\n") - 1, 0)  # lines after the header (the files end with a newline)
        dataset = Dataset(
            name=name,
            digest=hashlib.md5(data).hexdigest(),
            source_type="local",
            source=json.dumps({"path": str(path), "data.source": source}),
            profile=json.dumps({"rows": rows}),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    MlflowClient(tracking_uri=uri or tracking_uri()).log_inputs(run_id, datasets=inputs)


SYSTEM_METRICS_INTERVAL_S = 10.0
"""Seconds between two samples of the machine's load logged to a training run (:func:`system_metrics`)."""


@contextmanager
def system_metrics(run_id: str, uri: str, *, resume: bool = False) -> Iterator[None]:
    """Log the machine's load to ``run_id`` while the block runs: MLflow's system metrics monitor (psutil; pynvml when
    installed, for GPUs) samples CPU and memory use, disk and network every :data:`SYSTEM_METRICS_INTERVAL_S`
    seconds in a thread and logs them as ``system/*`` metrics (``system/cpu_utilization_percentage``,
    ``system/system_memory_usage_megabytes``, ...), one step per sample; a resumed run continues after its last step
    (``resume``). A block shorter than one interval logs nothing. Monitoring never fails the block: the monitor logs
    its own errors as warnings."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=resume, tracking_uri=uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def set_tags(run_id: str, tags: Mapping[str, str], uri: str | None = None) -> None:
    """Set (or overwrite) tags of a run, e.g. ``mlflow.runName`` or ``dvc.stage`` of a run another stage created."""
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri or tracking_uri()).log_batch(
        run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]
    )


def log_metrics(run_id: str, metrics: Mapping[str, float], uri: str | None = None, step: int | None = None) -> None:
    """Log several metrics to a run (finished runs too: later stages add to the train stage's run)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or tracking_uri())
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
    for start in range(0, len(batch), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=batch[start : start + 1000])


def summary_run(params: Any, arch_runs: Mapping[str, str], uri: str | None = None) -> str:
    """Create the report's run: named ``report @ <commit7>``, tagged with the architecture runs it summarises.

    Tags ``report.run.<arch>`` hold the run ids (the UI links them by search: ``tags.report.run.resnet50 = '…'``),
    so a report can always be traced to the trained models it describes. Returns the new run's id.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(EXPERIMENT, artifact_location=artifact_location(uri or tracking_uri()))
    )
    commit, dirty = git_state()
    source = params.data.source
    tags = {
        "mlflow.runName": f"report @ {commit[:7]}" + (" [synthetic]" if source == "synthetic" else ""),
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "dvc.stage": "report",
        "data.source": source,
        **{f"report.run.{arch}": run_id for arch, run_id in arch_runs.items()},
    }
    if source == "synthetic":
        tags["data.notice"] = SYNTHETIC_NOTICE
    run = client.create_run(experiment_id, tags=tags)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


COMPARE_METRICS = {
    "best_val/auroc": "val AUROC",
    "best_test/auroc": "test AUROC",
    "report/at_0.5/accuracy": "test acc",
    "report/at_0.5/recall": "test recall",
    "explain/gradcam/pointing": "Grad-CAM pointing",
    "explain/gradcam/deletion": "Grad-CAM deletion",
}


def recent_runs(experiment: str = EXPERIMENT, last: int = 20, uri: str | None = None):
    """The ``last`` most recent runs of ``experiment`` as a table: start, commit, run name, arch, source, key metrics.

    Works with any tracking store (the SQLite default or a server). An unknown experiment gives an empty table.
    """
    import pandas as pd
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame()
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=last)
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        row = {
            "started": pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
            "commit": tags.get("git.commit", "")[:7] + ("*" if tags.get("git.dirty") == "true" else ""),
            "run": tags.get("mlflow.runName", run.info.run_id[:8]),
            "arch": tags.get("arch", "-"),
            "source": tags.get("data.source", "-"),
        }
        row.update({label: metrics.get(key, float("nan")) for key, label in COMPARE_METRICS.items()})
        rows.append(row)
    return pd.DataFrame(rows)
