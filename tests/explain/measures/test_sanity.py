"""Sanity checks: randomisation blocks and curves on toy models, SSIM against skimage, MPRT against Quantus."""

import numpy as np
import pandas as pd
import pytest
import quantus
import skimage.metrics
import torch
from torch import nn

from cxrexplain.config import ARCHS
from cxrexplain.explain.measures import sanity
from cxrexplain.explain.measures.sanity import (
    curve_means,
    data_randomisation,
    map_similarity,
    randomisation_blocks,
    randomisation_curve,
    reinitialise,
    sanity_verdict,
    ssim,
)
from cxrexplain.models.backbones import Classifier, build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_classifier() -> Classifier:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
    return Classifier("toy", features, channels=8, hidden=16).eval()  # eval: Dropout off, the maps deterministic


class OneLayerBlocks(nn.Module):
    """A classifier whose every block (head, features.2, features.0) is one module with parameters: one Quantus
    "layer" each. No Dropout or BatchNorm, so train and eval mode agree."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


def input_x_gradient(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Signed input × gradient of ``±logit`` (+ for class 1), summed over the channel: (B, H, W)."""
    x = images.detach().clone().requires_grad_(True)
    sign = 2 * torch.as_tensor(classes).to(x.dtype) - 1
    (grad,) = torch.autograd.grad((model(x) * sign).sum(), x)
    return (x * grad)[:, 0].detach()


def images(n: int = 3, size: int = 10) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 1, size, size)


# ------------------------------------------------------------------------------------------------------------ blocks


def test_randomisation_blocks_of_every_backbone_cover_every_parameter_once():
    """Built on the meta device (shapes only: no weights drawn); tests/models/test_backbones.py re-initialises every
    block of every backbone for real."""
    resnet = ["head", "layer4", "layer3", "layer2", "layer1", "stem"]
    densenet = ["head", "denseblock4", "denseblock3", "denseblock2", "denseblock1", "stem"]
    expected = {
        "resnet50": resnet,
        "densenet121": densenet,
        "resnet18": resnet,
        "resnet101": resnet,
        "densenet161": densenet,
        "efficientnet_b0": ["head", *(f"features.{i}" for i in range(8, -1, -1))],
        "vgg16": ["head", "block5", "block4", "block3", "block2", "block1"],
        "vit_b_16": ["head", *(f"encoder_layer_{i}" for i in range(11, -1, -1)), "embedding"],
    }
    assert tuple(expected) == ARCHS
    for arch, names in expected.items():
        with torch.device("meta"):
            model = build_classifier(arch, image_size=64)
        blocks = randomisation_blocks(model)
        assert [name for name, _ in blocks] == names
        covered = [id(p) for _, block in blocks for p in block.parameters()]
        assert len(covered) == len(set(covered)) and set(covered) == {id(p) for p in model.parameters()}
    toy = randomisation_blocks(toy_classifier())
    assert [name for name, _ in toy] == ["head", "features.2", "features.0"]
    with pytest.raises(ValueError, match="features"):
        randomisation_blocks(nn.Linear(2, 1))


def test_reinitialise_is_seeded_resets_batchnorm_and_leaves_the_global_generator_alone():
    block = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with torch.no_grad():
        block[1].weight.fill_(3.0)
        block[1].running_mean.fill_(5.0)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    reinitialise(block, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    first = block[0].weight.clone()
    assert block[1].weight.tolist() == [1.0, 1.0] and block[1].running_mean.tolist() == [0.0, 0.0]
    reinitialise(block, seed=7)
    assert torch.equal(block[0].weight, first)  # same seed, same weights
    reinitialise(block, seed=8)
    assert not torch.equal(block[0].weight, first)


# -------------------------------------------------------------------------------------------------------- similarity


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_equals_skimage_structural_similarity(dtype):
    rng = np.random.default_rng(0)
    a = rng.random((3, 12, 17))
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1)
    b[2] = 0.0  # a constant map (what a constant map normalises to)
    ours = ssim(torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype))
    theirs = [
        skimage.metrics.structural_similarity(a[i].astype(np.float64), b[i].astype(np.float64), data_range=1.0)
        for i in range(3)
    ]
    assert ours.dtype == torch.float64 and ours.shape == (3,)
    assert ours.tolist() == pytest.approx(theirs, abs=1e-6)
    assert ssim(torch.from_numpy(a[0]), torch.from_numpy(a[0])).item() == pytest.approx(1.0)  # 0-d for one map
    with pytest.raises(ValueError, match="win_size"):
        ssim(torch.zeros(1, 6, 6), torch.zeros(1, 6, 6))


