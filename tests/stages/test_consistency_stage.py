"""Stage consistency on hand-written maps files: it compares Pneumonia maps only, of the same images."""

import json

import numpy as np
import pandas as pd
import pytest

from cxrexplain.config import validate
from cxrexplain.errors import CxrError
from cxrexplain.stages import consistency
from cxrexplain.workspace import Workspace

PARAMS = validate({"train": {"image_size": 32}, "explain": {"tie_orders": 2, "bootstrap": 50}})


def write_maps(folder, raw: np.ndarray, explained_class: np.ndarray | None, images=("a.png", "b.png")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    extra = {} if explained_class is None else {"explained_class": explained_class}
    np.savez(
        folder / "maps.npz", images=np.array(images), patients=np.array(["1", "2"]), **{"raw/gradcam": raw}, **extra
    )


def test_identical_pneumonia_maps_agree_perfectly(tmp_path):
    raw = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)  # no ties
    for arch in ("resnet50", "densenet121"):
        write_maps(tmp_path / "explain" / arch / "seed42", raw, np.array([1, 1]))
    metrics = consistency.run(PARAMS, ws=Workspace(tmp_path))
    assert metrics["explained_class"] == "Pneumonia" and metrics["images"] == 2
    (pair,) = metrics["pairs"]
    assert pair["archs"] == ["resnet50", "densenet121"]
    assert pair["methods"]["gradcam"]["spearman"]["mean"] == pytest.approx(1.0)
    assert pair["methods"]["gradcam"]["top_iou"]["mean"] == pytest.approx(1.0)
    assert pair["methods"]["gradcam"]["spearman"]["n"] == 2
    assert json.loads((tmp_path / "metrics" / "explain" / "consistency.json").read_text()) == metrics


@pytest.mark.parametrize("classes", [np.array([1, 0]), None])
def test_item3_maps_of_another_class_or_of_no_recorded_class_are_refused(tmp_path, classes):
    # the audit: ResNet-50's Pneumonia map was correlated with DenseNet-121's No Finding map without a word
    raw = np.random.default_rng(1).random((2, 4, 4)).astype(np.float32)
    write_maps(tmp_path / "explain" / "resnet50" / "seed42", raw, np.array([1, 1]))
    write_maps(tmp_path / "explain" / "densenet121" / "seed42", raw, classes)
    with pytest.raises(CxrError, match=r"densenet121/seed42/maps.npz: does not record Pneumonia maps for every image"):
        consistency.run(PARAMS, ws=Workspace(tmp_path))
    assert not (tmp_path / "metrics").exists()  # nothing written


def test_the_captum_maps_stored_beside_the_cams_are_not_compared(tmp_path):
    """maps.npz also keeps the captum methods' Pneumonia maps of some images (for the viewer): consistency reads
    the CAMs' raw maps only."""
    raw = np.random.default_rng(2).random((2, 4, 4)).astype(np.float32)
    for k, arch in enumerate(("resnet50", "densenet121")):
        folder = tmp_path / "explain" / arch / "seed42"
        folder.mkdir(parents=True)
        np.savez(
            folder / "maps.npz",
            images=np.array(["a.png", "b.png"]),
            patients=np.array(["1", "2"]),
            explained_class=np.array([1, 1]),
            **{"raw/gradcam": raw, "attr/saliency": np.full((1, 32, 32), k / 2, dtype=np.float16)},
            **{"attr_rows/saliency": np.array([1])},
        )
    metrics = consistency.run(PARAMS, ws=Workspace(tmp_path))
    assert list(metrics["pairs"][0]["methods"]) == ["gradcam"]
    table = pd.read_csv(Workspace(tmp_path).consistency)
    assert set(table["method"]) == {"gradcam"}


def test_different_images_are_refused(tmp_path):
    raw = np.zeros((2, 4, 4), dtype=np.float32)
    write_maps(tmp_path / "explain" / "resnet50" / "seed42", raw, np.array([1, 1]))
    write_maps(tmp_path / "explain" / "densenet121" / "seed42", raw, np.array([1, 1]), images=("a.png", "c.png"))
    with pytest.raises(CxrError, match="explained different images"):
        consistency.run(PARAMS, ws=Workspace(tmp_path))


