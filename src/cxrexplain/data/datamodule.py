"""The LightningDataModule: reads only the sample cache and the split table.

Training images go through the study's augmentations (albumentations, each a param): rotation ±10°, zoom ±10 %,
horizontal flip, contrast and brightness; val/test images are only resized and normalised, deterministically.

An epoch's order of training images is a function of (seed, epoch) (:class:`EpochShuffle`) and an image's
augmentation a function of (seed, epoch, row), neither of which loader worker draws it nor of what ran before: a
training resumed at an epoch boundary, or run with another ``workers`` count, sees the same batches as an
uninterrupted one. The training loop sets the epoch (:meth:`CacheDataset.set_epoch`) before each epoch's loader is
iterated; a training loader is created at the epoch its trainer is at (Lightning iterates a run's first loader before
any epoch hook runs) and does not keep its workers between epochs, so every epoch's workers see the dataset's epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import albumentations as A
import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from cxrexplain.config import AugmentParams
from cxrexplain.data.sample import load_cache
from cxrexplain.data.split import read_split
from cxrexplain.data.transforms import eval_transform, train_transform
from cxrexplain.errors import CxrError


def epoch_seed(seed: int, epoch: int, *stream: int) -> int:
    """A 32-bit seed for one stream of an epoch's random draws (numpy's SeedSequence of (seed, epoch, *stream)):
    ``0``: the order of the training images, ``1``: the processes' RNGs (dropout), ``2, row``: an image's augmentation.
    """
    return int(np.random.SeedSequence([seed, epoch, *stream]).generate_state(1)[0])


class CacheDataset(Dataset):
    """Rows of the cached array with their labels; items are ``{"image": (1, S, S) float, "label", "row"}``."""

    def __init__(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        transform: A.Compose,
        *,
        random: bool = False,
        seed: int = 0,
    ) -> None:
        self.images = images
        self.rows = rows
        self.labels = labels
        self.transform = transform
        self.random = random  # the transform draws random numbers (training augmentations)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations the next items get (set before the epoch's loader is iterated)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        # albumentations keeps its own generator: seed it from (seed, epoch, row) alone, so that an image's
        # augmentation depends neither on the loader worker that draws it nor on the RNG state of the process
        if self.random:
            self.transform.set_random_seed(epoch_seed(self.seed, self.epoch, 2, row))
        pixels = self.transform(image=np.asarray(self.images[row]))["image"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None],
            "label": torch.tensor(int(self.labels[i])),
            "row": torch.tensor(row),
        }


class EpochShuffle(RandomSampler):
    """A permutation of the dataset drawn from (seed, epoch) alone; Lightning sets the epoch (under DDP it uses its
    DistributedSampler instead, which is likewise a function of the seed and the epoch)."""

    def __init__(self, data_source: Dataset, seed: int) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 0))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class CxrDataModule(L.LightningDataModule):
    """Train/val/test loaders over ``cache_dir`` and ``split_file``."""

    def __init__(
        self,
        cache_dir: Path,
        split_file: Path,
        *,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        augment: AugmentParams | None = None,
        permute_train_labels: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed  # of the training augmentations (with the epoch and the image's row)
        self.permute_train_labels = permute_train_labels  # a seed: train labels shuffled (data randomisation test)
        self.cache_dir = Path(cache_dir)
        self.split_file = Path(split_file)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment or AugmentParams()  # the validated train.augment section; None: its defaults
        self.table: pd.DataFrame | None = None
        self.images: np.ndarray | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.table is None:
            self.images, index = load_cache(self.cache_dir)
            self.table = read_split(self.split_file, index)

    def dataset(self, split: str, *, train: bool = False) -> CacheDataset:
        self.setup()
        part = self.table[self.table["split"] == split]
        if part.empty:
            raise CxrError(f"{self.split_file}: the {split} split is empty")
        transform = train_transform(self.image_size, self.augment) if train else eval_transform(self.image_size)
        labels = part["label"].to_numpy()
        if split == "train" and self.permute_train_labels is not None:
            labels = np.random.default_rng(self.permute_train_labels).permutation(labels)
        return CacheDataset(self.images, part["row"].to_numpy(), labels, transform, random=train, seed=self.seed)

    def _loader(self, split: str, *, train: bool = False) -> DataLoader:
        dataset = self.dataset(split, train=train)
        sampler = None
        if train:
            # the epoch the trainer is about to run (0 without a trainer): a resumed run's first epoch is not 0
            epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
            dataset.set_epoch(epoch)
            sampler = EpochShuffle(dataset, self.seed)
            sampler.set_epoch(epoch)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # the loader's own generator draws its workers' base seed: the processes' RNGs are left alone
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=False,
            num_workers=self.num_workers,
            # a training epoch's workers must start from the dataset's current epoch (see the module docstring)
            persistent_workers=self.num_workers > 0 and not train,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def pos_weight(self) -> float:
        """Negatives / positives in the training split (for ``train.pos_weight: auto``)."""
        self.setup()
        labels = self.table.loc[self.table["split"] == "train", "label"]
        return float((labels == 0).sum() / max(int((labels == 1).sum()), 1))
