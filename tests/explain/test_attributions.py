"""Captum attribution baselines: exact attributions on linear toy models, per-image targets, batching, modes."""

import numpy as np
import pytest
import torch
from torch import nn

from cxrexplain import names
from cxrexplain.errors import CxrError
from cxrexplain.explain.attributions import (
    BLACK,
    compute_attributions,
    gradient_shap,
    integrated_gradients,
    normalise,
    occlusion,
    saliency,
    signed_forward,
    signs,
)
from cxrexplain.models.backbones import GRAY_MEAN, GRAY_STD, build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

BASELINES = names.BASELINE_ATTRIBUTIONS  # the gradient methods and SmoothGrad: test_gradient_attributions.py

W = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
X = torch.tensor([[0.5, 1.0], [-1.0, 2.0]])


def linear(weight: torch.Tensor = W, bias: float = 0.25) -> nn.Module:
    """``f(x) = Σ w · x + bias`` on (B, 1, H, W) images, returning (B,)."""
    layer = nn.Linear(weight.numel(), 1)
    with torch.no_grad():
        layer.weight.copy_(weight.reshape(1, -1))
        layer.bias.fill_(bias)
    return nn.Sequential(nn.Flatten(), layer, nn.Flatten(0))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 1),
        nn.Flatten(0),
    )


def test_black_is_pixel_zero_in_normalised_units():
    assert pytest.approx((0.0 - GRAY_MEAN) / GRAY_STD) == BLACK


def test_signs_and_signed_forward_give_the_binary_score_per_image():
    x = torch.stack([X, X])[:, None]
    assert signs(torch.tensor([1, 0]), x).tolist() == [1.0, -1.0]
    score = signed_forward(linear())(x, signs([1, 0], x))
    logit = (W * X).sum().item() + 0.25  # 0.5 - 2 - 3 + 1 + 0.25 = -3.25
    assert score.tolist() == pytest.approx([logit, -logit]) and logit == pytest.approx(-3.25)
    with pytest.raises(ValueError, match="classes"):
        signs([1, 0, 1], x)


def test_saliency_of_a_linear_model_is_its_weights_signed_by_the_class():
    x = torch.stack([X, X])[:, None]
    raw = saliency(linear(), x, torch.tensor([1, 0]))
    assert torch.equal(raw, torch.stack([W, -W]))
    maps = compute_attributions(linear(), x, [1, 0], ["saliency"])["saliency"]
    expected = torch.tensor([[0.2, 0.6], [1.0, 0.0]])  # (|w| - 0.5) / (3 - 0.5)
    assert torch.allclose(maps, torch.stack([expected, expected]))


@pytest.mark.parametrize(
    ("method", "options"),
    [
        (integrated_gradients, {"n_steps": 4, "baseline": 0.0}),
        (occlusion, {"window": 0.5, "stride": 0.5, "baseline": 0.0}),  # 1-pixel windows on 2 × 2 images
        (gradient_shap, {"n_samples": 3, "noise_baselines": 0, "baseline": 0.0}),  # every baseline is 0
    ],
    ids=["integrated_gradients", "occlusion", "gradient_shap"],
)
def test_baseline_methods_on_a_linear_model_give_weight_times_input_minus_baseline(method, options):
    x = torch.stack([X, X])[:, None]
    raw = method(linear(), x, torch.tensor([1, 0]), **options)
    expected = W * X  # [[0.5, -2], [-3, 1]]: sums to f(x) - f(0) = -3.5 (completeness)
    assert torch.allclose(raw, torch.stack([expected, -expected]), atol=1e-5)
    maps = compute_attributions(linear(), x, [1, 0], [method.__name__], options={method.__name__: options})
    assert torch.allclose(maps[method.__name__][0], torch.tensor([[0.0, 0.6], [1.0, 0.2]]), atol=1e-5)


def test_integrated_gradients_default_baseline_is_black():
    x = torch.stack([X])[:, None]
    raw = integrated_gradients(linear(), x, torch.tensor([1]), n_steps=2)
    assert torch.allclose(raw[0], W * (X - BLACK), atol=1e-5)


