"""The explain stage's library (explain/pipeline.py) on a tiny cache and a small CNN: one split explained, its tables,
the files it writes, the metrics JSON, the threshold; no DVC, no MLflow."""

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrexplain.config import ExplainParams, FaithfulnessParams, GalleryParams, SanityParams
from cxrexplain.data.datamodule import read_split
from cxrexplain.data.sample import load_cache
from cxrexplain.errors import CxrError
from cxrexplain.evaluation import report
from cxrexplain.evaluation.document import Document
from cxrexplain.explain import pipeline
from cxrexplain.explain.agreement import read_pneumonia_maps
from cxrexplain.models.backbones import Classifier
from cxrexplain.workspace import ExplainFiles
from tinydata import write_tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ExplainParams(
    cams=("gradcam", "layercam"),
    attributions=("saliency",),
    subset=4,
    tie_orders=2,
    bootstrap=50,
    faithfulness=FaithfulnessParams(steps=4, road_percentiles=(25, 50, 75)),
    sanity=SanityParams(images=2, modes=("top_down",)),
    gallery=GalleryParams(per_outcome=2, compare_images=2),
)


def small_cnn() -> Classifier:
    torch.manual_seed(0)
    return Classifier("toy", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()), channels=4, hidden=8).eval()


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """The tiny cache's images and its 12 test rows (6 Pneumonia images with a 10 px box)."""
    cache, split = write_tiny_dataset(tmp_path_factory.mktemp("tiny"))
    images, index = load_cache(cache)
    return images, pipeline.split_rows(read_split(split, index), "test", split)


def test_explain_split_save_and_metrics(cached, tmp_path):
    images, rows = cached
    model = small_cnn()
    calls = []

    def permuted():  # the model compared with itself: identical maps, so the data randomisation test must fail
        calls.append(1)
        return model, 0.5

    config = CONFIG.model_copy(update={"sanity": CONFIG.sanity.model_copy(update={"data_randomisation": True})})
    e = pipeline.explain_split(model, images, rows, config, image_size=32, seed=0, threshold=0.5, permuted=permuted)
    assert calls == [1]
    assert len(rows) == 12 and list(e.rows["image"]) == list(rows["image"])
    assert (e.per_image["image"].to_numpy() == rows["image"].to_numpy()[e.per_image["index"].to_numpy()]).all()
    assert e.shown.shape == (12, 32, 32) and e.shown.min() >= 0 and e.shown.max() <= 1
    assert sum(1 for b in e.boxes if b) == 6
    assert set(e.sanity["method"]) == {"gradcam", "layercam", "saliency"}
    data = e.data_test
    assert set(data) == {"gradcam", "layercam", "saliency"}
    for method, entry in data.items():
        assert entry["mean_abs_spearman"] == pytest.approx(1.0), method  # the same model: the same maps
        assert entry["passes"] is False and entry["permuted_train_accuracy"] == 0.5 and entry["images"] == 2

    files = ExplainFiles(tmp_path / "out")
    files.dir.mkdir()
    figures = pipeline.save(e, files, config.gallery, title="toy", synthetic=True)
    assert figures == [files.gallery("gradcam"), files.methods_figure]
    written = set(files.dir.iterdir())
    assert written == {*files.complete, files.data_randomisation, *figures}
    assert pd.read_csv(files.per_image).shape == e.per_image.shape
    with np.load(files.maps) as maps:
        assert list(maps["images"]) == list(rows["image"]) and (maps["explained_class"] == 1).all()
        assert set(maps.files) == {
            *("images", "explained_class", "patients", "raw/gradcam", "raw/layercam"),
            *("attr/saliency", "attr_rows/saliency"),  # the captum maps of class Pneumonia, where computed
        }
    stored = read_pneumonia_maps(files.maps, made_by="explain@toy-0")
    assert list(stored.raw) == ["gradcam", "layercam"]  # what the consistency stage compares
    rows_kept = stored.attribution_rows["saliency"]
    assert np.array_equal(rows_kept, e.result.attribution_rows) and set(e.result.boxed) <= set(rows_kept)
    assert np.array_equal(stored.attributions["saliency"], e.result.attribution_maps["saliency"])
    assert stored.attributions["saliency"].shape == (len(rows_kept), 32, 32)
    assert pipeline.artifacts(files) == [*(f for f in files.tables), *sorted(figures)]

    metrics = pipeline.explain_metrics(e, config, arch="toy", source="synthetic")
    assert json.loads(json.dumps(metrics)) == metrics  # plain JSON types only
    assert (metrics["arch"], metrics["source"], metrics["split"], metrics["threshold"]) == (
        "toy",
        "synthetic",
        "test",
        0.5,
    )
    assert (metrics["images"], metrics["images_with_boxes"], metrics["subset_images"]) == (12, 6, 4)
    assert metrics["pointing_chance"] == pytest.approx(100 / 1024)  # 10×10 boxes inside a 32×32 image
    grad = metrics["methods"]["gradcam"]
    assert grad["pointing"]["n"] == 6 and grad["deletion"]["n"] == 4
    assert grad["pointing"]["low"] <= grad["pointing"]["mean"] <= grad["pointing"]["high"]
    assert grad["data_randomisation"] == data["gradcam"] and isinstance(grad["sanity"]["passes"], bool)
    assert metrics["settings"]["tie_orders"] == 2 and metrics["settings"]["data_randomisation"] is True

    assert metrics["not_applicable"] == {}  # every configured method ran

    # a method skipped for the backbone (explain_trained: applicable_config) is recorded and the report says why
    skipped = pipeline.explain_metrics(
        replace(e, not_applicable={"deeplift": "toy has no ReLU"}), config, arch="toy", source="synthetic"
    )
    assert skipped["not_applicable"] == {"deeplift": "toy has no ReLU"} and "deeplift" not in skipped["methods"]
    doc = Document("t")
    report.explanations(doc, {"toy": skipped}, {}, {})
    said = [text for kind, text in doc.blocks if kind == "paragraph" and "not run on toy" in str(text)]
    assert said == ["Configured but not run on toy, because they do not apply to it: deeplift (toy has no ReLU)."]

    flat = pipeline.mlflow_metrics(metrics)
    assert flat["explain/gradcam/pointing"] == grad["pointing"]["mean"]
    assert all(k.count("/") == 2 and not math.isnan(v) for k, v in flat.items())
    assert pipeline.headline(metrics).startswith("toy: Grad-CAM pointing game ")


