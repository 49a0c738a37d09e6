"""Every backbone × every method a reference library also implements, where test_cam.py (the six gradient CAMs on
every backbone) and the small-model tests do not already reach: Score-CAM and Ablation-CAM against pytorch-grad-cam
1.5.7 (pgc) on every backbone; guided backpropagation, Guided Grad-CAM and DeepLIFT on every ReLU backbone.

Each backbone has random weights (seed 0), BatchNorm statistics calibrated on two images and its head calibrated so
that both classes are predicted (:func:`pgc_adapters.calibrate`, as in test_cam.py); inputs are 64 × 64 for the CNNs
(2 × 2 feature maps: a 1 × 1 map makes Score-CAM's min-max masks all zero) and 32 × 32 for the ViT (2 × 2 patches).
The ViT is explained by pgc on torchvision's own ``VisionTransformer`` holding the same modules, hooked on
``encoder.layers[-1].ln_1`` with pgc's ``reshape_transform`` for ViTs.

- Score-CAM: pgc's ``ScoreCAM`` channel weights (``softmax_k`` of the masked images' scores) and maps at the input
  size equal ours to 1e-4. One image per backbone (K forward passes of the whole model, on both sides), explained
  for class 1 on even positions of ``ARCHS`` and class 0 on odd ones; both classes on one batch are tested on a small
  CNN in test_perturbation_cams.py.
- Ablation-CAM: pgc's ``AblationCAM`` weights ``(y − y_k) / y`` and maps equal ours to 1e-4, two images, classes 1
  and 0. Two conventions differ from pgc and are stated, not hidden: pgc ablates a channel to 0 only when the
  smallest activation of the image's map is 0, else to ``min − 1e7`` (growing by another 1e7 with each copy of a
  batch, since the minimum it reads already holds the previous copies' ablations); EfficientNet-B0's CAM layer ends
  in a SiLU (negative values) and the ViT's in a LayerNorm, so there pgc's weights are the response to an
  activation of −1e7, not to removing the channel. Ours ablates to 0, the paper's definition, on every backbone. On
  those two backbones pgc is run with an ablation layer that zeroes (its own class with ``__call__`` changed to
  set the channel to 0), and its default is checked to differ. For the ViT, pgc's ``AblationLayerVit`` also ablates
  the class token's channel; ours ablates the CAM map ``A``, the patch tokens, so the zeroing layer keeps the class
  token, as ours does.
- Guided backpropagation (captum ``GuidedBackprop``, ours): equal to pgc's ``GuidedBackpropReLUModel`` (a model
  whose ``nn.ReLU`` modules are replaced by its guided ReLU) on each image for its own class. Only on the six ReLU
  backbones: EfficientNet-B0 has SiLUs and the ViT GELUs, whose backward neither library guides.
- Guided Grad-CAM: equal to captum's ``GuidedGradCam(interpolate_mode="bilinear")`` and to guided backpropagation
  times our Grad-CAM (pgc-tested in test_cam.py) upsampled bilinearly, unnormalised.
- DeepLIFT: equal to captum's ``DeepLift`` on :func:`relu_network` of the model, and complete: ``Σ A = s(x) −
  s(black)`` to 1e-7 relative; :func:`relu_network` computes the model's logits.

Guided backpropagation and DeepLIFT are compared in float64 (a copy of the model), to 1e-9 of the largest value: in
float32, rounding accumulated through ResNet-50's 50 layers separates guided backpropagation from pgc's by 1.5e-4 of
the image's largest value (our own float32 result differs from our float64 one by as much, 1.4e-4), and
:func:`relu_network`'s logits from the model's by 1.4e-4 to 2.9e-4 relative on ResNet-50, ResNet-101 and VGG16 (its
max-pool ``m + ReLU(v − m)`` rounds differently from ``max``); in float64 guided backpropagation equals pgc's bit
for bit on ResNet-50.

Only EfficientNet-B0's Ablation-CAM (about 2 s, the convention case) runs in the default suite; the rest is the
``heavy`` tier (``pytest --heavy -m heavy``, tests/conftest.py): Score-CAM everywhere (K = 512-2208 forward passes of
the whole model per image, on both sides: 17-318 s per backbone on a 2-core CPU), the ViT's Ablation-CAM (pgc runs
the whole ViT per ablated copy: it replaces ``ln_1`` inside the last block), and the other backbones' Ablation-CAM
and gradient methods (1-20 s each; pgc's Ablation-CAM replaces ``model.features``, the CAM layer, so on the CNNs it
runs only the head per copy, as ours). ResNet-18 and DenseNet-121 keep their float32 default-suite tests of the
gradient methods in test_gradient_attributions.py.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from captum.attr import DeepLift, GuidedGradCam
from pgc_adapters import Logits, Signed, calibrate, targets, vit_reshape
from pytorch_grad_cam import AblationCAM, ScoreCAM
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from torch import nn
from torch.testing import assert_close

from cxrexplain.config import ARCHS
from cxrexplain.explain.attributions import (
    BLACK,
    SignedModel,
    deeplift,
    guided_backprop,
    guided_gradcam,
    relu_network,
    signs,
)
from cxrexplain.explain.cam import (
    PERTURBATION_CAMS,
    compute_cams,
    feature_gradients,
    normalise,
    upsample,
)
from cxrexplain.models.backbones import BACKBONES, Classifier, build_classifier, from_torchvision
from cxrexplain.names import ACTIVATIONS

pytestmark = pytest.mark.usefixtures("one_thread")

RELU_ARCHS = [a for a in ARCHS if ACTIVATIONS[a] == "ReLU"]
"""The backbones whose every non-linearity is a ReLU (``names.ACTIVATIONS``; EfficientNet-B0: SiLU; ViT: GELU)."""


@dataclass
class Backbone:
    arch: str
    model: Classifier  # ours
    explained: nn.Module  # what pgc runs: Logits(model), or torchvision's ViT with the same modules
    layer: nn.Module  # pgc's target layer
    reshape: object  # pgc's reshape_transform (None for the CNNs)
    images: torch.Tensor  # (2, 1, S, S)

    @functools.cached_property
    def model64(self) -> Classifier:
        """A float64 copy, for the gradient methods: in float32 a deep network's rounding (~1e-4 of the largest value
        on ResNet-50) separates two implementations that are equal in float64."""
        return copy.deepcopy(self.model).double()


@pytest.fixture(scope="module")
def backbone(request) -> Backbone:
    """The backbone ``request.param`` (indirect parametrisation), built once per module and calibrated on one
    thread."""
    arch = request.param
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vit = arch == "vit_b_16"
        size = 32 if vit else 64
        torch.manual_seed(0)
        if vit:
            reference = BACKBONES[arch].torchvision_model(size)
            model = from_torchvision(arch, reference)
            reference.heads = model.head  # torchvision's forward, ending in the study's head: logits (B, 1)
            explained, layer, reshape = reference.eval(), reference.encoder.layers[-1].ln_1, vit_reshape
        else:
            model = build_classifier(arch)
            explained, layer, reshape = Logits(model), model.features, None
        images = torch.randn(2, 1, size, size)
        calibrate(model, images)
        model.eval().requires_grad_(False)  # pgc's and captum's backward reach the input without weight gradients
    finally:
        torch.set_num_threads(threads)
    return Backbone(arch, model, explained, layer, reshape, images)


def _archs(names: list[str], heavy: list[str] = ()) -> list:
    return [pytest.param(a, marks=pytest.mark.heavy) if a in heavy else a for a in names]


def _recording(cls: type) -> type:
    """``cls`` (a pgc CAM) that keeps the channel weights of its last call as ``self.weights`` (B, K): its maps and
    weights from one run (Score-CAM's weights are K forward passes per image)."""

    class Recording(cls):
        def get_cam_weights(self, *args, **kwargs):
            self.weights = np.asarray(super().get_cam_weights(*args, **kwargs))
            return self.weights

    return Recording


class _ZeroAblation(AblationLayer):
    """pgc's ``AblationLayer`` ablating every chosen channel to 0, the paper's ablation (pgc's own ablates to
    ``min − 1e7`` when the map has no zero)."""

    def __call__(self, x):
        output = self.activations
        for i in range(output.size(0)):
            output[i, self.indices[i], :] = 0
        return output


class _ZeroAblationVit(AblationLayerVit):
    """pgc's ``AblationLayerVit`` ablating the chosen channel of the patch tokens to 0 and keeping the class token's
    (the CAM map ``A`` is the patch tokens: ``reshape_transform`` drops the class token)."""

    def __call__(self, x):
        output = self.activations.clone()  # (copies, tokens, D)
        for i in range(output.size(0)):
            output[i, 1:, self.indices[i]] = 0
        return output


def _pgc_perturbation(cls: type, b: Backbone, images: torch.Tensor, classes: list[int], **kwargs):
    """pgc's maps at the input size and its channel weights, from one call."""
    with _recording(cls)(b.explained, [b.layer], reshape_transform=b.reshape, **kwargs) as cam:
        cam.batch_size = kwargs.get("batch_size", 64)  # Score-CAM reads it if present (default 16)
        maps = cam(images, targets(classes))
    return maps, cam.weights


def _ours_perturbation(name: str, b: Backbone, images: torch.Tensor, classes: list[int]):
    """Our channel weights, raw maps and maps for ``classes``: the perturbed logits computed once (what
    :func:`compute_cams` does with them, tested equal on the small CNN of test_perturbation_cams.py)."""
    method = PERTURBATION_CAMS[name]
    inputs = feature_gradients(b.model, images, classes=torch.tensor(classes))
    with torch.no_grad():
        logits = method.channel_logits(b.model, images, inputs.features, inputs.activations, 64)
    sign = torch.tensor([1.0 if c == 1 else -1.0 for c in classes])
    weights = method.weights(logits * sign[:, None], inputs.logits * sign)
    raw = method.maps(inputs.activations, inputs.logits, logits, sign)
    return inputs, weights, raw, normalise(upsample(raw, tuple(images.shape[-2:])))


# ----------------------------------------------------------------------------------------------------- Score-CAM


@pytest.mark.parametrize("backbone", _archs(ARCHS, heavy=ARCHS), indirect=True)
def test_score_cam_equals_pytorch_grad_cam(backbone):
    b = backbone
    images = b.images[:1]
    classes = [1 if ARCHS.index(b.arch) % 2 == 0 else 0]
    _, weights, raw, maps = _ours_perturbation("scorecam", b, images, classes)
    theirs_maps, theirs_weights = _pgc_perturbation(ScoreCAM, b, images, classes)
    assert weights.shape == theirs_weights.shape
    assert_close(weights, torch.from_numpy(theirs_weights).float(), atol=1e-4, rtol=1e-4)
    assert raw.amax() > 0 and maps.amax() == 1  # a map that varies: the normalisation is compared too
    assert_close(maps, torch.from_numpy(theirs_maps), atol=1e-4, rtol=0)


# -------------------------------------------------------------------------------------------------- Ablation-CAM


@pytest.mark.parametrize("backbone", _archs(ARCHS, heavy=[a for a in ARCHS if a != "efficientnet_b0"]), indirect=True)
def test_ablation_cam_equals_pytorch_grad_cam(backbone):
    b = backbone
    classes = [1, 0]
    inputs, weights, raw, maps = _ours_perturbation("ablationcam", b, b.images, classes)
    ours = compute_cams(b.model, b.images, ("ablationcam",), classes=torch.tensor(classes), batch_size=64)
    assert_close(ours.raw["ablationcam"], raw, atol=0, rtol=0)
    vit = b.arch == "vit_b_16"
    zero_min = bool((inputs.activations.flatten(1).amin(dim=1) == 0).all())
    assert zero_min == (b.arch in RELU_ARCHS)  # a ReLU-ended CAM layer has zeros: pgc ablates to 0 there
    layer = _ZeroAblationVit() if vit else (AblationLayer() if zero_min else _ZeroAblation())
    theirs_maps, theirs_weights = _pgc_perturbation(AblationCAM, b, b.images, classes, ablation_layer=layer)
    assert_close(weights, torch.from_numpy(theirs_weights).float(), atol=1e-4, rtol=1e-3)
    assert (raw.amax(dim=(1, 2)) > 0).all()
    assert_close(maps, torch.from_numpy(theirs_maps), atol=1e-4, rtol=0)
    if not zero_min:  # pgc's own ablation layer: to min − 1e7, not 0 (and the ViT's class token too): a convention
        default = AblationLayerVit() if vit else AblationLayer()
        _, pgc_default = _pgc_perturbation(AblationCAM, b, b.images, classes, ablation_layer=default)
        assert (np.abs(pgc_default - theirs_weights) > 1e-2).any()


# ---------------------------------------------------------------------------- guided backprop, Guided Grad-CAM


@pytest.mark.parametrize("backbone", _archs(RELU_ARCHS, heavy=RELU_ARCHS), indirect=True)
def test_guided_backprop_equals_pytorch_grad_cam(backbone):
    b = backbone
    classes, x = torch.tensor([1, 0]), b.images.double()
    ours = guided_backprop(b.model64, x, classes)
    copied = copy.deepcopy(b.model64)  # pgc swaps the ReLU modules and back to new non-in-place ones
    for i, sign in enumerate((1.0, -1.0)):
        reference = GuidedBackpropReLUModel(Signed(copied, sign), device="cpu")
        theirs = torch.from_numpy(reference(x[i : i + 1].clone(), target_category=0))[..., 0]
        assert theirs.abs().amax() > 0
        assert_close(ours[i], theirs, atol=1e-9 * theirs.abs().amax().item(), rtol=1e-9)


@pytest.mark.parametrize("backbone", _archs(RELU_ARCHS, heavy=RELU_ARCHS), indirect=True)
def test_guided_gradcam_equals_captum_and_guided_backprop_times_gradcam(backbone):
    b = backbone
    classes = torch.tensor([1, 0])
    ours = guided_gradcam(b.model, b.images, classes)
    sign = signs(classes, b.images)
    theirs = GuidedGradCam(SignedModel(b.model), b.model.features).attribute(
        b.images, additional_forward_args=(sign,), interpolate_mode="bilinear"
    )
    assert_close(ours, theirs.sum(dim=1), atol=1e-6, rtol=1e-5)
    gb = guided_backprop(b.model, b.images, classes)
    cams = compute_cams(b.model, b.images, ("gradcam",), classes=classes)
    up = upsample(cams.raw["gradcam"], tuple(b.images.shape[-2:]))
    assert up.amax() > 0 and ours.abs().amax() > 0
    assert_close(ours, gb * up, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- DeepLIFT


@pytest.mark.parametrize("backbone", _archs(RELU_ARCHS, heavy=RELU_ARCHS), indirect=True)
def test_deeplift_equals_captum_on_the_relu_network_and_is_complete(backbone):
    b = backbone
    model, x, c = b.model64, b.images.double(), torch.tensor([1, 0])
    ours = deeplift(model, x, c)
    network = relu_network(model)
    theirs = DeepLift(SignedModel(network)).attribute(x, baselines=BLACK, additional_forward_args=(signs(c, x),))
    assert_close(ours, theirs.detach().sum(dim=1), atol=1e-9 * ours.abs().amax().item(), rtol=1e-9)
    with torch.no_grad():
        assert_close(network(x), model(x), atol=1e-9, rtol=1e-9)
        delta = (model(x) - model(torch.full_like(x, BLACK))) * signs(c, x)
    assert delta.abs().amin() > 1e-3
    assert_close(ours.sum(dim=(1, 2)), delta, atol=1e-9, rtol=1e-7)
