"""The ``explain`` section of params.yaml: what the explain and consistency stages would misread is a config error,
raised before any work and naming the key and the value."""

import pytest

from cxrexplain.config import validate
from cxrexplain.errors import CxrError


@pytest.mark.parametrize(
    ("explain", "fragment"),
    [
        # a method named twice would be explained and measured twice, and counted twice in every paired comparison
        ({"cams": ["gradcam", "layercam", "gradcam"]}, "explain.cams: names must be distinct: gradcam repeated"),
        (
            {"attributions": ["saliency", "occlusion", "saliency"]},
            "explain.attributions: names must be distinct: saliency repeated",
        ),
        ({"measures": ["road", "pointing", "road"]}, "explain.measures: names must be distinct: road repeated"),
        ({"faithfulness": {"road_percentiles": [50, 50]}}, "explain.faithfulness.road_percentiles: must be distinct"),
        # a threshold outside (0, 1) makes every image one class: no outcome gallery, no decision map of the other
        ({"threshold": 1.0}, "explain.threshold: must be a probability strictly between 0 and 1, or youden (got 1.0)"),
        ({"threshold": 0.0}, "explain.threshold: must be a probability strictly between 0 and 1, or youden (got 0.0)"),
        (
            {"threshold": -0.2},
            "explain.threshold: must be a probability strictly between 0 and 1, or youden (got -0.2)",
        ),
        ({"threshold": float("nan")}, "explain.threshold.float: Input should be a finite number (got nan)"),
        ({"threshold": float("inf")}, "explain.threshold.float: Input should be a finite number (got inf)"),
        ({"threshold": "otsu"}, "explain.threshold.float: Input should be a valid number (got 'otsu')"),
        ({"sanity": {"threshold": 1.0}}, "explain.sanity.threshold: Input should be less than 1 (got 1.0)"),
        ({"iobb_level": 0.0}, "explain.iobb_level: Input should be greater than 0 (got 0.0)"),
        ({"pointing_tolerance": 0.5}, "explain.pointing_tolerance: Input should be less than 0.5 (got 0.5)"),
        ({"cams": []}, "explain.cams: Tuple should have at least 1 item"),
        # SmoothGrad without noise is its base method; without samples it averages nothing
        (
            {"attribution": {"smoothgrad_noise": 0.0}},
            "explain.attribution.smoothgrad_noise: Input should be greater than 0 (got 0.0)",
        ),
        (
            {"attribution": {"smoothgrad_samples": 0}},
            "explain.attribution.smoothgrad_samples: Input should be greater than or equal to 1 (got 0)",
        ),
        ({"attributions": ["occlusion_smoothgrad"]}, "explain.attributions.0: Input should be 'saliency'"),
    ],
)
def test_an_explain_setting_the_stages_would_misread_is_refused_naming_key_and_value(explain, fragment):
    with pytest.raises(CxrError) as info:
        validate({"explain": explain}, "params.yaml")
    assert str(info.value).startswith("params.yaml: invalid parameters")
    assert fragment in str(info.value)


def test_youden_and_probabilities_inside_the_interval_are_accepted():
    assert validate({"explain": {"threshold": "youden"}}).explain.threshold == "youden"


def test_the_new_methods_are_opt_in_and_accepted_by_name():
    explain = validate({"explain": {}}).explain
    assert "scorecam" not in explain.cams and "deeplift" not in explain.attributions
    chosen = validate(
        {"explain": {"cams": ["scorecam", "ablationcam"], "attributions": ["deeplift", "saliency_smoothgrad"]}}
    ).explain
    assert chosen.cams == ("scorecam", "ablationcam") and chosen.attributions == ("deeplift", "saliency_smoothgrad")
    assert validate({"explain": {"threshold": 0.27}}).explain.threshold == 0.27
