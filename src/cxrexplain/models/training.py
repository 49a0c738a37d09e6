"""Training one backbone: checks before anything is written, a fit that resumes exactly, and its best epoch's results.

:func:`prepare` validates everything a training needs (the tracking store, the params of an interrupted run against
the current ones, the cache and split, the accelerator and devices) and builds the pieces, writing nothing;
:func:`fit` then empties the output folder (a fresh training) or keeps it (a resume), trains, and returns the
predictions, the history and the metrics of the best epoch, which :func:`save` writes and logs.

Resume guarantees (tested in ``tests/stages/test_train_stage.py`` on a CPU): a training killed at any point and
resumed from ``last.ckpt`` ends with the same weights (bitwise, on the same machine and software), the same
``history.csv`` and the same metrics as an uninterrupted one. What makes it so:

- ``last.ckpt`` is written after *every* epoch, after validation, the module's epoch-end hook (its ``history`` row)
  and early stopping (its counters), all of which the checkpoint holds (:class:`EpochCheckpoint`);
- every random draw of an epoch is a function of (seed, epoch): the process RNGs are re-seeded before each epoch
  (:class:`EpochSeeds`), which fixes the shuffling, dropout and loader workers' seeds, and an image's augmentation is
  seeded by (seed, epoch, row) (:mod:`cxrexplain.data.datamodule`), so it does not depend on the workers either;
- the run's params are stored in the checkpoint, and a resume with other model params is refused, naming them;
  run-control settings (:data:`RUN_CONTROL`) change nothing learnt, and are neither compared nor logged;
- MLflow: the resumed run continues the same MLflow run; a metric the killed run had already logged at a step (after
  its last checkpoint) is not logged again (:class:`ContinuedMLFlowLogger`: the value would be the same), so every
  metric has one value per step.

Checkpoints are written beside their final name and renamed (:class:`SiblingCheckpointIO`): never copied into an
existing file, which may be a hard link into DVC's cache.
"""

from __future__ import annotations

import contextlib
import platform
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from cxrexplain import tracking
from cxrexplain.config import Params, TrainParams, require_arch
from cxrexplain.data.datamodule import CxrDataModule, epoch_seed
from cxrexplain.errors import CxrError
from cxrexplain.evaluation.metrics import binary_metrics
from cxrexplain.io import PART_SUFFIX, atomic_file, write_csv, write_json
from cxrexplain.models.module import PneumoniaClassifier, module_from_checkpoint, read_checkpoint
from cxrexplain.workspace import CacheFiles, ModelFiles, stage_name

# How a run executes, not what it learns: never MLflow params, never compared when resuming (``progress`` is a CLI
# flag, not a param). ``workers`` changes no number: augmentations do not depend on the worker that draws them.
RUN_CONTROL = ("train.resume", "workers")

PARAMS_KEY = "cxrexplain_params"  # in every last.ckpt: the params recorded with its run (those of run_params)
MONITOR = "val/loss"


def run_params(params: Params, arch: str, seed: int) -> dict[str, str]:
    """The run's MLflow params, flattened (``train.lr``): every param but :data:`RUN_CONTROL` and the list of seeds,
    the arch, and the run's training seed as ``train.seed``."""
    flat = tracking.flatten({k: v for k, v in params.model_dump(mode="json").items() if k != "seeds"})
    return {**{k: v for k, v in flat.items() if k not in RUN_CONTROL}, "arch": arch, "train.seed": str(seed)}


def check_resumable(last: Path, expected: Mapping[str, str], stage: str) -> None:
    """``last`` is a safe checkpoint of a run with the params ``expected``; else a CxrError naming the keys."""
    recorded = read_checkpoint(last).get(PARAMS_KEY)  # refuses, naming the file, an unsafe or truncated checkpoint
    if not isinstance(recorded, dict):
        raise CxrError(
            f"{stage}: {last} records no params (written by an older version), so resuming it could mix two "
            "configurations; train afresh (without --resume and train.resume)"
        )
    differ = sorted(k for k in recorded.keys() | expected.keys() if recorded.get(k) != expected.get(k))
    if differ:
        shown = "; ".join(f"{k}: {recorded.get(k, '(absent)')} -> {expected.get(k, '(absent)')}" for k in differ)
        raise CxrError(
            f"{stage}: cannot resume from {last}: params differ from those of its run ({shown}); restore them, "
            "or train afresh (without --resume and train.resume)"
        )