def test_occlusion_window_scales_with_the_image_and_averages_over_covering_windows():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    raw = occlusion(linear(torch.ones(4, 4), 0.0), x, torch.tensor([1]), window=0.5, stride=0.25, baseline=0.0)
    # 2 × 2 windows, stride 1: pixel (0, 0) is covered by one window (sum 0+1+4+5 = 10); pixel (1, 1) by four,
    # with sums 10, 14, 26, 30 (mean 20).
    assert raw[0, 0, 0].item() == pytest.approx(10.0) and raw[0, 1, 1].item() == pytest.approx(20.0)


def test_positive_maps_depend_on_the_class_and_abs_maps_do_not():
    x = torch.stack([X, X])[:, None]
    pos = compute_attributions(linear(), x, [1, 0], ["saliency"], reduce="positive")["saliency"]
    assert torch.allclose(pos[0], torch.tensor([[1 / 3, 0.0], [1.0, 0.5 / 3]]))  # max(w, 0) / 3
    assert torch.allclose(pos[1], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # max(-w, 0) / 2
    both = compute_attributions(linear(), x, [1, 0], ["saliency"])["saliency"]
    assert torch.equal(both[0], both[1])


def test_normalise_is_per_image_min_max_and_constant_maps_become_zero():
    maps = torch.tensor([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    assert torch.equal(normalise(maps), torch.tensor([[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]))


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "occlusion"])
def test_results_do_not_depend_on_the_batch_size(method):
    torch.manual_seed(1)
    x = torch.randn(3, 1, 8, 8)
    options = {"integrated_gradients": {"n_steps": 4}, "occlusion": {"window": 0.25, "stride": 0.25}}
    one = compute_attributions(tiny_cnn(), x, [1, 0, 1], [method], batch_size=1, options=options)[method]
    three = compute_attributions(tiny_cnn(), x, [1, 0, 1], [method], batch_size=3, options=options)[method]
    assert torch.allclose(one, three, atol=1e-5)


def test_gradient_shap_is_reproducible_per_seed_and_leaves_the_global_rngs_alone():
    model, x = tiny_cnn(), torch.randn(2, 1, 8, 8)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    a = gradient_shap(model, x, torch.tensor([1, 0]), n_samples=2, seed=3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert torch.equal(a, gradient_shap(model, x, torch.tensor([1, 0]), n_samples=2, seed=3))
    assert not torch.equal(a, gradient_shap(model, x, torch.tensor([1, 0]), n_samples=2, seed=4))


def test_modes_are_restored_dropout_is_off_and_no_parameter_gradients_are_left():
    model = tiny_cnn().train()
    model[3].eval()  # a submodule in its own mode keeps it
    x = torch.randn(2, 1, 8, 8)
    first = compute_attributions(model, x, [1, 0], list(BASELINES), options={"gradient_shap": {"seed": 1}})
    second = compute_attributions(model, x, [1, 0], list(BASELINES), options={"gradient_shap": {"seed": 1}})
    for name in BASELINES:
        assert torch.equal(first[name], second[name]), name  # Dropout off while explaining
    assert model.training and model[2].training and not model[3].training
    assert all(p.grad is None for p in model.parameters())


def test_unknown_method_is_a_user_error_naming_the_available_ones():
    with pytest.raises(CxrError, match=r"'gradcam\+\+'.*saliency, integrated_gradients, occlusion, gradient_shap"):
        compute_attributions(linear(), torch.zeros(1, 1, 2, 2), [1], ["gradcam++"])


def test_all_methods_on_resnet50_give_normalised_maps_of_the_image_size():
    torch.manual_seed(0)
    model = build_classifier("resnet50")
    x = torch.randn(2, 1, 32, 32)
    options = {
        "integrated_gradients": {"n_steps": 2},
        "occlusion": {"window": 0.5, "stride": 0.5},
        "gradient_shap": {"n_samples": 2},
    }
    maps = compute_attributions(model, x, [1, 0], list(BASELINES), batch_size=4, options=options)
    assert list(maps) == list(BASELINES)
    for name, m in maps.items():
        assert m.shape == (2, 32, 32), name
        assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1, name
        assert torch.allclose(m.flatten(1).amax(dim=1), torch.ones(2)), name
    assert model.training and all(p.grad is None for p in model.parameters())
