"""The datamodule's transforms and the LightningModule's training step, on a tiny on-disk dataset."""

import lightning as L
import numpy as np
import pytest
import torch

from cxrexplain.config import AugmentParams
from cxrexplain.data.datamodule import CxrDataModule, eval_transform, read_split, train_transform
from cxrexplain.errors import CxrError
from cxrexplain.models.backbones import GRAY_MEAN, GRAY_STD
from cxrexplain.models.module import METRIC_NAMES, PneumoniaClassifier
from tinydata import write_tiny_dataset


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_dataset(tmp_path)


def test_eval_transform_resizes_and_normalises_deterministically():
    image = np.full((32, 32), 128, np.uint8)
    out = eval_transform(48)(image=image)["image"]
    assert out.shape == (48, 48)
    assert np.allclose(out, (128 / 255 - GRAY_MEAN) / GRAY_STD, atol=1e-5)


def test_train_transform_augments_and_zero_switches_it_off():
    image = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    augmented = [train_transform(32, AugmentParams())(image=image)["image"] for _ in range(4)]
    assert any(not np.allclose(augmented[0], a) for a in augmented[1:])
    names = [type(t).__name__ for t in train_transform(32, AugmentParams()).transforms]
    assert names == ["Resize", "Affine", "HorizontalFlip", "RandomBrightnessContrast", "Normalize"]
    off = train_transform(32, AugmentParams(rotate_deg=0.0, zoom=0.0, hflip=0.0, contrast=0.0, brightness=0.0))
    assert [type(t).__name__ for t in off.transforms] == ["Resize", "Normalize"]
    assert np.allclose(off(image=image)["image"], eval_transform(32)(image=image)["image"])


def test_datamodule_batches_and_pos_weight(tiny):
    cache, split = tiny
    dm = CxrDataModule(cache, split, image_size=32, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert set(batch["label"].tolist()) <= {0, 1}
    assert len(dm.dataset("val")) == 12 and len(dm.dataset("test")) == 12
    assert dm.pos_weight() == 1.0


def test_split_rows_must_exist_in_the_cache(tiny, tmp_path):
    cache, split = tiny
    bad = tmp_path / "bad.csv"
    bad.write_text(split.read_text() + "99999999_000.png,99999999,1,train\n")
    from cxrexplain.data.sample import load_cache

    with pytest.raises(CxrError, match="1 image\\(s\\) are not in the cache"):
        read_split(bad, load_cache(cache)[1])


def test_fast_dev_run_logs_the_same_metric_names(tiny):
    cache, split = tiny
    L.seed_everything(0)
    module = PneumoniaClassifier("resnet50", lr=1e-3, pos_weight=2.0)
    trainer = L.Trainer(
        fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, CxrDataModule(cache, split, image_size=32, batch_size=4))
    logged = set(trainer.callback_metrics)
    for stage in ("train", "val"):
        assert f"{stage}/loss" in logged
        assert {f"{stage}/{m}" for m in METRIC_NAMES} <= logged
    assert module.loss.pos_weight.item() == 2.0
    assert len(module.history) == 1 and "val/auroc" in module.history[0]


def test_an_epochs_batches_depend_on_the_seed_and_the_epoch_only(tiny):
    """Not on the loader workers nor on the process's RNG state: what makes a resume (and any `workers`) exact."""
    cache, split = tiny

    def batches(workers: int, epoch: int, seed: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = CxrDataModule(cache, split, image_size=32, batch_size=8, num_workers=workers, seed=seed)
        loader = loader.train_dataloader()
        loader.sampler.set_epoch(epoch)  # as Lightning does before each epoch
        loader.dataset.set_epoch(epoch)  # as the training's EpochSeeds callback does
        torch.manual_seed(100 * workers + epoch)  # a different process RNG state each time: it must not matter
        return [(batch["row"], batch["image"]) for batch in loader]

    first, again = batches(0, 1), batches(2, 1)
    assert len(first) == 3
    for (rows, images), (rows_again, images_again) in zip(first, again, strict=True):
        assert torch.equal(rows, rows_again) and torch.equal(images, images_again)
    for other in (batches(0, 2), batches(0, 1, seed=4)):  # another epoch or seed: another order and augmentation
        assert not torch.equal(torch.cat([r for r, _ in first]), torch.cat([r for r, _ in other]))