def test_map_similarity_of_signed_maps_their_magnitudes_and_normalised_structure():
    ramp = torch.arange(64.0).view(8, 8) - 31.5  # signed, symmetric about 0
    sim = map_similarity(torch.stack([ramp, ramp]), torch.stack([-ramp, 2 * ramp]))
    assert sim["spearman"].tolist() == pytest.approx([-1.0, 1.0])
    assert sim["spearman_abs"].tolist() == pytest.approx([1.0, 1.0])  # |−ramp| = |ramp|
    assert sim["ssim"][1].item() == pytest.approx(1.0)  # min-max normalisation removes the scale
    assert sim["ssim"][0].item() < 0


def test_a_map_flattened_to_a_constant_counts_as_fully_changed():
    # Regression (6): Spearman with a constant map is 0/0; the old check got NaN and dropped it from the mean, so a
    # method whose maps randomisation destroys read as unchanged (mean of step 0 only) and failed.
    model = toy_classifier()
    trained = model.head[-1].weight.detach().clone()

    def destroyed_by_randomisation(m: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        intact = torch.equal(m.head[-1].weight, trained)
        return x[:, 0] if intact else torch.zeros_like(x[:, 0])

    curve = randomisation_curve(model, images(2, 8), [1, 0], destroyed_by_randomisation, modes=("top_down",))
    assert not curve[["spearman", "spearman_abs", "ssim"]].isna().any().any()
    randomised = curve[curve.step >= 1]
    assert (randomised.spearman == 0.0).all() and (randomised.spearman_abs == 0.0).all()
    assert (curve[curve.step == 0].spearman == 1.0).all()
    verdict = sanity_verdict(curve)
    assert verdict.spearman_after_last_block.tolist() == [0.0] and verdict.passes.tolist() == [True]


# ------------------------------------------------------------------------------------------ parameter randomisation


def test_randomisation_curve_runs_the_three_orders_of_adebayo_et_al():
    model = toy_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(2, 12)
    curve = randomisation_curve(model, x, [1, 0], input_x_gradient, seed=0)
    assert list(curve.columns) == ["mode", "step", "block", "image", "spearman", "spearman_abs", "ssim"]
    blocks = curve.drop_duplicates(["mode", "step"]).groupby("mode", sort=False).block.apply(list).to_dict()
    assert blocks == {
        "top_down": ["none", "head", "features.2", "features.0"],
        "bottom_up": ["none", "features.0", "features.2", "head"],
        "independent": ["none", "head", "features.2", "features.0"],
    }
    step0 = curve[curve.step == 0]
    assert step0[["spearman", "spearman_abs", "ssim"]].to_numpy() == pytest.approx(1.0)  # deterministic
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model itself is untouched

    def rows(mode: str, step: int) -> np.ndarray:
        return curve[(curve["mode"] == mode) & (curve.step == step)][["spearman", "spearman_abs", "ssim"]].to_numpy()

    # Each block has one seed in every order: the fully randomised models agree, and a single block randomised
    # alone is the same model whether it is the first step of a cascade or an independent step.
    assert np.array_equal(rows("top_down", 3), rows("bottom_up", 3))
    assert np.array_equal(rows("top_down", 1), rows("independent", 1))  # the head alone
    assert np.array_equal(rows("bottom_up", 1), rows("independent", 3))  # the stem alone
    assert (curve[curve.step >= 1].spearman.abs() < 0.95).all()  # randomising any block changes the maps
    pd.testing.assert_frame_equal(curve, randomisation_curve(model, x, [1, 0], input_x_gradient, seed=0))
    other = randomisation_curve(model, x, [1, 0], input_x_gradient, seed=5, modes=("top_down",))
    assert not np.array_equal(
        other[other.step >= 1].spearman, curve[curve.step.ge(1) & curve["mode"].eq("top_down")].spearman
    )


def test_stacked_methods_share_the_randomised_models_and_get_a_method_column():
    model, x = toy_classifier(), images(2, 8)

    def two_methods(m: nn.Module, xs: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([input_x_gradient(m, xs, c), xs[:, 0]])  # method-major: 2 × B maps

    curve = randomisation_curve(model, x, [1, 0], two_methods, modes=("top_down",), methods=["ixg", "image"])
    assert curve.columns[0] == "method" and curve.image.max() == 1
    alone = randomisation_curve(model, x, [1, 0], input_x_gradient, modes=("top_down",))
    pd.testing.assert_frame_equal(curve[curve.method == "ixg"].drop(columns="method").reset_index(drop=True), alone)
    assert (curve[curve.method == "image"].spearman == 1.0).all()  # the image itself ignores the model
    verdict = sanity_verdict(curve).set_index("method")
    assert verdict.loc["image", "passes"] == False  # noqa: E712 (numpy bool)
    with pytest.raises(ValueError, match="methods"):
        randomisation_curve(model, x, [1, 0], two_methods, modes=("top_down",), methods=["ixg"])


def test_a_map_that_changes_only_when_the_stem_is_randomised_fails():
    # Regression (7): the old rule passed a method when *some* step took its mean correlation below 0.5 -- the last
    # top-down step randomises the first convolution, so an edge detector that only reads the stem passed
    # (Adebayo et al. 2018). The new rule reads the step where the head and the last block are random.
    model = toy_classifier()

    def stem_only(m: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return m.features[0](x).relu().sum(dim=1)

    curve = randomisation_curve(model, images(3, 12), [1, 0, 1], stem_only, modes=("top_down",))
    verdict = sanity_verdict(curve)
    assert list(verdict.columns) == [
        "method",
        "spearman_after_last_block",
        "ssim_after_last_block",
        "min_over_steps",
        "passes",
    ]
    assert verdict.spearman_after_last_block.tolist() == [1.0]  # head and features.2 random: the stem is intact
    assert verdict.min_over_steps.item() < 0.5  # ... the old rule would have passed it
    assert verdict.passes.tolist() == [False]

    means = curve_means(curve)
    assert means.step.tolist() == [0, 1, 2, 3]
    assert means.abs_spearman.tolist()[:3] == pytest.approx([1.0, 1.0, 1.0])


def test_sanity_verdict_reads_mean_absolute_correlation_at_step_two():
    rows = [  # method m: step 2 has ρ = −0.8 and +0.2: mean ρ −0.3 but mean |ρ| 0.5, so it does not pass
        {
            "method": "m",
            "mode": "top_down",
            "step": s,
            "block": b,
            "image": i,
            "spearman": r,
            "spearman_abs": r,
            "ssim": 0.1,
        }
        for s, b, values in [
            (0, "none", [1.0, 1.0]),
            (1, "head", [0.9, 0.7]),
            (2, "layer4", [-0.8, 0.2]),
            (3, "stem", [0.0, 0.0]),
        ]
        for i, r in enumerate(values)
    ]
    verdict = sanity_verdict(pd.DataFrame(rows))
    assert verdict.spearman_after_last_block.tolist() == pytest.approx([0.5])
    assert verdict.min_over_steps.tolist() == [0.0] and verdict.passes.tolist() == [False]
    assert sanity_verdict(pd.DataFrame(rows), threshold=0.51).passes.tolist() == [True]
    with pytest.raises(ValueError, match="top_down"):
        sanity_verdict(pd.DataFrame(rows).assign(mode="independent"))


def test_data_randomisation_compares_real_and_permuted_label_maps():
    ramp = torch.arange(64.0).view(8, 8)
    real = torch.stack([ramp, ramp, ramp])
    permuted = torch.stack([ramp, ramp.flip(0, 1), torch.zeros(8, 8)])  # same, reversed, destroyed
    result = data_randomisation(real, permuted)
    assert list(result.per_image.columns) == ["image", "spearman", "spearman_abs", "ssim"]
    assert result.per_image.spearman.tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert result.mean_abs_spearman == pytest.approx(2 / 3) and result.passes is False
    assert data_randomisation(real[2:], permuted[2:]).passes is True


# ------------------------------------------------------------------------------------------------- Quantus oracle


@pytest.mark.parametrize("order", ["top_down", "bottom_up", "independent"])
def test_randomisation_curve_equals_quantus_mprt(order, monkeypatch):
    # Quantus 0.6 MPRT randomises every named module that has reset_parameters (here the three blocks' only
    # modules: features.0, features.2, head.2), each after torch.manual_seed(seed + 1) -- the same seed for every
    # layer -- where we seed block j with seed + j. To compare the similarity and not the draws, our reinitialise is
    # made to use Quantus' seed. Quantus' abs=True (|attribution| before the similarity) is our spearman_abs,
    # abs=False our spearman; its normalise (by the max |value| over the whole batch) does not change ranks and is
    # off. Its "original" entry is our step 0. Quantus lists independent steps bottom-up; ours are top-down, so
    # rows are matched by block name. (Quantus uses scipy's spearmanr: NaN for a constant map, where we give 0.)
    original = sanity.reinitialise
    monkeypatch.setattr(sanity, "reinitialise", lambda module, seed: original(module, 43))
    model, x, y = OneLayerBlocks(), images(3, 10), np.array([1, 0, 1])
    curve = randomisation_curve(model, x, y, input_x_gradient, modes=(order,))
    names = {"head": "head.2", "features.2": "features.2", "features.0": "features.0", "none": "original"}

    def explain(model, inputs, targets, **kwargs):
        return input_x_gradient(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()[:, None]

    for column, absolute in [("spearman", False), ("spearman_abs", True)]:
        mprt = quantus.MPRT(layer_order=order, seed=42, abs=absolute, normalise=False, disable_warnings=True)
        scores = mprt(model=model, x_batch=x.numpy(), y_batch=y, a_batch=None, explain_func=explain, device="cpu")
        assert set(scores) == set(names.values())
        for block, part in curve.groupby("block"):
            assert part[column].tolist() == pytest.approx(scores[names[block]], abs=1e-9), (block, column)