def test_the_permuted_model_is_trained_only_when_the_data_test_is_on(cached):
    images, rows = cached
    e = pipeline.explain_split(
        small_cnn(), images, rows, CONFIG, image_size=32, seed=0, threshold=0.5, permuted=lambda: 1 / 0
    )
    assert e.data_randomisation is None and e.data_test is None


def test_choose_threshold_youden_on_the_validation_rows(tmp_path):
    predictions = tmp_path / "predictions.csv"
    pd.DataFrame(
        {
            "split": ["val"] * 5 + ["test"] * 2,
            "label": [0, 0, 0, 1, 1, 1, 0],
            "probability": [0.1, 0.2, 0.35, 0.6, 0.9, 0.01, 0.99],  # test rows would move it: they are ignored
        }
    ).to_csv(predictions, index=False)
    youden = CONFIG.model_copy(update={"threshold": "youden"})
    assert pipeline.choose_threshold(youden, predictions) == pytest.approx((0.35 + 0.6) / 2)
    assert pipeline.choose_threshold(CONFIG.model_copy(update={"threshold": 0.3}), tmp_path / "unread") == 0.3
    pd.DataFrame({"split": ["test"], "label": [1], "probability": [0.5]}).to_csv(predictions, index=False)
    with pytest.raises(CxrError, match=r"predictions.csv: no val rows to choose the Youden threshold on"):
        pipeline.choose_threshold(youden, predictions)


def test_a_split_without_images_is_a_clear_error(cached, tmp_path):
    _, rows = cached
    with pytest.raises(CxrError, match=r"split.csv: no val images to explain"):
        pipeline.split_rows(rows, "val", tmp_path / "split.csv")


def test_methods_that_do_not_apply_to_a_backbone_are_left_out_with_the_reason():
    config = ExplainParams(attributions=("saliency", "deeplift", "guided_backprop_smoothgrad", "guided_gradcam"))
    for arch in ("efficientnet_b0", "vit_b_16"):
        kept, skipped = pipeline.applicable_config(config, arch)
        assert kept.attributions == ("saliency",) and kept.cams == config.cams
        assert list(skipped) == ["deeplift", "guided_backprop_smoothgrad", "guided_gradcam"]
        assert all(reason.startswith(f"{arch}'s backbone has no ReLU") for reason in skipped.values())
    assert "DeepLIFT rules cover ReLU networks only" in skipped["deeplift"]
    for arch in ("resnet50", "densenet121", "resnet18", "resnet101", "densenet161", "vgg16"):
        assert pipeline.applicable_config(config, arch) == (config, {})