def on_gpu(accelerator: str) -> bool:
    """Whether ``train.accelerator`` puts the training on a CUDA GPU on this machine (``auto`` does when one is)."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on a CUDA GPU that supports it, 32-true otherwise (CPU, MPS, older GPUs)."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if on_gpu(accelerator) and torch.cuda.is_bf16_supported() else "32-true"


def device_name(accelerator: str) -> str:
    """``cuda:<name> x<count>`` or ``cpu (<threads> threads)``: the ``device`` tag of a run."""
    if on_gpu(accelerator):
        return f"cuda:{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu ({torch.get_num_threads()} threads)"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``model name`` in Linux's ``/proc/cpuinfo``; elsewhere :func:`platform.processor`, or
    the architecture when that is empty): CPU kinds round differently, so a training's numbers belong to it."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment(train: TrainParams) -> dict[str, Any]:
    """What a training's exact numbers depend on besides its params and data, as its metrics record it: the machine
    (the GPU's name and count, or the CPU model and torch's threads), the torch version, the precision actually used
    and the deterministic switch. Two trainings with the same params, seed and environment give the same weights bit
    for bit (tested on this repository's CPU machine, ``tests/stages/test_train_stage.py``); across CPU kinds or GPUs
    they do not (README: Reproducibility)."""
    gpu = on_gpu(train.accelerator)
    return {
        "machine": device_name(train.accelerator) if gpu else f"{cpu_model()} ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "precision": resolve_precision(train.precision, train.accelerator),
        "deterministic": bool(train.deterministic),
    }


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> pd.DataFrame:
    """Probabilities of Pneumonia for every image of ``loader`` (rows of the cache, labels), in eval mode."""
    was_training = model.training
    model.eval()
    rows, labels, probs = [], [], []
    for batch in loader:
        probs.append(torch.sigmoid(model(batch["image"].to(device)).float()).cpu())
        rows.append(batch["row"])
        labels.append(batch["label"])
    model.train(was_training)
    return pd.DataFrame(
        {"row": torch.cat(rows).numpy(), "label": torch.cat(labels).numpy(), "probability": torch.cat(probs).numpy()}
    )


class SiblingCheckpointIO(TorchCheckpointIO):
    """Saves a checkpoint to a unique ``.<name>.<random>.part`` beside ``path`` and renames it onto ``path``.

    Lightning's own save writes a temporary file in ``$TMPDIR`` and moves it: across file systems the move copies
    *into* the existing file, which DVC may have hard-linked into its cache. A rename gives ``path`` a new inode and
    leaves any other link to the old one untouched; a kill mid-save leaves the old checkpoint whole.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        # through a file object: torch names the archive's root folder after a path's file name (random here)
        with atomic_file(path) as part, open(part, "wb") as file:
            torch.save(checkpoint, file)


class EpochCheckpoint(Checkpoint):
    """``last`` after every training epoch (after validation), ``best`` when ``val/loss`` improves strictly.

    ``last`` holds the full training state (a resume reads it); ``best`` the weights, hyperparameters, epoch and history
    (Lightning's ``weights_only`` save: no optimizer state, no callbacks, so no recorded params), about a third of
    ``last``'s size for Adam.

    Lightning runs checkpoint callbacks' epoch-end hooks after the module's and after early stopping's, so the saved
    state holds the epoch's history row and the early-stopping counters. The files are named by the caller and no
    path is stored inside (the same training gives the same bytes in any folder); ``last`` records the run's
    params (:data:`PARAMS_KEY`), and whether early stopping had ended the training (a resume then does not go on).
    """

    def __init__(self, best: Path, last: Path, params: Mapping[str, str]) -> None:
        self.best_path, self.last_path, self.params = Path(best), Path(last), dict(params)
        self.best_score = float("inf")  # NaN never improves on it
        self.best_epoch = -1
        self.stopped = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if MONITOR not in trainer.callback_metrics:
            raise CxrError(f"training logged no {MONITOR}: is the validation split empty?")
        score = float(trainer.callback_metrics[MONITOR])
        self.stopped = bool(trainer.should_stop)
        if score < self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            # the weights, hyperparameters and history only: a third of the full state's bytes (Adam keeps two
            # moments per weight), what explain, the DVC cache and MLflow need
            trainer.save_checkpoint(self.best_path, weights_only=True)
        # the full state (weights, optimizer, loops, callbacks: what a resume needs), said explicitly; it is the
        # *loading* that is weights-only (read_checkpoint), whatever a checkpoint holds
        trainer.save_checkpoint(self.last_path, weights_only=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped:  # resumed after early stopping had ended it: nothing more to train
            trainer.should_stop = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[PARAMS_KEY] = dict(self.params)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "stopped": self.stopped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = float(state_dict["best_score"])
        self.best_epoch = int(state_dict["best_epoch"])
        self.stopped = bool(state_dict["stopped"])


class EpochSeeds(Callback):
    """Before each training epoch: python's, numpy's and torch's RNGs (CPU and CUDA) seeded from (seed, epoch), and the
    training dataset told its epoch. An epoch's shuffling, dropout and worker seeds then depend on nothing that ran
    before it, so an epoch run after a resume draws what it drew in an uninterrupted run."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = epoch_seed(self.seed, trainer.current_epoch, 1)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # every CUDA device too
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(trainer.current_epoch)


class ContinuedMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger that, continuing a run, skips a metric the run already has at that step.

    A killed run may have logged an epoch after its last checkpoint; the resumed run redoes that epoch exactly, so
    the value is the same, and MLflow (which appends) would otherwise show it twice at one step.
    """

    def __init__(self, *args: Any, continuing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._logged: set[tuple[str, int]] | None = None if continuing else set()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._logged is None:
            client, run_id = self.experiment, self.run_id
            keys = client.get_run(run_id).data.metrics
            self._logged = {(m.key, m.step) for key in keys for m in client.get_metric_history(run_id, key)}
        fresh = {k: v for k, v in metrics.items() if (k, step or 0) not in self._logged}
        if fresh:
            super().log_metrics(fresh, step)


@dataclass
class Training:
    """A training checked and built by :func:`prepare`: nothing written yet."""

    params: Params
    arch: str
    seed: int  # the training seed
    files: ModelFiles
    resuming: bool
    recorded: dict[str, str]
    datamodule: CxrDataModule
    module: PneumoniaClassifier
    trainer: L.Trainer
    logger: ContinuedMLFlowLogger
    checkpoint: EpochCheckpoint
    uri: str
    datasets: dict[str, Path]  # what the run is trained on, logged as its MLflow dataset inputs


@dataclass(frozen=True)
class Result:
    """What :func:`fit` gives rank 0 to write: ``metrics/train/<arch>.json``, the predictions, the history."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame  # split, image, patient, label, probability (val and test)
    history: pd.DataFrame  # one row per epoch: train and val loss and metrics
    run_id: str
    uri: str

    def summary(self) -> str:
        """One line for the log: epochs, the best epoch's val loss, val and test AUROC, the MLflow run."""
        m = self.metrics
        return (
            f"{m['arch']}: {m['epochs']} epochs, best val loss {m['best_val_loss']:.4f} at epoch {m['best_epoch']}; "
            f"val AUROC {m['val']['auroc']:.3f}, test AUROC {m['test']['auroc']:.3f} (MLflow run {self.run_id})"
        )


def prepare(
    params: Params,
    arch: str,
    cache: CacheFiles,
    split_file: Path,
    files: ModelFiles,
    *,
    seed: int,
    resume: bool,
    workers: int,
    progress: bool,
) -> Training:
    """Check everything a training of ``arch`` with the training seed ``seed`` needs and build it, before any output
    is touched. ``seed`` fixes the initial weights (unless pretrained), the shuffling, dropout and augmentations.

    ``resume``: continue from ``files.last`` if it exists (its params must equal the current ones, but for
    :data:`RUN_CONTROL`). Raises a :class:`CxrError` for an unknown arch, an unsupported or unreachable tracking store,
    an interrupted run's params that differ, its MLflow run missing from the store, an unreadable cache or split, an
    empty split, or an accelerator / device count this machine does not have.
    """
    require_arch(arch, "train")
    t = params.train
    uri = tracking.tracking_uri()
    tracking.check_reachable(uri)
    recorded = run_params(params, arch, seed)
    resuming = resume and files.last.is_file()
    previous_run = None
    if resuming:
        check_resumable(files.last, recorded, stage_name("train", arch, seed))
        previous_run = tracking.require_run(files.run_ref)["run_id"] if files.run_ref.is_file() else None
    dm = CxrDataModule(
        cache.dir,
        split_file,
        image_size=t.image_size,
        batch_size=t.batch_size,
        num_workers=workers,
        augment=t.augment,
        seed=seed,
    )
    for split in ("train", "val", "test"):
        dm.dataset(split)  # reads the cache and the split; an empty split is an error naming the file
    pos_weight = dm.pos_weight() if t.pos_weight == "auto" else t.pos_weight
    gpu = on_gpu(t.accelerator)
    L.seed_everything(seed, workers=True, verbose=False)  # the initial weights (a resume then loads its own)
    module = PneumoniaClassifier(
        arch,
        pretrained=params.model.pretrained,
        dropout=params.model.dropout,
        lr=t.lr,
        pos_weight=pos_weight,
        channels_last=gpu,
        image_size=t.image_size,
    )
    if gpu:
        module = module.to(memory_format=torch.channels_last)
    commit, _ = tracking.git_state()
    logger = ContinuedMLFlowLogger(
        experiment_name=tracking.EXPERIMENT,
        run_name=tracking.run_name(arch, commit, params.data.source, seed=seed),
        tracking_uri=uri,
        tags=tracking.run_tags(
            stage=stage_name("train", arch, seed),
            arch=arch,
            source=params.data.source,
            device=device_name(t.accelerator),
            extra={"seed": str(seed), "seed.primary": str(seed == params.primary_seed).lower()},
        ),
        artifact_location=tracking.artifact_location(uri),
        run_id=previous_run,
        continuing=previous_run is not None,
    )
    checkpoint = EpochCheckpoint(files.best, files.last, recorded)
    try:
        trainer = L.Trainer(
            accelerator=t.accelerator,
            devices=t.devices,
            strategy=t.strategy,
            num_nodes=t.num_nodes,
            precision=resolve_precision(t.precision, t.accelerator),
            max_epochs=t.max_epochs,
            deterministic=t.deterministic,
            logger=logger,
            callbacks=[
                EpochSeeds(seed),
                EarlyStopping(monitor=MONITOR, mode="min", patience=t.patience),
                checkpoint,
            ],
            plugins=[SiblingCheckpointIO()],
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            enable_progress_bar=progress,
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        first = (str(error).strip().splitlines() or [""])[0][:300]
        raise CxrError(
            f"{stage_name('train', arch, seed)}: train.accelerator={t.accelerator!r}, train.devices={t.devices!r}, "
            f"train.strategy={t.strategy!r}: not available on this machine ({first})"
        ) from None
    datasets = {"cohort": cache.index, "split": split_file}
    return Training(
        params, arch, seed, files, resuming, recorded, dm, module, trainer, logger, checkpoint, uri, datasets
    )


def fit(training: Training) -> Result | None:
    """Train (from ``last.ckpt`` when resuming); rank 0 gets the best epoch's :class:`Result`, other ranks None.

    Global rank 0 first empties ``training.files`` (a fresh training) or removes the partial saves of a killed one (a
    resume), then writes the run reference (``mlflow_run.json``, before the fit, so that a killed run is continued by
    its resume); the fit writes the checkpoints. :func:`save` writes the rest.
    """
    trainer, logger, files = training.trainer, training.logger, training.files
    if trainer.is_global_zero:
        if training.resuming:
            for stale in files.dir.glob(f".*{PART_SUFFIX}"):  # a save cut short by the kill
                stale.unlink(missing_ok=True)
        else:
            shutil.rmtree(files.dir, ignore_errors=True)
        files.dir.mkdir(parents=True, exist_ok=True)
        logger.log_hyperparams(training.recorded)
        tracking.write_run_ref(files.run_ref, logger.run_id, training.uri, logger.experiment_id)
        if not training.resuming:  # a resumed run has them already
            tracking.log_datasets(
                logger.run_id,
                training.datasets,
                source=training.params.data.source,
                context="training",
                uri=training.uri,
            )
    # explicit weights_only: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD overrides only an unset one
    ckpt_path = str(files.last) if training.resuming else None
    with (
        tracking.system_metrics(logger.run_id, training.uri, resume=training.resuming)
        if trainer.is_global_zero  # one monitor per machine's run, not one per DDP process
        else contextlib.nullcontext()
    ):
        trainer.fit(training.module, datamodule=training.datamodule, ckpt_path=ckpt_path, weights_only=True)
    if not trainer.is_global_zero:
        return None
    return _best_epoch(training)


def save(result: Result, files: ModelFiles, metrics_file: Path, *, register: bool = True) -> None:
    """Write ``result`` (predictions, history into ``files``; the metrics into ``metrics_file``, each atomically) and
    log them with the best checkpoint to the run, under ``train/``; then, with ``register``, log the best checkpoint as
    an MLflow model and register it (:func:`cxrexplain.tracking.log_model`), last: if that fails (a CxrError), every
    output is written, and a resume (``--resume``) logs the model without training again. The leakage audit's model
    is not registered (``register=False``): trained on a leaky split, its val AUROC must never elect it champion."""
    write_csv(files.predictions, result.predictions)
    write_csv(files.history, result.history)
    write_json(metrics_file, result.metrics)
    tracking.log_artifacts(
        result.run_id, [files.best, files.predictions, files.history, metrics_file], "train", uri=result.uri
    )
    if register:
        val_auroc, seed = result.metrics["val"]["auroc"], result.metrics["seed"]
        tracking.log_model(result.run_id, files.best, val_auroc=val_auroc, uri=result.uri, seed=seed)


def _best_epoch(training: Training) -> Result:
    """Predictions (val, test) of the best checkpoint, read once, and the metrics of the training."""
    arch, files, dm = training.arch, training.files, training.datamodule
    if not files.best.is_file():
        raise CxrError(f"{stage_name('train', arch, training.seed)}: no best checkpoint was written in {files.dir}")
    checkpoint = read_checkpoint(files.best)
    best = module_from_checkpoint(checkpoint, files.best)
    frames = []
    for split in ("val", "test"):
        loader = DataLoader(dm.dataset(split), batch_size=training.params.train.batch_size, num_workers=0)
        frame = predict(best.model, loader, torch.device("cpu"))
        frame.insert(0, "split", split)
        frames.append(frame)
    table = dm.table.set_index("row")
    predictions = pd.concat(frames, ignore_index=True)
    predictions.insert(1, "image", table.loc[predictions["row"], "image"].to_numpy())
    predictions.insert(2, "patient", table.loc[predictions["row"], "patient"].to_numpy())  # intervals resample patients
    predictions = predictions.drop(columns="row")
    scores = {
        split: binary_metrics(part["label"].to_numpy(), part["probability"].to_numpy())
        for split, part in predictions.groupby("split")
    }
    metrics = {
        "arch": arch,
        "seed": training.seed,
        "source": training.params.data.source,
        "epochs": int(training.trainer.current_epoch),
        "best_epoch": int(checkpoint["epoch"]),
        "best_val_loss": training.checkpoint.best_score,
        "val": scores["val"],
        "test": scores["test"],
        "environment": environment(training.params.train),
    }
    training.logger.log_metrics({f"best_{s}/{k}": v for s in ("val", "test") for k, v in scores[s].items()})
    history = pd.DataFrame(training.trainer.lightning_module.history)
    return Result(metrics, predictions, history, training.logger.run_id, training.uri)
