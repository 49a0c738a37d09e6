"""Input × gradient, guided backpropagation, Guided Grad-CAM, DeepLIFT and SmoothGrad: exact values on linear toys,
equality with captum 0.9 and pytorch-grad-cam 1.5.7 on ResNet-18 and DenseNet-121 (random weights, 64 × 64 inputs,
2 × 2 feature maps, one image per class), DeepLIFT's completeness on both backbones, SmoothGrad's seeding."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from captum.attr import DeepLift, GuidedGradCam, InputXGradient
from pgc_adapters import Signed
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from torch import nn
from torch.testing import assert_close

from cxrexplain.errors import CxrError
from cxrexplain.explain.attributions import (
    ATTRIBUTION_METHODS,
    BLACK,
    ReluMaxPool2d,
    SignedModel,
    compute_attributions,
    deeplift,
    guided_backprop,
    guided_gradcam,
    input_x_gradient,
    relu_network,
    saliency,
    signed_forward,
    signs,
)
from cxrexplain.explain.cam import compute_cams, upsample
from cxrexplain.models.backbones import Classifier, build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

W = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
X = torch.tensor([[0.5, 1.0], [-1.0, 2.0]])


def linear() -> nn.Module:
    layer = nn.Linear(4, 1)
    with torch.no_grad():
        layer.weight.copy_(W.reshape(1, -1))
        layer.bias.fill_(0.25)
    return nn.Sequential(nn.Flatten(), layer, nn.Flatten(0))


def test_linear_model_exact_values():
    x = torch.stack([X, X])[:, None]
    c = torch.tensor([1, 0])
    both = torch.stack([W * X, -W * X])
    assert torch.equal(input_x_gradient(linear(), x, c), both)
    assert torch.equal(guided_backprop(linear(), x, c), torch.stack([W, -W]))  # no ReLU: the gradient
    assert_close(deeplift(linear(), x, c, baseline=0.0), both)  # linear: w · (x − 0)
    # SmoothGrad of a linear model's gradient is the gradient, whatever the noise
    sg = ATTRIBUTION_METHODS["saliency_smoothgrad"](linear(), x, c, samples=3, noise=0.5)
    assert_close(sg, torch.stack([W, -W]))


@dataclass
class Case:
    arch: str
    model: Classifier
    images: torch.Tensor
    classes: torch.Tensor


@pytest.fixture(scope="module", params=["resnet18", "densenet121"])
def case(request) -> Case:
    """ResNet-18 at 64 × 64 (2 × 2 feature maps); DenseNet-121, slower, at 32 × 32 (1 × 1 feature maps)."""
    torch.manual_seed(0)
    size = 64 if request.param == "resnet18" else 32
    model = build_classifier(request.param).eval()
    return Case(request.param, model, torch.randn(2, 1, size, size), torch.tensor([1, 0]))


def test_guided_backprop_equals_pytorch_grad_cam(case):
    ours = guided_backprop(case.model, case.images, case.classes)
    for i, sign in enumerate((1.0, -1.0)):
        reference = GuidedBackpropReLUModel(copy.deepcopy(Signed(case.model, sign)), device="cpu")
        theirs = torch.from_numpy(reference(case.images[i : i + 1].clone(), target_category=0))[..., 0]
        assert theirs.abs().amax() > 0
        assert_close(ours[i], theirs, atol=1e-6, rtol=1e-5)


def test_guided_gradcam_equals_captum_and_the_pytorch_grad_cam_recipe(case):
    ours = guided_gradcam(case.model, case.images, case.classes)
    sign = signs(case.classes, case.images)
    theirs = GuidedGradCam(SignedModel(case.model), case.model.features).attribute(
        case.images, additional_forward_args=(sign,), interpolate_mode="bilinear"
    )
    assert_close(ours, theirs.sum(dim=1), atol=1e-6, rtol=1e-5)
    # guided backpropagation × our Grad-CAM (tested equal to pytorch-grad-cam's GradCAM) upsampled, unnormalised
    gb = guided_backprop(case.model, case.images, case.classes)
    cams = compute_cams(case.model, case.images, ("gradcam",), classes=case.classes)
    up = upsample(cams.raw["gradcam"], (case.images.shape[-2], case.images.shape[-1]))
    assert_close(ours, gb * up, atol=1e-6, rtol=1e-5)
    if case.arch != "resnet18":
        return  # 1 × 1 feature maps: Grad-CAM is constant, its min-max normalisation zero
    # pytorch-grad-cam's recipe, GB × min-max normalised Grad-CAM, is (ours − GB · min) / (max − min): ours divided by
    # the span where the image's Grad-CAM reaches 0, not where it is positive everywhere (image 1 here)
    low, high = up.flatten(1).amin(dim=1)[:, None, None], up.flatten(1).amax(dim=1)[:, None, None]
    assert low[1] > 0 and high[1] > low[1]
    assert_close(gb[1] * cams.maps["gradcam"][1], (ours[1] - gb[1] * low[1]) / (high[1] - low[1]), atol=1e-6, rtol=1e-4)
    assert torch.equal(cams.maps["gradcam"][0], torch.zeros_like(up[0])) and not ours[0].any()  # no evidence: zeros


def test_deeplift_completeness_on_the_model_and_why_a_relu_network(case):
    x, c = case.images, case.classes
    attributions = deeplift(case.model, x, c)
    with torch.no_grad():
        delta = (case.model(x) - case.model(torch.full_like(x, BLACK))) * signs(c, x)
        assert_close(relu_network(case.model)(x), case.model(x), atol=1e-5, rtol=1e-5)
    assert delta.abs().amin() > 1e-3
    assert_close(attributions.sum(dim=(1, 2)), delta, atol=1e-5, rtol=1e-4)
    # captum on the model itself: ResNet reuses each block's ReLU (refused), DenseNet's max-pool rule breaks
    # completeness: hence relu_network
    raw = DeepLift(SignedModel(case.model))
    if case.arch == "resnet18":
        with pytest.raises(RuntimeError, match="used more than once"):
            raw.attribute(x, baselines=BLACK, additional_forward_args=(signs(c, x),))
    else:
        gap = raw.attribute(x, baselines=BLACK, additional_forward_args=(signs(c, x),)).sum(dim=(1, 2, 3)) - delta
        assert gap.abs().amax() > 1e-3


def test_input_x_gradient_equals_captum_and_input_times_saliency(case):
    ours = input_x_gradient(case.model, case.images, case.classes)
    sign = signs(case.classes, case.images)
    theirs = InputXGradient(signed_forward(case.model)).attribute(case.images, additional_forward_args=(sign,))
    assert_close(ours, theirs.sum(dim=1))
    assert_close(ours, case.images[:, 0] * saliency(case.model, case.images, case.classes))


# ------------------------------------------------------------------------------------ the ReLU network


def test_relu_max_pool_equals_max_pool_and_refuses_what_it_cannot_write():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8)
    for pool in (nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2), nn.MaxPool2d((3, 2), (1, 2), (1, 0))):
        assert_close(ReluMaxPool2d(pool)(x), pool(x), atol=1e-6, rtol=0)
    with pytest.raises(CxrError, match="ceil mode"):
        ReluMaxPool2d(nn.MaxPool2d(2, ceil_mode=True))
    silu = nn.Sequential(nn.Conv2d(1, 2, 3), nn.SiLU(), nn.Flatten(), nn.LazyLinear(1))
    silu(torch.zeros(1, 1, 5, 5))
    with pytest.raises(CxrError, match="no DeepLIFT rule"):
        deeplift(silu, torch.zeros(1, 1, 5, 5), torch.tensor([1]))


def test_relu_network_gives_every_relu_call_its_own_module_and_shares_the_parameters():
    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.relu(self.relu(self.conv(x)) - 0.1)).sum(dim=(1, 2, 3))

    model = Reused()
    network = relu_network(model)
    called = [n for n in network.graph.nodes if n.op == "call_module" and "relu" in str(n.target).lower()]
    relus = [network.get_submodule(n.target) for n in network.graph.nodes if n.op == "call_module"]
    assert sum(isinstance(m, nn.ReLU) for m in relus) == 3 and len({id(m) for m in relus}) == len(relus)
    assert not any(getattr(m, "inplace", False) for m in relus) and len(called) >= 0
    assert network.get_submodule("conv").weight is model.conv.weight
    x = torch.randn(2, 1, 4, 4)
    assert_close(network(x), model(x.clone()))


# ---------------------------------------------------------------------------------------------- SmoothGrad


def test_smoothgrad_is_seeded_leaves_global_rngs_and_tends_to_its_base_for_small_noise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 1), nn.Flatten(0))
    x, c = torch.randn(3, 1, 4, 4), torch.tensor([1, 0, 1])
    method = ATTRIBUTION_METHODS["guided_backprop_smoothgrad"]
    state, numpy_state = torch.get_rng_state(), np.random.get_state()
    a = method(model, x, c, samples=4, noise=0.3, seed=1, batch_size=5)
    assert torch.equal(torch.get_rng_state(), state) and np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert torch.equal(a, method(model, x, c, samples=4, noise=0.3, seed=1, batch_size=5))
    assert not torch.equal(a, method(model, x, c, samples=4, noise=0.3, seed=2, batch_size=5))
    tiny = method(model, x, c, samples=2, noise=1e-7)
    assert_close(tiny, guided_backprop(model, x, c), atol=1e-5, rtol=1e-4)
    ig = ATTRIBUTION_METHODS["integrated_gradients_smoothgrad"](model, x, c, samples=2, noise=1e-7, n_steps=4)
    assert ig.shape == (3, 4, 4)
    with pytest.raises(ValueError, match="samples"):
        method(model, x, c, samples=0)


def test_every_new_method_gives_normalised_maps_restores_modes_and_leaves_no_parameter_gradients():
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(4, 6, 3), nn.ReLU()
    )
    model = Classifier("small", features, channels=6, hidden=8).train()
    new = [
        m for m in ATTRIBUTION_METHODS if m not in ("saliency", "integrated_gradients", "occlusion", "gradient_shap")
    ]
    options = {name: {"samples": 2} for name in new if name.endswith("_smoothgrad")}
    options["integrated_gradients_smoothgrad"]["n_steps"] = 2
    x = torch.randn(3, 1, 12, 12)
    maps = compute_attributions(model, x, [1, 0, 1], new, batch_size=4, options=options)
    assert list(maps) == new
    for name, m in maps.items():
        assert m.shape == (3, 12, 12) and torch.isfinite(m).all() and (m.flatten(1).amax(dim=1) == 1).all(), name
    assert all(m.training for m in model.modules()) and all(p.grad is None for p in model.parameters())


def test_guided_gradcam_refuses_the_vit_whose_cam_map_is_not_a_module_output():
    """captum's GuidedGradCam hooks a module's output as the CAM layer; the ViT's CAM map is computed from its token
    map (``cam_input``), so it would explain the wrong tensor: refused, naming the backbone, never a wrong map."""
    from cxrexplain.errors import CxrError
    from cxrexplain.models.backbones import build_classifier

    model = build_classifier("vit_b_16", image_size=32)
    with pytest.raises(CxrError, match=r"guided_gradcam: .*vit_b_16's CAM map is computed from its token map"):
        guided_gradcam(model, torch.randn(1, 1, 32, 32), torch.tensor([1]))
