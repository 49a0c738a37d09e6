"""Everything MLflow: tracking URI, run names, tags, flattened params, artifacts, and run references.

The default store is an embedded SQLite file at the repository root (``sqlite:///mlflow.db``) with artifacts under
``mlartifacts/``, both outside every DVC output; ``MLFLOW_TRACKING_URI`` points everything at a tracking server
instead. An unreachable server fails fast, before any training.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from cxrexplain.errors import CxrError
from cxrexplain.io import write_json

log = logging.getLogger(__name__)

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


def run_name(arch: str, commit: str, source: str, *, seed: int | None = None) -> str:
    """``resnet50 s42 @ 1a2b3c4 [synthetic]`` (``s42``: the training seed): readable in the MLflow UI's run list."""
    suffix = " [synthetic]" if source == "synthetic" else ""
    seeded = "" if seed is None else f" s{seed}"
    return f"{arch}{seeded} @ {commit[:7]}{suffix}"


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


REPORT_DIGEST_TAG = "report.metrics_md5"  # a report run's tag: the MD5 of the reports/metrics.json it logged


def summary_run(
    params: Any,
    arch_runs: Mapping[str, Mapping[int, str]],
    uri: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """Create the report's run: named ``report @ <commit7>``, tagged with the training runs it summarises
    (``arch_runs``: arch → training seed → run id).

    Tags ``report.run.<arch>`` hold the primary seed's run ids and ``report.run.<arch>.seed<s>`` every seed's (the
    UI links them by search: ``tags.report.run.resnet50 = '…'``), so a report can always be traced to the trained
    models it describes; ``seeds`` lists the training seeds; ``extra`` tags are added (the report's
    :data:`REPORT_DIGEST_TAG`, which :func:`find_summary_run` looks for). Returns the new run's id.
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
        "seeds": ",".join(str(seed) for seed in params.seeds),
        **{f"report.run.{arch}": runs[params.seeds[0]] for arch, runs in arch_runs.items()},
        **{
            f"report.run.{arch}.seed{seed}": run_id for arch, runs in arch_runs.items() for seed, run_id in runs.items()
        },
        **(extra or {}),
    }
    if source == "synthetic":
        tags["data.notice"] = SYNTHETIC_NOTICE
    run = client.create_run(experiment_id, tags=tags)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def find_summary_run(arch_runs: Mapping[str, Mapping[int, str]], digest: str, uri: str | None = None) -> str | None:
    """The id of a report run (not deleted) that logged the report whose ``metrics.json`` has MD5 ``digest`` for
    exactly the training runs ``arch_runs`` (arch -> training seed -> run id), or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    clauses = ["tags.`dvc.stage` = 'report'", f"tags.`{REPORT_DIGEST_TAG}` = '{digest}'"]
    clauses += [
        f"tags.`report.run.{arch}.seed{seed}` = '{run_id}'"
        for arch, runs in arch_runs.items()
        for seed, run_id in runs.items()
    ]
    found = client.search_runs([experiment.experiment_id], " and ".join(clauses), max_results=1)
    return found[0].info.run_id if found else None


COMPARE_METRICS = {
    "best_val/auroc": "val AUROC",
    "best_test/auroc": "test AUROC",
    "report/at_0.5/accuracy": "test acc",
    "report/at_0.5/recall": "test recall",
    "explain/gradcam/pointing": "Grad-CAM pointing",
    "explain/gradcam/deletion": "Grad-CAM deletion",
}


def recent_runs(experiment: str = EXPERIMENT, last: int = 20, uri: str | None = None):
    """The ``last`` most recent runs of ``experiment`` as a table: start, commit, run name, arch, training seed,
    source, key metrics.

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
            "seed": tags.get("seed", "-"),
            "source": tags.get("data.source", "-"),
        }
        row.update({label: metrics.get(key, float("nan")) for key, label in COMPARE_METRICS.items()})
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# The trained model as an MLflow model, registered


MODEL_ARTIFACT = "model"  # the run's artifact folder holding the MLflow model (``runs:/<run>/model``)
CHAMPION = "champion"  # the alias of the registered version with the highest val AUROC
VAL_AUROC_TAG = "val_auroc"  # a model version's tag: the best epoch's val AUROC, what the champion is chosen by
INPUT_NAME = "image"  # the signature's input tensor
CHECKPOINT_FILE = "best.ckpt"  # the checkpoint inside the MLflow model's ``data/`` folder
MODEL_REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "requests")  # what the loader imports
RUN_TAGS_ON_VERSIONS = ("git.commit", "git.dirty", "data.source", "data.notice", "arch")


def registered_model(arch: str, source: str = "nih", negatives: str = "no_finding") -> str:
    """The registered model every training of ``arch`` on ``source`` data for the task ``negatives`` adds a version to:
    ``cxrexplain-<arch>`` (real NIH data, the study's task), with ``-synthetic`` on the synthetic mirror, ``-dicom`` on
    a cache from DICOM files, and ``-onevsrest`` for ``sample.negatives: all_others``. One registered model (and one
    ``champion``) per data source and task, so that a synthetic 0.999 val AUROC never outranks a real one, a model of
    other radiographs never one of NIH's, nor an easier task a harder one."""
    suffix = ("" if source == "nih" else f"-{source}") + ("-onevsrest" if negatives == "all_others" else "")
    return f"cxrexplain-{arch}{suffix}"


class PneumoniaProbability:
    """What ``mlflow.pyfunc.load_model("models:/cxrexplain-<arch>@champion")`` wraps: the probability of Pneumonia.

    ``predict`` takes a float32 batch of shape ``(N, 1, S, S)`` (one channel: the models are grayscale; ``S`` the
    training's ``train.image_size``) preprocessed as the evaluation transform does
    (:func:`cxrexplain.data.transforms.eval_transform`): the 8-bit grayscale image resized to ``S`` × ``S``, then
    ``(pixel / 255 - 0.449) / 0.226``. It returns a float32 array of shape ``(N,)``: ``sigmoid(logit)``, the network
    in eval mode on the CPU, in batches of :attr:`batch` images.
    """

    batch = 64

    def __init__(self, classifier: Any, image_size: int) -> None:
        self.classifier, self.image_size = classifier, image_size

    def predict(self, data: Any, params: Mapping[str, Any] | None = None) -> Any:
        import numpy as np
        import torch

        if isinstance(data, Mapping):  # MLflow passes a named tensor input as {name: array}
            data = data[INPUT_NAME]
        images = torch.as_tensor(np.ascontiguousarray(data, dtype=np.float32))
        with torch.no_grad():
            chunks = [
                torch.sigmoid(self.classifier(images[i : i + self.batch]).float())
                for i in range(0, len(images), self.batch)
            ]
        return (torch.cat(chunks) if chunks else torch.empty(0)).numpy()


def _load_pyfunc(data_path: str) -> PneumoniaProbability:
    """MLflow's loader (``loader_module: cxrexplain.tracking`` in the model's ``MLmodel``): the checkpoint in the
    model's ``data/`` folder, read weights-only into an empty network of its own arch
    (:func:`cxrexplain.models.checkpoint.load_classifier`): nothing of the model is unpickled."""
    from cxrexplain.models.checkpoint import load_classifier

    path = Path(data_path)
    classifier, hparams = load_classifier(path / CHECKPOINT_FILE if path.is_dir() else path, "cpu")
    return PneumoniaProbability(classifier, int(hparams["image_size"]))


def model_signature(image_size: int):  # -> mlflow.models.ModelSignature
    """Input ``image``: float32 ``(-1, 1, image_size, image_size)``; output ``probability``: float32 ``(-1,)``."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, image_size, image_size), INPUT_NAME)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,), "probability")]),
    )


def model_requirements() -> list[str]:
    """The pip requirements written with the model (never inferred: inferring loads the model in a subprocess):
    what :func:`_load_pyfunc` imports, pinned to this environment's versions (without a local ``+cpu`` label)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in MODEL_REQUIREMENTS]


def _package_code(folder: Path) -> Path:
    """A copy of the ``cxrexplain`` package's Python files under ``folder``: the model's ``code/`` (MLflow puts it
    first on ``sys.path`` when it loads the model in a new process, so a registered version runs the code it was
    trained with)."""
    import shutil

    source = Path(__file__).resolve().parent
    return Path(shutil.copytree(source, folder / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")))


def log_model(
    run_id: str, checkpoint: Path, *, val_auroc: float, uri: str | None = None, seed: int | None = None
) -> tuple[str, str, bool]:
    """Log ``checkpoint`` as an MLflow model into run ``run_id`` and register it; returns (name, version, champion).
    ``seed``: the training seed, for the resume command a failure names.

    The model (artifact ``model/`` of the run) is MLflow's pyfunc flavour with this module as its loader
    (:func:`_load_pyfunc`), the checkpoint as its data, the package as its code, :func:`model_signature` for the
    checkpoint's image size, one black image as input example and :func:`model_requirements`: no pickle, no
    inference of requirements. It is registered as a new version of :func:`registered_model` tagged with the run's
    commit and data source (:data:`RUN_TAGS_ON_VERSIONS`) and ``val_auroc``, a synthetic-data version saying so in
    its description. Then :func:`elect_champion` moves the alias ``champion``.

    Any failure of the store (an unreachable server, a refused request, a full disk) is a :class:`CxrError` naming
    the run and the registered model, and saying how to log it again: the caller has written the training's outputs
    before, and a resume of the finished training (``--resume``) trains nothing more and calls this again. A failure
    after the version was created (moving the alias) leaves that version registered; the retry adds another.
    """
    import tempfile

    import numpy as np
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from cxrexplain.models.checkpoint import read_checkpoint

    uri = uri or tracking_uri()
    hparams = read_checkpoint(checkpoint)["hyper_parameters"]
    arch, size = str(hparams["arch"]), int(hparams["image_size"])
    name = registered_model(arch)
    try:
        import mlflow.pyfunc

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        run = client.get_run(run_id)
        name = registered_model(
            arch, run.data.tags.get("data.source", "nih"), run.data.params.get("sample.negatives", "no_finding")
        )
        tags = {k: v for k, v in run.data.tags.items() if k in RUN_TAGS_ON_VERSIONS}
        tags[VAL_AUROC_TAG] = repr(float(val_auroc))
        with tempfile.TemporaryDirectory(prefix="cxrexplain-model-") as scratch:
            folder = Path(scratch) / MODEL_ARTIFACT
            mlflow.pyfunc.save_model(
                str(folder),
                loader_module=__name__,
                data_path=str(checkpoint),
                code_paths=[str(_package_code(Path(scratch) / "code"))],
                signature=model_signature(size),
                input_example=np.zeros((1, 1, size, size), np.float32),
                pip_requirements=model_requirements(),
            )
            client.log_artifacts(run_id, str(folder), MODEL_ARTIFACT)
        try:
            client.create_registered_model(
                name,
                description=f"cxrexplain's {arch}: P(Pneumonia) of a one-channel image batch. Alias {CHAMPION}: the "
                f"version with the highest val AUROC ({VAL_AUROC_TAG} tag).",
            )
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        description = (
            f"{arch} from run {run_id} (commit {tags.get('git.commit', 'unknown')[:7]}), "
            f"{tags.get('data.source', 'unknown')} data, val AUROC {float(val_auroc):.4f}. Input: float32 "
            f"(N, 1, {size}, {size}), grayscale, (pixel/255 - 0.449)/0.226; output: P(Pneumonia), shape (N,)."
        )
        if tags.get("data.source") == "synthetic":
            description = f"SYNTHETIC DATA ({SYNTHETIC_NOTICE}). {description}"
        version = client.create_model_version(
            name, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id, tags=tags, description=description
        ).version
        champion = elect_champion(name, uri=uri) == str(version)
    except (MlflowException, OSError, requests.RequestException) as error:
        first = (str(error).strip().splitlines() or [""])[0][:300]
        raise CxrError(
            f"MLflow run {run_id}: logging or registering the model {name} in {uri} failed "
            f"({type(error).__name__}: {first}); the training's outputs are all written: once the store works, "
            f"`cxrexplain train --arch {arch}{'' if seed is None else f' --seed {seed}'} --resume` logs the model "
            "without training again"
        ) from None
    log.info("%s version %s registered%s", name, version, f" (alias {CHAMPION})" if champion else "")
    return name, str(version), champion


def elect_champion(name: str, uri: str | None = None) -> str | None:
    """Point the alias ``champion`` of registered model ``name`` at its version with the highest ``val_auroc`` tag.

    A tie with the current champion keeps it; among other versions with equal scores the newest wins; a version
    without a finite ``val_auroc`` (NaN: one class in val) ranks below all others. Returns the champion's version
    (None when the model has no version).
    """
    import math

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or tracking_uri(), registry_uri=uri or tracking_uri())
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        return None

    def score(version: Any) -> float:
        try:
            value = float(version.tags.get(VAL_AUROC_TAG, "nan"))
        except ValueError:
            value = math.nan
        return value if math.isfinite(value) else -math.inf

    best = max(versions, key=lambda v: (score(v), int(v.version)))
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        current = None
    if current is not None and score(current) >= score(best):
        return str(current.version)
    client.set_registered_model_alias(name, CHAMPION, best.version)
    return str(best.version)


# ----------------------------------------------------------------------------------- report runs, for compare

REPORT_METRICS = "report/metrics.json"  # a report run's metrics.json, as the report stage logs it
PREDICTIONS = "train/predictions.csv"  # a training run's predictions (split, image, patient, label, probability)
PER_IMAGE = "explain/per_image.csv"  # its explain stage's per-image measures
REPORT_TABLES = "report/tables"  # in a report run: <arch>/predictions.csv, <arch>/per_image.csv it was made from
MIN_COMMIT_PREFIX = 4


def _report_facts(run) -> dict:
    """What compare says about a report run: id, commit, dirty flag, seeds, data source, name, every tag."""
    tags = run.data.tags
    return {
        "run_id": run.info.run_id,
        "commit": tags.get("git.commit", "unknown"),
        "dirty": tags.get("git.dirty") == "true",
        "seeds": tags.get("seeds", "?"),
        "source": tags.get("data.source", "?"),
        "name": tags.get("mlflow.runName", run.info.run_id),
        "tags": dict(tags),
    }


def _commit_of(ref: str) -> str:
    """A commit prefix to search for: ``ref`` itself when it is hexadecimal, else what git makes of it (``HEAD~1``,
    a branch or tag name) in the current repository."""
    if re.fullmatch(r"[0-9a-fA-F]+", ref):
        if len(ref) < MIN_COMMIT_PREFIX:
            raise CxrError(f"{ref!r}: give at least {MIN_COMMIT_PREFIX} characters of a commit, or a report run's id")
        return ref.lower()
    try:
        return subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise CxrError(
            f"{ref!r}: not a commit (hash or prefix, or a git revision here) nor a report run's id"
        ) from None


def report_run(ref: str | None = None, experiment: str = EXPERIMENT, uri: str | None = None) -> dict:
    """The report stage's summary run (:func:`summary_run`) that ``ref`` names, as ``{run_id, commit, dirty, seeds,
    source, name, tags}``.

    ``ref``: None, the most recent report run; a report run's id; or a commit: a hash or a prefix of at least
    :data:`MIN_COMMIT_PREFIX` characters (or a git revision such as ``HEAD~1``, resolved in the current repository),
    giving the most recent report run tagged with it. Nothing found, a prefix of several commits, a run that is not a
    report run, or an unreachable store: :class:`CxrError`. Works on the SQLite default and on a tracking server.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CxrError(f"no experiment {experiment!r} in the tracking store {uri}: no report run to compare")
    reports = "tags.`dvc.stage` = 'report'"
    newest = ["attributes.start_time DESC"]
    if ref is None:
        runs = client.search_runs([found.experiment_id], reports, order_by=newest, max_results=1)
        if not runs:
            raise CxrError(f"no report run in experiment {experiment!r} at {uri}; run the pipeline (dvc repro) first")
        return _report_facts(runs[0])
    if re.fullmatch(r"[0-9a-f]{32}", ref):  # MLflow's run ids
        try:
            run = client.get_run(ref)
        except MlflowException:
            run = None
        if run is not None:
            stage = run.data.tags.get("dvc.stage", "none")
            if stage != "report":
                raise CxrError(
                    f"run {ref} is a {stage} run, not a report run: give a report run's id or a commit "
                    "(the report stage's runs are named 'report @ <commit>')"
                )
            return _report_facts(run)
    commit = _commit_of(ref)
    runs = client.search_runs(
        [found.experiment_id], f"{reports} AND tags.`git.commit` LIKE '{commit}%'", order_by=newest, max_results=1000
    )
    if not runs:
        raise CxrError(f"{ref!r}: no report run of a commit {commit[:12]}… in experiment {experiment!r} at {uri}")
    commits = sorted({run.data.tags.get("git.commit", "") for run in runs})
    if len(commits) > 1:
        shown = ", ".join(c[:12] for c in commits[:5]) + (", …" if len(commits) > 5 else "")
        raise CxrError(f"{ref!r} is ambiguous: report runs of {len(commits)} commits start with it ({shown})")
    return _report_facts(runs[0])


def read_artifact(run_id: str, path: str, uri: str | None = None) -> bytes:
    """The bytes of one artifact of a run (downloaded into a temporary folder, removed after); a missing one is a
    :class:`CxrError` naming the run and the path."""
    import tempfile

    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file: no bar on stderr
    with tempfile.TemporaryDirectory(prefix="cxrexplain-artifact-") as folder:
        try:
            local = download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=folder, tracking_uri=uri or tracking_uri()
            )
            return Path(local).read_bytes()
        except (MlflowException, OSError) as error:
            raise CxrError(
                f"run {run_id} has no artifact {path} ({type(error).__name__}): was its stage logged to MLflow?"
            ) from None


def report_metrics(run: Mapping, uri: str | None = None) -> dict:
    """A report run's ``report/metrics.json`` (``run``: :func:`report_run`'s answer)."""
    data = read_artifact(run["run_id"], REPORT_METRICS, uri)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CxrError(f"run {run['run_id']}: {REPORT_METRICS} is not JSON") from None


def primary_tables(run: Mapping, arch: str, uri: str | None = None):
    """The primary seed's ``predictions.csv`` and ``per_image.csv`` of ``arch`` that a report run was made from, as
    two DataFrames: the copies the report run keeps (``report/tables/<arch>/``, :data:`REPORT_TABLES`); for a report
    run logged before it kept them, the training run's ``train/predictions.csv`` and ``explain/per_image.csv`` (its tag
    ``report.run.<arch>``), which a later explain stage may have overwritten: ``compare`` checks that the tables
    reproduce the report's recorded values (:func:`cxrexplain.evaluation.compare.check_tables`)."""
    import io

    import pandas as pd
    from mlflow.tracking import MlflowClient

    own = f"{REPORT_TABLES}/{arch}"
    kept = {
        Path(f.path).name for f in MlflowClient(tracking_uri=uri or tracking_uri()).list_artifacts(run["run_id"], own)
    }
    if {"predictions.csv", "per_image.csv"} <= kept:
        return tuple(
            pd.read_csv(io.BytesIO(read_artifact(run["run_id"], f"{own}/{name}", uri)))
            for name in ("predictions.csv", "per_image.csv")
        )
    train = run["tags"].get(f"report.run.{arch}")
    if not train:
        raise CxrError(
            f"report run {run['run_id']} has no tag report.run.{arch}: which training run it covers is unknown"
        )
    return tuple(pd.read_csv(io.BytesIO(read_artifact(train, path, uri))) for path in (PREDICTIONS, PER_IMAGE))
