"""A model trained on permuted labels: the second half of Adebayo et al. 2018's sanity checks (data randomisation).

If a method's maps of a model trained on the real labels look like its maps of the same architecture trained on
randomly permuted labels, the maps do not explain what the model learned from the labels. The permuted-label model
starts from the same initialisation as the real one (``model.pretrained``), sees the same training images with
their labels shuffled (a seeded permutation over the training split), without augmentation, for
``explain.sanity.data_epochs`` epochs, and is never saved: the explain stage compares its maps and reports the
accuracy it reached on its own (permuted) training labels, since a short training may not have memorised them as
Adebayo et al.'s did.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrexplain.config import AugmentParams, Params
from cxrexplain.data.datamodule import CxrDataModule
from cxrexplain.models.backbones import Classifier
from cxrexplain.models.module import PneumoniaClassifier

NO_AUGMENTATION = AugmentParams(rotate_deg=0.0, zoom=0.0, hflip=0.0, contrast=0.0, brightness=0.0)


def train_on_permuted_labels(
    params: Params, arch: str, cache_dir: Path, split_file: Path, device: torch.device, *, seed: int
) -> tuple[Classifier, float]:
    """``arch`` trained on the training split with permuted labels, from the initialisation of the real model trained
    with the training seed ``seed`` (which also draws the permutation); returns (model in eval mode on ``device``, its
    accuracy on the permuted training labels)."""
    t = params.train
    dm = CxrDataModule(
        cache_dir,
        split_file,
        image_size=t.image_size,
        batch_size=t.batch_size,
        num_workers=0,
        augment=NO_AUGMENTATION,
        permute_train_labels=seed,
    )
    L.seed_everything(seed, workers=True, verbose=False)
    module = PneumoniaClassifier(
        arch, pretrained=params.model.pretrained, dropout=params.model.dropout, lr=t.lr, image_size=t.image_size
    )
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=params.explain.sanity.data_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=t.deterministic,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    model = module.model.to(device).eval()
    train = dm.dataset("train")
    correct = 0
    with torch.no_grad():
        for batch in DataLoader(train, batch_size=t.batch_size):
            predicted = (model(batch["image"].to(device)).reshape(-1) > 0).long().cpu()
            correct += int((predicted == batch["label"]).sum())
    return model, float(correct / max(len(train), 1)) if len(train) else float(np.nan)
