"""The synthetic mirror is byte-for-byte the NIH layout, deterministic, and its index can come from real metadata."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrexplain.data import layout, metadata, synth
from cxrexplain.data.download import md5_file
from cxrexplain.data.render import render_radiograph
from cxrexplain.data.synth import index_from_metadata, read_manifest, synth_index, write_mirror
from cxrexplain.errors import CxrError

SIZE = 64


def make_mirror(out: Path, *, patients: int = 80, seed: int = 3, workers: int = 1) -> Path:
    index = synth_index(patients, image_size=SIZE, pneumonia_fraction=0.4, seed=seed)
    write_mirror(index, out, image_size=SIZE, seed=seed, workers=workers, show_progress=False)
    return out


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    return make_mirror(tmp_path_factory.mktemp("mirror"))


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_file_names_and_exact_headers(mirror):
    names = {p.name for p in mirror.iterdir()}
    assert names == {*layout.ARCHIVE_NAMES, *layout.METADATA_FILES, layout.MD5_MANIFEST}
    entry_header = (mirror / layout.DATA_ENTRY).read_text().splitlines()[0]
    assert entry_header == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    box_lines = (mirror / layout.BBOX_LIST).read_text().splitlines()
    assert box_lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    assert all(line.endswith(",,,") and len(line.split(",")) == 9 for line in box_lines)


def test_archives_hold_every_image_once_in_sorted_contiguous_chunks(mirror):
    entries = metadata.read_data_entry(mirror / layout.DATA_ENTRY)
    seen: list[str] = []
    for archive in layout.ARCHIVE_NAMES:
        with tarfile.open(mirror / archive, "r:gz") as tar:
            names = tar.getnames()
        assert names[0] == "images"  # the folder entry, then its PNGs
        assert all(n.startswith("images/") and n.endswith(".png") for n in names[1:])
        seen += [n.removeprefix("images/") for n in names[1:]]
    assert seen == sorted(entries["image"])  # all images, once, archives in order
    sizes = [len(members(mirror / a)) for a in layout.ARCHIVE_NAMES]
    assert tuple(sizes) == layout.archive_sizes(len(entries))


def test_images_are_8bit_grayscale_pngs_of_the_asked_size(mirror):
    for data in list(members(mirror / "images_002.tar.gz").values())[:5]:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (SIZE, SIZE)
            assert np.asarray(image).std() > 10  # not blank


def test_manifest_is_md5sum_format_and_matches(mirror):
    text = (mirror / layout.MD5_MANIFEST).read_text()
    assert text.splitlines()[0].endswith("  images_001.tar.gz")
    manifest = read_manifest(mirror / layout.MD5_MANIFEST)
    assert set(manifest) == {*layout.ARCHIVE_NAMES, *layout.METADATA_FILES}
    assert all(md5_file(mirror / name) == digest for name, digest in manifest.items())


def test_labels_patients_and_boxes_look_like_nih(mirror):
    entries = metadata.read_data_entry(mirror / layout.DATA_ENTRY)
    boxes = metadata.read_bbox_list(mirror / layout.BBOX_LIST)
    labels = entries["labels"]
    pneumonia = labels.str.split("|").map(lambda found: layout.PNEUMONIA in found)
    assert (labels == layout.NO_FINDING).sum() > 20
    assert pneumonia.sum() > 10
    assert labels.str.contains(r"\|").any()  # multi-label rows
    assert (labels.str.split("|").explode().isin((*layout.FINDINGS, layout.NO_FINDING))).all()
    assert (entries.groupby("patient").size() > 1).any()  # follow-ups
    both = entries.assign(p=pneumonia, n=labels == layout.NO_FINDING).groupby("patient")[["p", "n"]].any()
    assert (both["p"] & both["n"]).any()  # patients with Pneumonia and No Finding images
    assert set(boxes["image"]) == set(entries.loc[pneumonia, "image"])  # every Pneumonia image has its boxes
    assert (boxes["finding"] == layout.PNEUMONIA).all()
    assert ((boxes["x"] >= 0) & (boxes["y"] >= 0) & (boxes["w"] > 0) & (boxes["h"] > 0)).all()
    assert ((boxes["x"] + boxes["w"] <= SIZE) & (boxes["y"] + boxes["h"] <= SIZE)).all()
    assert set(entries["view"]) == {"PA", "AP"}


def test_official_lists_are_patient_wise_and_cover_everything(mirror):
    entries = metadata.read_data_entry(mirror / layout.DATA_ENTRY)
    train = set(metadata.read_image_list(mirror / layout.TRAIN_VAL_LIST))
    test = set(metadata.read_image_list(mirror / layout.TEST_LIST))
    assert train.isdisjoint(test) and train | test == set(entries["image"])
    patient = dict(zip(entries["image"], entries["patient"], strict=True))
    assert {patient[i] for i in train}.isdisjoint({patient[i] for i in test})


def test_same_seed_same_bytes_whatever_the_workers(mirror, tmp_path):
    again = make_mirror(tmp_path / "again", workers=2)
    assert (again / layout.MD5_MANIFEST).read_text() == (mirror / layout.MD5_MANIFEST).read_text()
    other = make_mirror(tmp_path / "other", seed=4, patients=10)
    assert (
        read_manifest(other / layout.MD5_MANIFEST)["images_001.tar.gz"]
        != read_manifest(mirror / layout.MD5_MANIFEST)["images_001.tar.gz"]
    )


def test_a_patients_follow_ups_are_rendered_as_the_same_person(mirror):
    # every image is render_radiograph(image generator, patient=the patient's generator): follow-ups share the person
    index = synth_index(80, image_size=SIZE, pneumonia_fraction=0.4, seed=3)
    tasks = {t.image: t for t in synth._tasks(index)}
    entries = metadata.read_data_entry(mirror / layout.DATA_ENTRY)
    patient = entries.groupby("patient")["image"].count().idxmax()
    images = entries.loc[entries["patient"] == patient, "image"].tolist()
    assert len(images) >= 3
    stored = {}
    for archive in layout.ARCHIVE_NAMES:
        stored |= {name.removeprefix("images/"): data for name, data in members(mirror / archive).items()}
    for image in images:
        t = tasks[image]
        expected = render_radiograph(
            synth._image_rng(3, t.patient, t.follow_up, 0),
            SIZE,
            patient=synth._patient_rng(3, t.patient),
            opacities=t.opacities,
            findings=t.findings,
        )
        with Image.open(io.BytesIO(stored[image])) as png:
            assert np.array_equal(np.asarray(png), expected), image


def test_from_metadata_renders_exactly_that_index(mirror, tmp_path):
    out = tmp_path / "dry-run"
    index = index_from_metadata(
        mirror / layout.DATA_ENTRY, mirror / layout.BBOX_LIST, test_list=mirror / layout.TEST_LIST, seed=1
    )
    write_mirror(index, out, image_size=SIZE, seed=1, show_progress=False)
    original = metadata.read_data_entry(mirror / layout.DATA_ENTRY)
    copy = metadata.read_data_entry(out / layout.DATA_ENTRY)
    pd.testing.assert_frame_equal(original, copy)
    assert (out / layout.TEST_LIST).read_text() == (mirror / layout.TEST_LIST).read_text()
    assert set(metadata.read_bbox_list(out / layout.BBOX_LIST)["image"]) == set(
        metadata.read_bbox_list(mirror / layout.BBOX_LIST)["image"]
    )


def test_from_metadata_subset_keeps_whole_patients(mirror):
    index = index_from_metadata(mirror / layout.DATA_ENTRY, patients=10, seed=0)
    full = metadata.read_data_entry(mirror / layout.DATA_ENTRY)
    assert index.entries["patient"].nunique() == 10
    kept = full[full["patient"].isin(index.entries["patient"])]
    assert sorted(kept["image"]) == sorted(index.entries["image"])


def test_from_metadata_places_opacities_on_real_boxes(tmp_path):
    entries = pd.DataFrame(
        [("00000007_000.png", "Pneumonia", 0, 7, 30, "F", "PA", 2500, 2500, 0.143, 0.143)],
        columns=list(metadata.ENTRY_COLUMNS),
    )
    metadata.write_data_entry(entries, tmp_path / layout.DATA_ENTRY)
    boxes = pd.DataFrame(
        [("00000007_000.png", "Pneumonia", 512.0, 600.0, 200.0, 160.0)], columns=list(metadata.BOX_COLUMNS)
    )
    metadata.write_bbox_list(boxes, tmp_path / layout.BBOX_LIST)
    index = index_from_metadata(tmp_path / layout.DATA_ENTRY, tmp_path / layout.BBOX_LIST)
    (op,) = index.opacities["00000007_000.png"]
    assert (op.cx, op.cy) == pytest.approx((612 / 1024, 680 / 1024))
    x, y, w, h = op.box(1024)
    assert abs((x + w / 2) - 612) < 40 and abs((y + h / 2) - 680) < 40


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(CxrError, match="patients must be at least 1"):
        synth_index(0, image_size=SIZE)
    bad = tmp_path / "entries.csv"
    bad.write_text("Image,Labels\n")
    with pytest.raises(CxrError, match="unexpected header"):
        index_from_metadata(bad)
    (tmp_path / "MD5SUMS").write_text("nonsense\n")
    with pytest.raises(CxrError, match="line 1 is not"):
        read_manifest(tmp_path / "MD5SUMS")


def test_from_metadata_keeps_the_real_box_list_as_it_is(tmp_path):
    rows = [
        ("00000001_000.png", "Pneumonia", 0, 1),  # has a real Pneumonia box
        ("00000002_000.png", "Infiltration|Pneumonia", 0, 2),  # Pneumonia without a box: opacities, no box
        ("00000003_000.png", "Pneumonia", 0, 3),  # the same
        ("00000004_000.png", "Effusion", 0, 4),  # another finding's box: kept
        ("00000005_000.png", "No Finding", 0, 5),
    ]
    entries = pd.DataFrame(
        [(image, labels, f, p, 40, "M", "PA", 2500, 2500, 0.143, 0.143) for image, labels, f, p in rows],
        columns=list(metadata.ENTRY_COLUMNS),
    )
    metadata.write_data_entry(entries, tmp_path / layout.DATA_ENTRY)
    real = pd.DataFrame(
        [
            ("00000004_000.png", "Effusion", 100.0, 200.0, 300.0, 400.0),
            ("00000001_000.png", "Pneumonia", 512.0, 600.0, 200.0, 160.0),
            ("00000001_000.png", "Pneumonia", 128.0, 256.0, 64.0, 32.0),
        ],
        columns=list(metadata.BOX_COLUMNS),
    )
    metadata.write_bbox_list(real, tmp_path / layout.BBOX_LIST)
    index = index_from_metadata(tmp_path / layout.DATA_ENTRY, tmp_path / layout.BBOX_LIST)

    assert set(index.opacities) == {"00000001_000.png", "00000002_000.png", "00000003_000.png"}
    assert len(index.opacities["00000001_000.png"]) == 2  # one opacity on each real box
    pd.testing.assert_frame_equal(index.boxes(1024), real)  # every row, every finding, in order, at NIH's 1024 px
    quarter = index.boxes(256)
    assert quarter[["x", "y", "w", "h"]].to_numpy().tolist() == (real[["x", "y", "w", "h"]] / 4).to_numpy().tolist()

    out = tmp_path / "mirror"
    write_mirror(index, out, image_size=SIZE, show_progress=False)
    written = metadata.read_bbox_list(out / layout.BBOX_LIST)
    assert written[["image", "finding"]].to_numpy().tolist() == real[["image", "finding"]].to_numpy().tolist()
    assert written["x"].tolist() == pytest.approx((real["x"] * SIZE / 1024).tolist())

    subset = index_from_metadata(tmp_path / layout.DATA_ENTRY, tmp_path / layout.BBOX_LIST, patients=2, seed=0)
    kept = set(subset.entries["image"])
    assert set(subset.boxes(1024)["image"]) == kept & set(real["image"])  # only the rows of the mirror's images