def test_missing_maps_name_the_explain_stage_to_run_and_nothing_is_written(tmp_path):
    write_maps(tmp_path / "explain" / "resnet50" / "seed42", np.zeros((2, 4, 4), dtype=np.float32), np.array([1, 1]))
    with pytest.raises(
        CxrError, match=r"consistency: missing input .*densenet121/seed42/maps.npz .*`dvc repro explain@densenet121-42`"
    ):
        consistency.run(PARAMS, ws=Workspace(tmp_path))
    assert not Workspace(tmp_path).consistency.exists() and not (tmp_path / "metrics").exists()


def test_it_compares_the_pair_that_model_archs_names(tmp_path):
    raw = np.random.default_rng(1).random((2, 4, 4)).astype(np.float32)
    write_maps(tmp_path / "explain" / "resnet18" / "seed42", raw, np.array([1, 1]))
    write_maps(tmp_path / "explain" / "densenet121" / "seed42", raw[:, ::-1], np.array([1, 1]))
    params = validate({**PARAMS.model_dump(mode="json"), "model": {"archs": ["resnet18", "densenet121"]}})
    metrics = consistency.run(params, ws=Workspace(tmp_path))
    assert metrics["archs"] == ["resnet18", "densenet121"]
    with pytest.raises(CxrError, match=r"explain/resnet50/seed42/maps.npz.*explain@resnet50-42"):
        consistency.run(PARAMS, ws=Workspace(tmp_path))  # the default pair: resnet50's maps are not there


def test_it_compares_one_training_seeds_maps_the_primary_by_default(tmp_path):
    raw = np.random.default_rng(2).random((2, 4, 4)).astype(np.float32)
    for arch in ("resnet50", "densenet121"):
        write_maps(tmp_path / "explain" / arch / "seed43", raw, np.array([1, 1]))
    with pytest.raises(CxrError, match=r"explain/resnet50/seed42/maps.npz"):
        consistency.run(PARAMS, ws=Workspace(tmp_path))  # the primary seed (42) by default
    metrics = consistency.run(PARAMS, ws=Workspace(tmp_path), seed=43)
    assert metrics["train_seed"] == 43
    assert metrics["pairs"][0]["methods"]["gradcam"]["spearman"]["mean"] == pytest.approx(1.0)
    with pytest.raises(CxrError, match=r"consistency: seed 7 is not one of the training seeds"):
        consistency.run(PARAMS, ws=Workspace(tmp_path), seed=7)


def test_every_pair_of_three_architectures_and_none_of_one(tmp_path):
    """Three backbones: the three pairs in model.archs' order, each scored as that pair alone would be (the maps of
    resnet18 and densenet121 are identical, vgg-like third reversed); one backbone: no pair, an empty table."""
    rng = np.random.default_rng(3)
    raw = rng.random((2, 4, 4)).astype(np.float32)
    write_maps(tmp_path / "explain" / "resnet18" / "seed42", raw, np.array([1, 1]))
    write_maps(tmp_path / "explain" / "densenet121" / "seed42", raw, np.array([1, 1]))
    write_maps(tmp_path / "explain" / "resnet50" / "seed42", -raw, np.array([1, 1]))  # reversed ranks
    three = validate({**PARAMS.model_dump(mode="json"), "model": {"archs": ["resnet18", "densenet121", "resnet50"]}})
    metrics = consistency.run(three, ws=Workspace(tmp_path))
    assert [p["archs"] for p in metrics["pairs"]] == [
        ["resnet18", "densenet121"],
        ["resnet18", "resnet50"],
        ["densenet121", "resnet50"],
    ]
    rho = [p["methods"]["gradcam"]["spearman"]["mean"] for p in metrics["pairs"]]
    assert rho == pytest.approx([1.0, -1.0, -1.0])
    table = pd.read_csv(Workspace(tmp_path).consistency)
    assert len(table) == 3 * 2 and list(table.columns[:3]) == ["arch_a", "arch_b", "method"]
    one = validate({**PARAMS.model_dump(mode="json"), "model": {"archs": ["resnet18"]}})
    alone = consistency.run(one, ws=Workspace(tmp_path))
    assert alone["pairs"] == [] and alone["archs"] == ["resnet18"]
    assert pd.read_csv(Workspace(tmp_path).consistency).empty
