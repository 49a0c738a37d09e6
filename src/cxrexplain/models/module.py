"""The LightningModule: BCE with logits on one logit, Adam, and torchmetrics for train / val / test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)

from cxrexplain.errors import CxrError
from cxrexplain.models.backbones import build_classifier
from cxrexplain.models.checkpoint import read_checkpoint, weights_of

# Metric names are the same in every run and commit, so MLflow and `dvc metrics diff` can compare them.
METRIC_NAMES = ("auroc", "accuracy", "precision", "recall", "specificity", "f1")


def classification_metrics(prefix: str) -> MetricCollection:
    """AUROC, accuracy, precision, recall (sensitivity), specificity and F1 at threshold 0.5, named ``<prefix>/<m>``."""
    return MetricCollection(
        {
            "auroc": BinaryAUROC(),
            "accuracy": BinaryAccuracy(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "specificity": BinarySpecificity(),
            "f1": BinaryF1Score(),
        },
        prefix=f"{prefix}/",
    )


class PneumoniaClassifier(L.LightningModule):
    """Pneumonia (1) vs No Finding (0) from one-channel images; ``self.model`` is a :class:`Classifier`."""

    def __init__(
        self,
        arch: str,
        pretrained: str = "none",
        dropout: float = 0.5,
        lr: float = 1e-4,
        pos_weight: float | None = None,
        channels_last: bool = False,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.channels_last = channels_last
        self.history: list[dict[str, float]] = []  # one row per epoch: train and val loss and metrics
        self.model = build_classifier(arch, pretrained=pretrained, dropout=dropout, image_size=image_size)
        weight = torch.tensor([pos_weight]) if pos_weight is not None else None
        self.loss = nn.BCEWithLogitsLoss(pos_weight=weight)
        self.train_metrics = classification_metrics("train")
        self.val_metrics = classification_metrics("val")
        self.test_metrics = classification_metrics("test")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _step(self, batch: dict[str, torch.Tensor], stage: str, metrics: MetricCollection) -> torch.Tensor:
        logits = self(batch["image"])
        target = batch["label"]
        loss = self.loss(logits, target.float())
        metrics.update(torch.sigmoid(logits.detach().float()), target.int())
        self.log(
            f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(target)
        )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train", self.train_metrics)
        if not torch.isfinite(loss.detach()).item():  # one sync per step: a diverged run stops at once, named
            raise CxrError(
                f"training {self.hparams.arch}: loss is {loss.item()} at epoch {self.current_epoch} step {batch_idx}; "
                f"the training diverged: lower train.lr (now {self.hparams.lr:g}), or check the cached images"
            )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test", self.test_metrics)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {
            "row": batch["row"],
            "label": batch["label"],
            "probability": torch.sigmoid(self(batch["image"]).float()),
        }

    def _log_epoch(self, metrics: MetricCollection) -> None:
        self.log_dict(metrics.compute())  # torchmetrics already reduced across processes
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch(self.train_metrics)
        if not self.trainer.sanity_checking:
            row = {"epoch": float(self.current_epoch)}
            row.update({k: float(v) for k, v in sorted(self.trainer.callback_metrics.items()) if "/" in k})
            self.history.append(row)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("history", []))

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.test_metrics)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> PneumoniaClassifier:
    """A training checkpoint's module, in eval mode on ``device``, built without any download.

    The architecture is built empty (``pretrained="none"``) from the checkpoint's hyper-parameters and then given the
    checkpoint's own weights (strictly), so neither ImageNet weights nor the ``model.pretrained`` file it was trained
    from are needed. ``hparams`` keep the checkpoint's values (``pretrained`` included). A truncated, foreign or unsafe
    file is a :class:`CxrError` naming it.
    """
    return module_from_checkpoint(read_checkpoint(path, map_location="cpu"), path).to(device)


def module_from_checkpoint(checkpoint: dict[str, Any], path: Path | str) -> PneumoniaClassifier:
    """:func:`load_checkpoint` for contents already read with :func:`read_checkpoint` (``path`` names it in errors);
    in eval mode, on the CPU."""
    hparams = dict(checkpoint["hyper_parameters"])
    with weights_of(path):
        module = PneumoniaClassifier(**{**hparams, "pretrained": "none"})
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    module.hparams.update(hparams)  # e.g. pretrained: imagenet, as trained
    module.on_load_checkpoint(checkpoint)
    return module.eval()
