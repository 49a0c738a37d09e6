"""The synthetic NIH-format mirror: the same file names, CSV headers and tarball layout as ChestX-ray14.

It is **not medical data**: pixels come from :mod:`cxrexplain.data.render`, labels from a seeded generator (or, with
:func:`index_from_metadata`, from a real ``Data_Entry_2017_v2020.csv``). It exists so that every stage of the pipeline
can run, and be tested, without the 42 GB download.

Everything is deterministic for a seed: each image's pixels and opacities come from a generator seeded with
``(seed, patient, follow-up)`` and the person it shows from one seeded with ``(seed, patient)`` (a patient's
follow-ups share their anatomy, hospital, devices and markers: :mod:`cxrexplain.data.render`); archives are written
with fixed mtimes and gzip headers, so the same seed gives the same bytes whatever the number of workers.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrexplain.data import layout, metadata
from cxrexplain.data.download import md5_file
from cxrexplain.data.render import Opacity, render_radiograph, sample_opacities
from cxrexplain.errors import CxrError
from cxrexplain.io import atomic_file, write_text
from cxrexplain.progress import item_progress

# 2017-09-25, the ChestX-ray14 release: every archive member and gzip header carries it, so bytes are reproducible.
RELEASE_MTIME = 1_506_297_600

# Roughly NIH's label frequencies among findings other than Pneumonia (weights, not probabilities).
_OTHER_FINDINGS = {
    "Infiltration": 19.9,
    "Effusion": 13.3,
    "Atelectasis": 11.6,
    "Nodule": 6.3,
    "Mass": 5.8,
    "Pneumothorax": 5.3,
    "Consolidation": 4.2,
    "Pleural_Thickening": 3.0,
    "Cardiomegaly": 2.5,
    "Emphysema": 2.2,
    "Edema": 2.1,
    "Fibrosis": 1.5,
    "Hernia": 0.2,
}
# Findings that most often accompany Pneumonia in NIH's labels.
_PNEUMONIA_CO_FINDINGS = {"Infiltration": 6, "Edema": 3, "Effusion": 3, "Atelectasis": 3, "Consolidation": 2}
_NO_FINDING_SHARE = 0.55  # share of No Finding among a non-Pneumonia image's labels (NIH: 53.8 % of all images)
_TEST_PATIENT_SHARE = 0.2  # NIH's test_list.txt holds 22.8 % of the images, patient-wise


NIH_PNG_SIZE = 1024  # side of NIH's PNGs, the coordinates of BBox_List_2017.csv


@dataclass(frozen=True)
class MirrorIndex:
    """What a mirror holds: the Data_Entry rows and, per image, the opacities to draw and other findings to show.

    ``box_list`` is a real box list (metadata.BOX_COLUMNS, in NIH's 1024-px coordinates) to publish as the mirror's
    ``BBox_List_2017.csv``; without one the mirror publishes a box for every opacity it draws.
    """

    entries: pd.DataFrame  # metadata.ENTRY_COLUMNS, one row per image
    opacities: dict[str, tuple[Opacity, ...]] = field(default_factory=dict)
    test_patients: frozenset[int] = frozenset()
    box_list: pd.DataFrame | None = None

    def boxes(self, image_size: int) -> pd.DataFrame:
        """The mirror's box list in the rendered image's pixels (metadata.BOX_COLUMNS).

        With a real ``box_list``: its rows as they are (every finding, in their order) for the images of the mirror,
        scaled from 1024 px to ``image_size`` (unchanged at 1024). Otherwise one Pneumonia row per opacity.
        """
        if self.box_list is not None:
            rows = self.box_list[self.box_list["image"].isin(set(self.entries["image"]))].reset_index(drop=True)
            scale = image_size / NIH_PNG_SIZE
            return rows.assign(**{c: rows[c].astype(float) * scale for c in ("x", "y", "w", "h")})
        rows = [
            (image, layout.PNEUMONIA, *op.box(image_size))
            for image, ops in sorted(self.opacities.items())
            for op in ops
        ]
        return pd.DataFrame(rows, columns=list(metadata.BOX_COLUMNS))


def _image_rng(seed: int, patient: int, follow_up: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, patient, follow_up, stream])


_PERSON = 0xFFFFFFFF  # in the follow-up's place: no image has it


def _patient_rng(seed: int, patient: int) -> np.random.Generator:
    """The patient's own generator: every follow-up is rendered as the same person (render_radiograph's patient)."""
    return np.random.default_rng([seed, patient, _PERSON, 0])


def _weighted_choice(rng: np.random.Generator, weights: dict[str, float], k: int) -> list[str]:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return sorted(rng.choice(names, size=min(k, len(names)), replace=False, p=p / p.sum()).tolist())


def _labels_for(rng: np.random.Generator, pneumonia: bool) -> str:
    if pneumonia:
        co = _weighted_choice(rng, _PNEUMONIA_CO_FINDINGS, int(rng.integers(1, 3))) if rng.random() < 0.5 else []
        return layout.LABEL_SEPARATOR.join(sorted([layout.PNEUMONIA, *co]))
    if rng.random() < _NO_FINDING_SHARE:
        return layout.NO_FINDING
    k = 1 + int(rng.random() < 0.3) + int(rng.random() < 0.1)
    return layout.LABEL_SEPARATOR.join(_weighted_choice(rng, _OTHER_FINDINGS, k))


def _scaled(opacities: list[Opacity], scale: float) -> tuple[Opacity, ...]:
    return (
        tuple(replace(op, rx=op.rx * scale, ry=op.ry * scale) for op in opacities) if scale != 1 else tuple(opacities)
    )


def synth_index(
    patients: int,
    *,
    image_size: int,
    pneumonia_fraction: float = 0.25,
    opacity_scale: float = 1.0,
    seed: int = 0,
) -> MirrorIndex:
    """Generate the metadata of a mirror: ``patients`` patients with 1 to 20 follow-ups each (mean ≈ 1.9).

    A share ``pneumonia_fraction`` of patients has at least one Pneumonia image; each of their other follow-ups is
    Pneumonia with probability 0.5, so some patients hold both Pneumonia and No Finding images. Pneumonia images carry
    1-3 opacities (drawn later, boxes recorded); the other images carry No Finding or other findings, alone or
    combined. ``opacity_scale`` multiplies every opacity's radii (1: the renderer's sizes, 4-26 % of the image side in
    diameter); reduced profiles use larger ones so that small networks trained for a few CPU minutes can see them.
    """
    if patients < 1:
        raise CxrError(f"synthetic mirror: patients must be at least 1, got {patients}")
    rng = np.random.default_rng([seed, 0x5EED])
    rows: list[tuple] = []
    opacities: dict[str, tuple[Opacity, ...]] = {}
    for patient in range(1, patients + 1):
        n_images = min(20, int(rng.geometric(0.53)))
        has_pneumonia = rng.random() < pneumonia_fraction
        pneumonia_at = int(rng.integers(n_images)) if has_pneumonia else -1
        sex = "M" if rng.random() < 0.56 else "F"
        age = int(rng.integers(10, 86))
        for follow_up in range(n_images):
            image = layout.image_name(patient, follow_up)
            pneumonia = follow_up == pneumonia_at or (has_pneumonia and rng.random() < 0.5)
            labels = _labels_for(rng, pneumonia)
            view = "PA" if rng.random() < 0.6 else "AP"
            width, height = (int(v) for v in rng.integers(2000, 3056, size=2))
            spacing = float(rng.choice([0.139, 0.143, 0.168]))
            rows.append(
                (image, labels, follow_up, patient, age + follow_up // 4, sex, view, width, height, spacing, spacing)
            )
            if pneumonia:
                opacities[image] = _scaled(sample_opacities(_image_rng(seed, patient, follow_up, 1)), opacity_scale)
    entries = pd.DataFrame(rows, columns=list(metadata.ENTRY_COLUMNS))
    test = rng.random(patients) < _TEST_PATIENT_SHARE
    return MirrorIndex(entries, opacities, frozenset(int(p) for p in np.flatnonzero(test) + 1))


def _opacity_for_box(box: Sequence[float], png_size: float, rng: np.random.Generator) -> Opacity:
    x, y, w, h = (float(v) / png_size for v in box)
    return Opacity(
        cx=x + w / 2,
        cy=y + h / 2,
        rx=max(w / 2, 0.02),
        ry=max(h / 2, 0.02),
        density=float(rng.uniform(0.35, 0.8)),
        seed=int(rng.integers(2**31)),
    )


def index_from_metadata(
    data_entry: Path,
    bbox_list: Path | None = None,
    *,
    patients: int | None = None,
    seed: int = 0,
    test_list: Path | None = None,
) -> MirrorIndex:
    """Use a real ``Data_Entry_2017_v2020.csv`` (optionally ``patients`` random patients of it) as the mirror's index.

    Every Pneumonia image gets opacities: placed on its real Pneumonia boxes where ``bbox_list`` has them (NIH boxes
    are in 1024-px PNG coordinates), sampled otherwise. With ``bbox_list`` the mirror's box list is the real one (every
    row, every finding), so, as on NIH, most Pneumonia images have opacities and no box (NIH: 120 of 1,431 have one);
    without it, every opacity gets a box. The test list is the real one when given, else patient-wise random.
    """
    entries = metadata.read_data_entry(Path(data_entry))
    if patients is not None:
        ids = np.sort(entries["patient"].unique())
        if patients < len(ids):
            keep = np.random.default_rng([seed, 0x5EED]).choice(ids, size=patients, replace=False)
            entries = entries[entries["patient"].isin(keep)]
    entries = entries.sort_values("image").reset_index(drop=True)
    real_boxes: dict[str, list[tuple[float, ...]]] = {}
    boxes = None
    if bbox_list is not None:
        boxes = metadata.read_bbox_list(Path(bbox_list))
        for r in boxes[boxes["finding"] == layout.PNEUMONIA].itertuples(index=False):
            real_boxes.setdefault(r.image, []).append((r.x, r.y, r.w, r.h))
    opacities: dict[str, tuple[Opacity, ...]] = {}
    for r in entries.itertuples(index=False):
        if layout.PNEUMONIA not in metadata.split_labels(r.labels):
            continue
        rng = _image_rng(seed, int(r.patient), int(r.follow_up), 1)
        if r.image in real_boxes:
            opacities[r.image] = tuple(_opacity_for_box(b, NIH_PNG_SIZE, rng) for b in real_boxes[r.image])
        else:
            opacities[r.image] = tuple(sample_opacities(rng))
    if test_list is not None:
        listed = set(metadata.read_image_list(Path(test_list)))
        test = frozenset(int(p) for p in entries.loc[entries["image"].isin(listed), "patient"].unique())
    else:
        ids = entries["patient"].unique()
        draw = np.random.default_rng([seed, 0x7E57]).random(len(ids)) < _TEST_PATIENT_SHARE
        test = frozenset(int(p) for p in ids[draw])
    return MirrorIndex(entries, opacities, test, boxes)


# ----------------------------------------------------------------------------------------------------------------------
# Writing the mirror


@dataclass(frozen=True)
class _RenderTask:
    image: str
    patient: int
    follow_up: int
    findings: tuple[str, ...]
    opacities: tuple[Opacity, ...]


def _render_png(task: _RenderTask, size: int, seed: int, contrast: float = 1.0) -> bytes:
    pixels = render_radiograph(
        _image_rng(seed, task.patient, task.follow_up, 0),
        size,
        patient=_patient_rng(seed, task.patient),
        opacities=task.opacities,
        findings=task.findings,
        opacity_contrast=contrast,
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def _render_star(args: tuple[_RenderTask, int, int, float]) -> bytes:
    return _render_png(*args)


def _tar_info(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = RELEASE_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@contextmanager
def _archive_writer(path: Path) -> Iterator[Callable[[str, bytes], None]]:
    """Yields ``add(image, png)`` appending to ``images_0NN.tar.gz``, which appears under its name only when done."""
    with (
        atomic_file(path) as part,
        open(part, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=RELEASE_MTIME) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tar,
    ):
        tar.addfile(_tar_info(layout.ARCHIVE_MEMBER_DIR, 0, directory=True))
        yield lambda image, data: tar.addfile(_tar_info(layout.member_name(image), len(data)), io.BytesIO(data))


def _tasks(index: MirrorIndex) -> Iterator[_RenderTask]:
    for r in index.entries.sort_values("image").itertuples(index=False):
        findings = tuple(f for f in metadata.split_labels(r.labels) if f not in (layout.PNEUMONIA, layout.NO_FINDING))
        yield _RenderTask(r.image, int(r.patient), int(r.follow_up), findings, index.opacities.get(r.image, ()))


def write_mirror(
    index: MirrorIndex,
    out_dir: Path,
    *,
    image_size: int,
    seed: int = 0,
    opacity_contrast: float = 1.0,
    workers: int = 1,
    show_progress: bool = True,
) -> Path:
    """Render every image of ``index`` and write the mirror into ``out_dir`` (created): 12 archives, the four
    metadata files and an ``MD5SUMS`` manifest (``md5sum -c`` format). Each file appears under its final name only
    when complete. ``opacity_contrast`` multiplies the opacities' added attenuation. Returns the manifest's path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = list(_tasks(index))
    archive_of = layout.assign_archives([t.image for t in tasks])
    by_archive: dict[str, list[_RenderTask]] = {name: [] for name in layout.ARCHIVE_NAMES}
    for task in tasks:
        by_archive[archive_of[task.image]].append(task)

    with item_progress("rendering synthetic mirror", total=len(tasks), unit="images", enabled=show_progress) as advance:
        ctx = get_context("fork") if workers > 1 else None
        pool = ctx.Pool(workers) if ctx is not None else None
        try:
            for name, chunk in by_archive.items():
                args = [(t, image_size, seed, opacity_contrast) for t in chunk]
                rendered = pool.imap(_render_star, args, chunksize=4) if pool else map(_render_star, args)
                with _archive_writer(out_dir / name) as add:
                    for task, png in zip(chunk, rendered, strict=True):
                        add(task.image, png)
                        advance(1)
        finally:
            if pool is not None:
                pool.close()
                pool.join()

    entries = index.entries
    test_images = entries.loc[entries["patient"].isin(index.test_patients), "image"]
    train_images = entries.loc[~entries["patient"].isin(index.test_patients), "image"]
    for name, write, content in (
        (layout.DATA_ENTRY, metadata.write_data_entry, entries),
        (layout.BBOX_LIST, metadata.write_bbox_list, index.boxes(image_size)),
        (layout.TRAIN_VAL_LIST, metadata.write_image_list, train_images),
        (layout.TEST_LIST, metadata.write_image_list, test_images),
    ):
        with atomic_file(out_dir / name) as part:
            write(content, part)

    names = [*layout.ARCHIVE_NAMES, *layout.METADATA_FILES]
    write_text(out_dir / layout.MD5_MANIFEST, "".join(f"{md5_file(out_dir / name)}  {name}\n" for name in names))
    return out_dir / layout.MD5_MANIFEST


def read_manifest(path: Path) -> dict[str, str]:
    """``MD5SUMS`` as ``{file name: md5}``."""
    out: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 32 or not name:
            raise CxrError(f"{path}: line {number} is not '<md5>  <file name>': {line!r}")
        out[name.strip()] = digest.lower()
    return out
