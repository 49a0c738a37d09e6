"""params.yaml validation: every bad key fails before any work, naming the key; profiles merge over the study."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxrexplain.config import (
    Params,
    deep_merge,
    load_params,
    profile_params,
    render_params,
    validate,
    write_params,
)
from cxrexplain.errors import CxrError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_study_configuration():
    p = Params()
    assert p.data.source == "nih"
    assert p.sample.per_class == 5000
    assert (p.split.train, p.split.val, p.split.test) == (0.70, 0.15, 0.15)
    assert p.split.group_by == "patient"
    assert p.sample.views == ("PA", "AP")
    assert p.model.archs == ("resnet50", "densenet121")


def test_committed_params_yaml_is_the_rendered_demo_profile():
    """params.yaml on main is exactly what `cxrexplain params --profile demo` writes: the run that made the committed
    dvc.lock and reports/ (the README's quick start); the study's configuration is `--profile study`."""
    assert (ROOT / "params.yaml").read_text() == render_params(profile_params("demo"), "demo")


@pytest.mark.parametrize("profile", ["ci", "demo"])
def test_profiles_validate_and_use_synthetic_data(profile):
    p = profile_params(profile, ROOT / "profiles")
    assert p.data.source == "synthetic"
    # both train the cheaper ResNet-18 for the study's ResNet-50 (CPU budgets); the demo with three training seeds
    assert p.model.archs == ("resnet18", "densenet121")
    assert p.seeds == {"ci": (42,), "demo": (42, 43, 44)}[profile]
    assert p.sample.per_class < Params().sample.per_class


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"data": {"sorce": "nih"}}, "data.sorce: unknown key"),
        ({"data": {"source": "kaggle"}}, "data.source: Input should be 'nih', 'synthetic' or 'dicom' (got 'kaggle')"),
        ({"sample": {"per_class": "many"}}, "sample.per_class: Input should be a valid integer"),
        ({"sample": {"per_class": 0}}, "sample.per_class: Input should be greater than or equal to 1 (got 0)"),
        ({"sample": {"image_size": 256.0}}, "sample.image_size: Input should be a valid integer"),
        ({"sample": {"balance": "yes"}}, "sample.balance: Input should be a valid boolean"),
        ({"sample": {"views": ["PA", "LL"]}}, "sample.views.1: Input should be 'PA' or 'AP' (got 'LL')"),
        ({"split": {"train": 0.8}}, "split: train + val + test must sum to 1, got 0.8 + 0.15 + 0.15 = 1.1"),
        ({"split": {"group_by": "study"}}, "split.group_by: Input should be 'patient' or 'image'"),
        ({"model": {"archs": ["resnet50", "vgg19"]}}, "model.archs: unknown arch 'vgg19' (available: resnet50, "),
        ({"model": {"archs": []}}, "model.archs: Tuple should have at least 1 item"),
        (
            {"model": {"archs": ["resnet18", "resnet18"]}},
            "model.archs: architectures must be distinct: resnet18 repeated",
        ),
        (
            {"model": {"archs": ["resnet50", "vit_b_16"]}, "train": {"image_size": 100}},
            "train.image_size: 100 px does not fit vit_b_16 in model.archs: the input side must be a multiple of its "
            "patch size, 16 px",
        ),
        ({"model": {"archs": "resnet50"}}, "model.archs: Input should be a valid tuple"),
        (
            {"model": {"archs": ["efficientnet_b0", "vit_b_16"]}, "explain": {"attributions": ["deeplift"]}},
            "explain.attributions: deeplift applies to none of model.archs (efficientnet_b0, vit_b_16): "
            "efficientnet_b0's backbone has no ReLU (its activation is SiLU): captum's DeepLIFT rules cover ReLU "
            "networks only; vit_b_16's backbone has no ReLU (its activation is GELU)",
        ),
        ({"explain": {"cams": ["gradcam", "gradcam"]}}, "explain.cams: names must be distinct: gradcam repeated"),
        ({"explain": {"measures": ["road", "road"]}}, "explain.measures: names must be distinct: road repeated"),
        ({"explain": {"measures": ["roc"]}}, "explain.measures.0: Input should be 'pointing'"),
        ({"explain": {"threshold": 1.5}}, "explain.threshold: must be a probability strictly between 0 and 1"),
        ({"explain": {"threshold": 0.0}}, "explain.threshold: must be a probability strictly between 0 and 1"),
        ({"explain": {"target": "true"}}, "explain.target: unknown key"),  # one explained class: the threshold's
        ({"explain": {"faithfulness": {"road_percentiles": [0, 50]}}}, "strictly between 0 and 100"),
        ({"explain": {"sanity": {"modes": ["sideways"]}}}, "explain.sanity.modes.0: Input should be 'top_down'"),
    ],
)
def test_invalid_params_name_the_key(raw, fragment):
    with pytest.raises(CxrError) as info:
        validate(raw, "params.yaml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("params.yaml: invalid parameters")


def test_a_method_that_applies_to_one_of_the_archs_is_accepted():
    """Skipped on the others by the explain stage (tests/explain/test_explain_pipeline.py), not refused."""
    raw = {"model": {"archs": ["vit_b_16", "resnet18"]}, "explain": {"attributions": ["deeplift", "guided_gradcam"]}}
    assert validate(raw, "params.yaml").explain.attributions == ("deeplift", "guided_gradcam")


def test_allowed_names_come_from_the_registries(monkeypatch):
    """The config's names are the registries' keys, in their order: the measures' registry directly, the others through
    names.py (torch-free), which each of those registries checks when it is imported."""
    from cxrexplain import config
    from cxrexplain.explain.attributions import ATTRIBUTION_METHODS
    from cxrexplain.explain.cam import CAM_METHODS, GRADIENT_CAMS
    from cxrexplain.explain.measures.registry import MEASURES
    from cxrexplain.explain.measures.sanity import MODES
    from cxrexplain.models.backbones import BACKBONES

    assert tuple(MEASURES) == config.MEASURE_NAMES
    assert tuple(MODES) == config.SANITY_MODES
    assert tuple(CAM_METHODS) == config.CAM_NAMES
    assert tuple(ATTRIBUTION_METHODS) == config.ATTRIBUTION_NAMES
    assert tuple(BACKBONES) == config.ARCHS
    # the default explains with every gradient CAM; the perturbation CAMs (a forward pass per channel) are opt-in
    assert Params().explain.cams == tuple(GRADIENT_CAMS) == tuple(CAM_METHODS)[: len(GRADIENT_CAMS)]


def test_a_registry_that_disagrees_with_names_py_fails_naming_what_to_add():
    from cxrexplain.names import registered

    assert registered("CAMS", ("a", "b"), {"a": 1, "b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(RuntimeError, match=r"CAM_METHODS lists .*add \['scorecam'\] to names.py"):
        registered("CAM_METHODS", ("gradcam",), {"gradcam": 1, "scorecam": 2})
    with pytest.raises(RuntimeError, match=r"add \['hirescam'\] to BACKBONES or remove them from names.py"):
        registered("BACKBONES", ("resnet50", "hirescam"), {"resnet50": 1})
    with pytest.raises(RuntimeError, match="the order differs"):
        registered("MODES", ("a", "b"), {"b": 1, "a": 2})


def test_commands_that_read_no_tensor_import_no_torch():
    """The config, the command line and the download, sample, split and report stages import neither torch nor
    anything built on it (each of those imports costs seconds in every stage process; ``python -X importtime``)."""
    heavy = ("torch", "torchvision", "torchmetrics", "lightning", "captum")
    code = (
        "import sys\n"
        "import cxrexplain.cli, cxrexplain.stages.download, cxrexplain.stages.sample, cxrexplain.stages.split\n"
        "import cxrexplain.stages.report\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    import cxrexplain

    src = str(Path(cxrexplain.__file__).resolve().parents[1])  # this checkout, however pytest was started
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"lr": float("nan")}}, "train.lr"),
        ({"train": {"lr": float("inf")}}, "train.lr"),
        ({"model": {"dropout": float("nan")}}, "model.dropout"),
        ({"data": {"retry": {"backoff_s": float("inf")}}}, "data.retry.backoff_s"),
        ({"train": {"pos_weight": float("nan")}}, "train.pos_weight"),
    ],
)
def test_inf_and_nan_are_refused(raw, key):
    # ``lr: .nan`` passed every ``gt=0`` check (NaN compares false) and trained to "val AUROC 0.548"
    with pytest.raises(CxrError) as info:
        validate(raw, "params.yaml")
    message = str(info.value)
    assert f"\n  {key}" in message and "Input should be a finite number" in message


def test_all_errors_are_reported_at_once():
    with pytest.raises(CxrError) as info:
        validate({"bogus": 1, "data": {"source": "x"}})
    assert "bogus" in str(info.value) and "data.source" in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(CxrError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(CxrError, match="not valid YAML"):
        load_params(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(CxrError, match="expected a mapping"):
        load_params(listy)


def test_unknown_profile_lists_the_available_ones(tmp_path):
    (tmp_path / "ci.yaml").write_text("seed: 1\n")
    with pytest.raises(CxrError, match=r"unknown profile 'fast'.*available: study, ci"):
        profile_params("fast", tmp_path)


def test_profile_with_a_bad_key_names_the_profile_file(tmp_path):
    (tmp_path / "x.yaml").write_text("sample:\n  per_clas: 3\n")
    with pytest.raises(CxrError, match=r"x\.yaml: invalid parameters\n  sample\.per_clas: unknown key"):
        profile_params("x", tmp_path)


def test_deep_merge_replaces_leaves_and_keeps_siblings():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    assert deep_merge(base, {"a": {"c": [9]}}) == {"a": {"b": 1, "c": [9]}, "d": 3}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 3}


def test_write_params_round_trips_with_comments(tmp_path):
    p = profile_params("ci", ROOT / "profiles")
    target = tmp_path / "params.yaml"
    write_params(p, "ci", target)
    text = target.read_text()
    assert "profile 'ci'" in text
    assert "# nih: the 12 official archives" in text
    assert load_params(target) == p
    assert yaml.safe_load(text)["sample"]["views"] == ["PA", "AP"]
