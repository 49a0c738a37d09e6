"""Stage ``train@<arch>``: fit one backbone on the cache and split, tracked in MLflow.

Writes ``models/<arch>/``: ``best.ckpt`` (lowest val loss), ``last.ckpt`` (for resuming), ``predictions.csv`` (val and
test: image, label, probability), ``history.csv`` (per-epoch train/val metrics), ``mlflow_run.json`` (the run the later
stages log into); and ``metrics/train/<arch>.json`` for DVC. Under DDP every process runs this module; only global
rank 0 clears the folder, creates the MLflow run, predicts and writes.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from cxrexplain import tracking
from cxrexplain.config import ARCHS, Params
from cxrexplain.data.datamodule import Augment, CxrDataModule
from cxrexplain.errors import CxrError
from cxrexplain.evaluation.metrics import binary_metrics
from cxrexplain.io import write_csv, write_json
from cxrexplain.logs import route_library_logs
from cxrexplain.models.module import PneumoniaClassifier, load_checkpoint, read_checkpoint
from cxrexplain.workspace import Workspace

CACHE_DIR = Workspace().cache.dir  # the workspace's path
METRICS_DIR = Workspace().metrics  # the workspace's path
MODELS_DIR = Workspace().model("_").dir.parent  # the workspace's path
SPLIT_FILE = Workspace().split  # the workspace's path

log = logging.getLogger("cxrexplain.train")
route_library_logs()


class PortableCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose saved state names its files relative to the checkpoint directory.

    Lightning stores absolute paths (the directory, the best/last/k-th files) inside every checkpoint, so the same
    training in two clones gave checkpoints of different bytes (and DVC hashes). Here they are stored relative to the
    directory and resolved against it on resume, where Lightning's own "same directory" check then holds as before.
    (The ``models/<arch>`` folder's hash still differs between clones: its ``mlflow_run.json`` names each one's run.)
    """

    _PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")

    def state_dict(self) -> dict:
        state = super().state_dict()
        home = state["dirpath"]
        if not home:
            return state

        def rel(path: str) -> str:
            inside = path and os.path.isabs(path) and os.path.dirname(path) == home
            return os.path.relpath(path, home) if inside else path

        state.update({key: rel(state[key]) for key in self._PATHS})
        state["best_k_models"] = {rel(k): v for k, v in state["best_k_models"].items()}
        state["dirpath"] = "."
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        if state.get("dirpath") == "." and self.dirpath:

            def resolve(path: str) -> str:
                return os.path.join(self.dirpath, path) if path and not os.path.isabs(path) else path

            state.update({key: resolve(state.get(key, "")) for key in self._PATHS if key in state})
            state["best_k_models"] = {resolve(k): v for k, v in state.get("best_k_models", {}).items()}
            state["dirpath"] = self.dirpath
        super().load_state_dict(state)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on a CUDA GPU that supports it, 32-true otherwise (CPU, MPS, older GPUs)."""
    if precision != "auto":
        return precision
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def device_name(accelerator: str) -> str:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu ({torch.get_num_threads()} threads)"


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


def run(
    params: Params,
    arch: str,
    *,
    resume: bool = False,
    cache_dir: Path = CACHE_DIR,
    split_file: Path = SPLIT_FILE,
    models_dir: Path = MODELS_DIR,
    metrics_dir: Path = METRICS_DIR,
    num_workers: int | None = None,
    show_progress: bool = True,
) -> dict | None:
    """Train ``arch``; returns the metrics written to ``metrics/train/<arch>.json`` (None on ranks other than 0)."""
    if arch not in ARCHS:
        raise CxrError(f"train: unknown arch {arch!r} (available: {', '.join(ARCHS)})")
    t = params.train
    uri = tracking.tracking_uri()
    tracking.check_reachable(uri)
    out = Path(models_dir) / arch
    last = out / "last.ckpt"
    resuming = (resume or t.resume) and last.is_file()
    if resuming:
        read_checkpoint(last)  # refuses, naming the file, a checkpoint that needs pickled objects (or is truncated)
    if rank_zero_only.rank == 0 and not resuming:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    L.seed_everything(params.seed, workers=True)
    workers = params.workers if num_workers is None else num_workers
    dm = CxrDataModule(
        cache_dir,
        split_file,
        image_size=t.image_size,
        batch_size=t.batch_size,
        num_workers=workers,
        augment=Augment(**t.augment.model_dump()),
    )
    pos_weight = dm.pos_weight() if t.pos_weight == "auto" else t.pos_weight
    precision = resolve_precision(t.precision, t.accelerator)
    on_gpu = t.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    module = PneumoniaClassifier(
        arch,
        pretrained=params.model.pretrained,
        dropout=params.model.dropout,
        lr=t.lr,
        pos_weight=pos_weight,
        channels_last=on_gpu,
        image_size=t.image_size,
    )
    if on_gpu:
        module = module.to(memory_format=torch.channels_last)

    ref_path = out / tracking.RUN_REF
    previous_run = tracking.read_run_ref(ref_path)["run_id"] if resuming and ref_path.is_file() else None
    commit, _ = tracking.git_state()
    logger = MLFlowLogger(
        experiment_name=tracking.EXPERIMENT,
        run_name=tracking.run_name(arch, commit, params.data.source),
        tracking_uri=uri,
        tags=tracking.run_tags(
            stage=f"train@{arch}", arch=arch, source=params.data.source, device=device_name(t.accelerator)
        ),
        artifact_location=tracking.artifact_location(uri),
        run_id=previous_run,
    )
    # the directory already holds mlflow_run.json (written before fit, so that a killed run resumes the same MLflow
    # run) or, when resuming, last.ckpt: both expected, so Lightning's "exists and is not empty" warning is noise
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    checkpoint = PortableCheckpoint(
        dirpath=out,
        filename="best",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=precision,
        max_epochs=t.max_epochs,
        deterministic=t.deterministic,
        logger=logger,
        callbacks=[checkpoint, EarlyStopping(monitor="val/loss", mode="min", patience=t.patience)],
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=show_progress,
        enable_model_summary=False,
    )
    if trainer.is_global_zero:
        logger.log_hyperparams({**tracking.flatten(params.model_dump(mode="json")), "arch": arch})
        tracking.write_run_ref(ref_path, logger.run_id, uri, logger.experiment_id)
        if resuming:
            log.info("resuming %s from %s", arch, last)
    # explicit weights_only: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD overrides only an unset one
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resuming else None, weights_only=True)
    if not trainer.is_global_zero:
        return None
    return _finish(params, arch, trainer, checkpoint, dm, out, Path(metrics_dir), logger, uri)


def _finish(
    params: Params,
    arch: str,
    trainer: L.Trainer,
    checkpoint: ModelCheckpoint,
    dm: CxrDataModule,
    out: Path,
    metrics_dir: Path,
    logger: MLFlowLogger,
    uri: str,
) -> dict:
    best_path = Path(checkpoint.best_model_path)
    if not best_path.is_file():
        raise CxrError(f"train@{arch}: no best checkpoint was written in {out}")
    best = load_checkpoint(best_path, "cpu")
    device = torch.device("cpu")
    frames = []
    for split in ("val", "test"):
        loader = DataLoader(dm.dataset(split), batch_size=params.train.batch_size, num_workers=0)
        frame = predict(best.model.to(device), loader, device)
        frame.insert(0, "split", split)
        frames.append(frame)
    table = dm.table.set_index("row")
    predictions = pd.concat(frames, ignore_index=True)
    predictions.insert(1, "image", table.loc[predictions["row"], "image"].to_numpy())
    predictions.insert(2, "patient", table.loc[predictions["row"], "patient"].to_numpy())  # intervals resample patients
    predictions = predictions.drop(columns="row")
    write_csv(out / "predictions.csv", predictions)
    history = pd.DataFrame(trainer.lightning_module.history)
    write_csv(out / "history.csv", history)

    scores = {
        split: binary_metrics(part["label"].to_numpy(), part["probability"].to_numpy())
        for split, part in predictions.groupby("split")
    }
    metrics = {
        "arch": arch,
        "source": params.data.source,
        "epochs": int(trainer.current_epoch),
        "best_epoch": int(read_checkpoint(best_path)["epoch"]),
        "best_val_loss": float(checkpoint.best_model_score),
        "val": scores["val"],
        "test": scores["test"],
    }
    write_json(metrics_dir / "train" / f"{arch}.json", metrics)
    client_metrics = {f"best_{split}/{k}": v for split in ("val", "test") for k, v in scores[split].items()}
    logger.log_metrics(client_metrics)
    tracking.log_artifacts(
        logger.run_id,
        [best_path, out / "predictions.csv", out / "history.csv", metrics_dir / "train" / f"{arch}.json"],
        "train",
        uri=uri,
    )
    log.info(
        "%s: %d epochs, best val loss %.4f at epoch %d; val AUROC %.3f, test AUROC %.3f (MLflow run %s)",
        arch,
        metrics["epochs"],
        metrics["best_val_loss"],
        metrics["best_epoch"],
        scores["val"]["auroc"],
        scores["test"]["auroc"],
        logger.run_id,
    )
    return metrics
