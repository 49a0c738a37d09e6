"""The native CAM family: equality with pytorch-grad-cam on both backbones, exact values on a toy model, modes,
gradients, per-image targets, normalisation.

Comparison with pytorch-grad-cam 1.5.7 (``pgc``), per backbone (every one of ``ARCHS``; random weights, BatchNorm
statistics calibrated on the batch, head biases zeroed and the logits centred on the batch, eval mode; 2 images of
64 × 64 (2 × 2 feature maps; the ViT: 32 × 32, a 2 × 2 patch grid), each explained for its predicted class, both
classes present, through signed per-image targets ``±out[0]``):

1. end to end: pgc's ``GradCAM`` on the whole model (hooks on ``model.features``, full backward to the input, the
   weights frozen so that no weight gradient is computed; cv2 resize to the input size, its min-max scaling) against
   :func:`compute_cams`' Grad-CAM maps at the input size, to 1e-4. For the
   ViT, pgc runs on torchvision's own ``VisionTransformer`` holding the same modules (the study's head as its
   ``heads``), hooked on ``encoder.layers[-1].ln_1`` with the ``reshape_transform`` of its ViT tutorial (class token
   dropped, patch tokens to the (h, w) grid);
2. each method's formula, isolated from resizing: pgc's class for the method run on what follows ``A`` alone
   (:meth:`Classifier.logits_from_cam`: the head, or the ViT's last block and head), fed our ``A`` (its target layer
   an ``Identity`` on ``A``, so its target size is the feature size and cv2's resize is the identity); compared at
   feature resolution: the raw map (pgc's ``get_cam_image`` followed by its ReLU) to 1e-4 of the image's largest
   value, and the normalised map (pgc's output) to 1e-4. Our ``A`` and ``G`` equal pgc's from step 1 (1e-4 of the
   largest); pgc is fed ours because XGrad-CAM's ``1 / Σ_ij A`` amplifies their rounding difference on the ViT's
   signed LayerNorm output (8e-4 of the largest value once);
3. EigenGrad-CAM: the projection equals pgc's ``get_2d_projection`` up to the SVD's sign per image, the sign here
   follows its documented rule, and pgc's output equals ours with pgc's sign.

The study's head average-pools first, so its gradients are constant over positions and several formulas coincide
there; step 2 is repeated on a head with a 1×1 convolution before pooling (spatially varying gradients, classes given
as 1, 0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from pgc_adapters import Logits, calibrate, targets, vit_reshape
from pytorch_grad_cam import EigenGradCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch import nn
from torch.testing import assert_close

from cxrexplain.config import ARCHS
from cxrexplain.errors import CxrError
from cxrexplain.explain.cam import (
    CAM_METHODS,
    GRADIENT_CAMS,
    CamResult,
    class_scores,
    compute_cams,
    compute_pneumonia_and_decision_cams,
    eigengradcam,
    feature_gradients,
    gradcam,
    gradcampp,
    hirescam,
    layercam,
    normalise,
    principal_projection,
    resolve_targets,
    upsample,
    xgradcam,
)
from cxrexplain.models.backbones import BACKBONES, Classifier, build_classifier, from_torchvision

PGC = {
    "gradcam": GradCAM,
    "gradcampp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "eigengradcam": EigenGradCAM,
}


# ------------------------------------------------------------------------------------ pytorch-grad-cam adapters


class _Head(nn.Module):
    """What follows the target layer alone (``logits_from_cam`` on the batch's ``F``), fed the map ``A``; ``layer``
    (an identity) is the target layer pgc hooks."""

    def __init__(self, model: Classifier, features: torch.Tensor) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.model = model
        self.features = features

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.model.logits_from_cam(self.features, self.layer(activations)).unsqueeze(1)


@dataclass
class Case:
    arch: str
    model: Classifier
    images: torch.Tensor
    result: CamResult
    pgc_gradcam: np.ndarray  # pgc's end-to-end Grad-CAM at the input size
    pgc_activations: torch.Tensor  # pgc's A and G (hooks on the target layer, full backward)
    pgc_gradients: torch.Tensor
    features: torch.Tensor  # ours: F = features(x), and A, G from feature_gradients
    activations: torch.Tensor
    gradients: torch.Tensor


@pytest.fixture(scope="module", params=ARCHS)
def case(request) -> Case:
    arch = request.param
    vit = arch == "vit_b_16"
    size = 32 if vit else 64
    torch.manual_seed(0)
    if vit:  # ours made from a torchvision ViT that keeps sharing its modules (pgc explains that one)
        reference = BACKBONES[arch].torchvision_model(size)
        model = from_torchvision(arch, reference)
        reference.heads = model.head  # torchvision's forward, ending in the study's head: logits (B, 1)
        explained, layer, reshape = reference, reference.encoder.layers[-1].ln_1, vit_reshape
    else:
        model = build_classifier(arch)
        explained, layer, reshape = Logits(model), model.features, None
    images = torch.randn(2, 1, size, size)
    calibrate(model, images)
    result = compute_cams(model, images, tuple(GRADIENT_CAMS), target="predicted")
    ours = feature_gradients(model, images, classes=result.classes)
    with torch.no_grad():
        features = model.features(images)
    # pgc's backward reaches the layer through the input's graph instead of the weights' (the same activation
    # gradients, without the weight gradients pgc has no use for: a third of its time on the large backbones)
    model.requires_grad_(False)
    with GradCAM(explained, [layer], reshape_transform=reshape) as cam:
        full = cam(images.clone().requires_grad_(), targets(result.classes.tolist()))
        pgc_activations = cam.activations_and_grads.activations[0]
        pgc_gradients = cam.activations_and_grads.gradients[0]
    return Case(
        arch, model, images, result, full, pgc_activations, pgc_gradients, features, ours.activations, ours.gradients
    )


def _pgc_at_feature_size(case: Case, name: str) -> tuple[np.ndarray, np.ndarray]:
    """pgc's raw map (its ``get_cam_image`` then ReLU) and its output, both at the feature map's resolution, from our
    ``A`` (equal to pgc's own, tested: step 1 differs from it by rounding, which XGrad-CAM's ``1 / Σ_ij A`` can
    amplify on the ViT's signed LayerNorm output)."""
    head = _Head(case.model, case.features)
    wanted = targets(case.result.classes.tolist())
    with PGC[name](head, [head.layer]) as cam:
        output = cam(case.activations.clone().requires_grad_(), wanted)
        a = cam.activations_and_grads.activations[0].numpy()
        g = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(case.activations, head.layer, wanted, a, g, False), 0)
    return raw, output


# --------------------------------------------------------------------------------------- equality with pgc


def test_the_fixture_is_not_degenerate(case):
    assert sorted(set(case.result.classes.tolist())) == [0, 1]  # both classes: per-image signed targets are tested
    raw = case.result.raw["gradcam"]
    assert raw.shape == (2, 2, 2) and case.activations.shape[2:] == (2, 2)
    # our A and G (no hook, back-propagated from the logit to A only) are pgc's (hooks, full backward)
    for ours, theirs in ((case.activations, case.pgc_activations), (case.gradients, case.pgc_gradients)):
        assert ours.shape == theirs.shape
        assert_close(ours, theirs, atol=1e-4 * theirs.abs().max().item(), rtol=1e-4)
    assert torch.equal(case.result.raw["gradcam"], gradcam(case.activations, case.gradients))
    assert (raw.amax(dim=(1, 2)) - raw.amin(dim=(1, 2)) > 1e-3).all()  # every map varies: normalisation is tested
    assert_close(case.result.logits, case.model.eval()(case.images), atol=1e-5, rtol=1e-5)


def test_gradcam_end_to_end_equals_pytorch_grad_cam_at_the_input_size(case):
    assert case.pgc_gradcam.shape == case.images[:, 0].shape
    assert_close(case.result.maps["gradcam"], torch.from_numpy(case.pgc_gradcam), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", [n for n in GRADIENT_CAMS if n != "eigengradcam"])
def test_formula_equals_pytorch_grad_cam_at_feature_resolution(case, name):
    raw, output = _pgc_at_feature_size(case, name)
    ours = case.result.raw[name]
    scale = torch.from_numpy(raw).abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    assert_close(ours / scale, torch.from_numpy(raw) / scale, atol=1e-4, rtol=0)
    assert_close(normalise(ours), torch.from_numpy(output), atol=1e-4, rtol=0)


def _assert_eigen_matches(weighted: torch.Tensor, ours_raw: torch.Tensor, pgc_output: np.ndarray) -> None:
    """``ours_raw`` = ReLU(our projection of ``weighted``); pgc's projection is ours up to a sign per image."""
    theirs = torch.from_numpy(get_2d_projection(weighted.numpy()))
    ours = principal_projection(weighted)
    sign = torch.sign((theirs * ours).sum(dim=(1, 2)))[:, None, None]  # pgc keeps LAPACK's sign
    scale = theirs.abs().amax(dim=(1, 2), keepdim=True)
    assert_close(ours * sign / scale, theirs / scale, atol=1e-4, rtol=0)
    # our sign: the projection correlates positively with the centred channel sum (HiResCAM's evidence)
    flat = weighted.flatten(2).sum(dim=1)
    assert ((ours.flatten(1) * (flat - flat.mean(dim=1, keepdim=True))).sum(dim=1) >= 0).all()
    assert_close(ours_raw / scale, torch.relu(ours) / scale, atol=1e-4, rtol=0)
    assert_close(normalise(torch.relu(ours * sign)), torch.from_numpy(pgc_output), atol=1e-4, rtol=0)


def test_eigengradcam_equals_pytorch_grad_cam_up_to_the_svd_sign(case):
    _, output = _pgc_at_feature_size(case, "eigengradcam")
    weighted = case.gradients * case.activations
    _assert_eigen_matches(weighted, case.result.raw["eigengradcam"], output)


class _ConvHead(nn.Module):
    """A head that does not pool first: 1×1 convolution → ReLU → linear over positions (spatially varying ``G``)."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.head = nn.Sequential(nn.Conv2d(channels, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * size * size, 1))

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(activations))


@pytest.mark.parametrize("name", list(GRADIENT_CAMS))
def test_formula_equals_pytorch_grad_cam_with_spatially_varying_gradients(name):
    torch.manual_seed(3)
    model = _ConvHead(8, 3).eval()
    activations = torch.relu(torch.randn(3, 8, 3, 3))
    classes = [1, 0, 1]
    with PGC[name](model, [model.layer]) as cam:
        output = cam(activations.clone().requires_grad_(), targets(classes))
        a = cam.activations_and_grads.activations[0]
        g = cam.activations_and_grads.gradients[0]
        raw = np.maximum(cam.get_cam_image(a, model.layer, None, a.numpy(), g.numpy(), False), 0)
    # our gradients, independently: the signed per-image score of the head's output
    leaf = activations.clone().requires_grad_()
    (gradients,) = torch.autograd.grad(class_scores(model(leaf).squeeze(1), torch.tensor(classes)).sum(), leaf)
    assert_close(gradients, g, atol=1e-7, rtol=1e-5)
    assert (gradients.flatten(2).std(dim=2) > 0).any()  # G varies over positions
    ours = GRADIENT_CAMS[name](activations, gradients)
    assert ours.amax() > 0
    if name == "eigengradcam":
        _assert_eigen_matches(gradients * activations, ours, output)
        return
    scale = torch.from_numpy(raw).abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    assert_close(ours / scale, torch.from_numpy(raw) / scale, atol=1e-4, rtol=0)
    assert_close(normalise(ours), torch.from_numpy(output), atol=1e-4, rtol=0)


# -------------------------------------------------------------------------------------- exact toy values


def _toy() -> Classifier:
    """``A = (x, 2x)`` (1×1 conv), head: mean → identity → ReLU → ``z = 3·a₀ − a₁ − 2``; so ``G = (3, −1)/hw``."""
    model = Classifier("toy", nn.Conv2d(1, 2, 1, bias=False), channels=2, hidden=2)
    with torch.no_grad():
        model.features.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        model.head[3].weight.copy_(torch.eye(2))
        model.head[3].bias.zero_()
        model.head[5].weight.copy_(torch.tensor([[3.0, -1.0]]))
        model.head[5].bias.fill_(-2.0)
    return model


TOY_X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[4.0, 3.0], [2.0, 1.0]]]])  # logits 7.5 − 5 − 2 = 0.5 for both


def test_toy_gradients_and_exact_maps():
    model = _toy()
    inputs = feature_gradients(model, TOY_X, classes=torch.tensor([1, 0]))
    assert inputs.logits.tolist() == [0.5, 0.5]
    expected_g = torch.tensor([0.75, -0.25])[None, :, None, None] * torch.tensor([1.0, -1.0])[:, None, None, None]
    assert torch.equal(inputs.gradients, expected_g.expand(2, 2, 2, 2))
    result = compute_cams(model, TOY_X, tuple(CAM_METHODS), classes=torch.tensor([1, 0]))
    x0, x1 = TOY_X[0, 0], TOY_X[1, 0]
    # image 0, class 1: Σ_k w_k A_k = 0.75·x − 0.25·2x = 0.25·x; image 1, class 0: −0.25·x < 0 → 0
    assert torch.equal(result.raw["gradcam"], torch.stack([0.25 * x0, torch.zeros(2, 2)]))
    assert torch.equal(result.raw["hirescam"], torch.stack([0.25 * x0, torch.zeros(2, 2)]))
    # Layer-CAM keeps positive gradients only: image 0: 0.75·x; image 1: 0.25·2x
    assert torch.equal(result.raw["layercam"], torch.stack([0.75 * x0, 0.5 * x1]))
    # XGrad-CAM: w_k = G_k·Σx_k / (Σx_k + 1e-7)
    w0, w1 = 0.75 * 10 / (10 + 1e-7), -0.25 * 20 / (20 + 1e-7)
    assert_close(result.raw["xgradcam"], torch.stack([(w0 + 2 * w1) * x0, torch.zeros(2, 2)]))
    # Grad-CAM++: one positive-gradient channel per image; α = G²/(2G² + ΣA·G³ + 1e-6), w = hw·α·G
    a0 = 0.75**2 / (2 * 0.75**2 + 10 * 0.75**3 + 1e-6)
    a1 = 0.25**2 / (2 * 0.25**2 + 20 * 0.25**3 + 1e-6)
    assert_close(result.raw["gradcampp"], torch.stack([4 * a0 * 0.75 * x0, 4 * a1 * 0.25 * 2 * x1]))
    # EigenGrad-CAM: G⊙A = x·(±0.75, ∓0.5) has rank 1; centred projection ±(x − 2.5)·|(0.75, 0.5)|, sign fixed
    norm = (0.75**2 + 0.5**2) ** 0.5
    expected = torch.stack([torch.relu((x0 - 2.5) * norm), torch.relu(-(x1 - 2.5) * norm)])
    assert_close(result.raw["eigengradcam"], expected)
    assert torch.equal(normalise(result.raw["gradcam"])[0], (x0 - 1) / 3)


def test_method_functions_on_hand_set_tensors():
    a = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]], [[0.0, 3.0], [1.0, 0.0]]]])  # (1, 2, 2, 2)
    g = torch.tensor([[[[2.0, 0.0], [-2.0, 4.0]], [[-1.0, 1.0], [-1.0, -3.0]]]])
    # Grad-CAM: w = (1, −1) → A₀ − A₁ = [[1, −3], [−1, 2]] → ReLU
    assert torch.equal(gradcam(a, g), torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]))
    # Layer-CAM: ReLU(G)⊙A summed: [[2, 0], [0, 8]] + [[0, 3], [0, 0]]
    assert torch.equal(layercam(a, g), torch.tensor([[[2.0, 3.0], [0.0, 8.0]]]))
    # HiResCAM: G⊙A summed: [[2, 0], [0, 8]] + [[0, 3], [−1, 0]] → ReLU
    assert torch.equal(hirescam(a, g), torch.tensor([[[2.0, 3.0], [0.0, 8.0]]]))
    # XGrad-CAM: w₀ = 10/3, w₁ = 2/4 (eps aside)
    assert_close(xgradcam(a, g), torch.relu(10 / 3 * a[0, 0] + 0.5 * a[0, 1])[None])
    assert gradcampp(a, torch.zeros_like(g)).abs().sum() == 0  # α := 0 where G = 0, no 0/0
    assert eigengradcam(a, g).shape == (1, 2, 2)


# ----------------------------------------------------------------------------------- modes, grads, shapes


def test_modes_are_restored_also_on_error():
    model = _toy().train()
    model.head[2].eval()  # a mixed state survives
    before = [m.training for m in model.modules()]
    compute_cams(model, TOY_X)
    assert [m.training for m in model.modules()] == before
    with pytest.raises(CxrError, match="one class per image"):
        compute_cams(model, TOY_X, classes=torch.tensor([1, 0, 1]))
    assert [m.training for m in model.modules()] == before
    model.eval()
    compute_cams(model, TOY_X)
    assert not any(m.training for m in model.modules())


def test_dropout_is_off_while_explaining():
    model = _toy().train()
    first = compute_cams(model, TOY_X, ("gradcam",))
    second = compute_cams(model, TOY_X, ("gradcam",))
    assert torch.equal(first.raw["gradcam"], second.raw["gradcam"]) and first.logits.tolist() == [0.5, 0.5]


def test_real_backbone_no_parameter_grad_under_no_grad_and_shapes():
    torch.manual_seed(1)
    model = build_classifier("resnet50").train()
    images = torch.randn(2, 1, 64, 64)  # the fixture's shape: oneDNN's one-off set-up per shape is slow on a CPU
    with torch.no_grad():
        result = compute_cams(model, images, ("gradcam", "layercam"))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert result.logits.shape == (2,) and result.classes.dtype == torch.long
    assert not result.logits.requires_grad and not result.maps["gradcam"].requires_grad
    assert result.raw["gradcam"].shape == (2, 2, 2) and result.maps["layercam"].shape == (2, 64, 64)
    for maps in result.maps.values():
        assert maps.min() >= 0 and maps.max() <= 1
        spans = maps.amax(dim=(1, 2)) - maps.amin(dim=(1, 2))
        assert ((spans == 1) | (spans == 0)).all()


def test_works_inside_inference_mode():
    model = _toy()
    expected = compute_cams(model, TOY_X, tuple(CAM_METHODS))
    with torch.inference_mode():
        images = TOY_X.clone()
        result = compute_cams(model, images, tuple(CAM_METHODS))
    for name in CAM_METHODS:
        assert torch.equal(result.raw[name], expected.raw[name])


# ------------------------------------------------------------------------------------------------- targets


def test_class_scores_and_resolve_targets():
    logits = torch.tensor([2.0, -1.0, 0.0])
    assert class_scores(logits, torch.tensor([1, 0, 0])).tolist() == [2.0, 1.0, -0.0]
    assert resolve_targets(logits, "predicted").tolist() == [1, 0, 0]
    assert resolve_targets(logits, "true", torch.tensor([0.0, 1.0, 1.0])).tolist() == [0, 1, 1]
    with pytest.raises(CxrError, match="needs the images' labels"):
        resolve_targets(logits, "true")
    with pytest.raises(CxrError, match="0 \\(No Finding\\) or 1"):
        resolve_targets(logits, "true", torch.tensor([0, 2, 1]))
    with pytest.raises(CxrError, match="unknown"):
        resolve_targets(logits, "best")  # type: ignore[arg-type]
    with pytest.raises(CxrError, match="gradcam"):
        compute_cams(_toy(), TOY_X, ("gradcam", "fullgrad"))


def test_true_target_uses_the_labels():
    result = compute_cams(_toy(), TOY_X, ("layercam",), target="true", labels=torch.tensor([0, 1]))
    assert result.classes.tolist() == [0, 1]
    assert torch.equal(result.raw["layercam"][0], 0.5 * TOY_X[0, 0])  # class 0 of image 0: 0.25·2x


def test_class_zero_is_explained_with_negated_gradients():
    torch.manual_seed(2)
    model = Classifier("toy", nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()), channels=8, hidden=16)
    images = torch.randn(3, 1, 8, 8)
    positive = feature_gradients(model, images, classes=torch.tensor([1, 1, 1]))
    mixed = compute_cams(model, images, tuple(CAM_METHODS), classes=torch.tensor([1, 0, 1]))
    sign = torch.tensor([1.0, -1.0, 1.0])[:, None, None, None]
    for name, method in GRADIENT_CAMS.items():
        assert_close(mixed.raw[name], method(positive.activations, positive.gradients * sign), atol=0, rtol=0)
    assert torch.equal(mixed.logits, positive.logits)


def test_pneumonia_and_decision_cams_from_one_pass_equal_two_separate_calls():
    torch.manual_seed(3)
    model = Classifier("toy", nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()), channels=8, hidden=16)
    images = torch.randn(4, 1, 8, 8)
    classes = torch.tensor([0, 1, 0, 1])
    both = compute_pneumonia_and_decision_cams(model, images, tuple(CAM_METHODS), classes)
    pneumonia = compute_cams(model, images, tuple(CAM_METHODS), classes=torch.ones(4, dtype=torch.long))
    decision = compute_cams(model, images, tuple(CAM_METHODS), classes=classes)
    assert both.pneumonia.classes.tolist() == [1, 1, 1, 1] and both.decision.classes.tolist() == [0, 1, 0, 1]
    for name in CAM_METHODS:
        assert_close(both.pneumonia.maps[name], pneumonia.maps[name], atol=0, rtol=0)
        assert_close(both.decision.maps[name], decision.maps[name], atol=0, rtol=0)
        assert_close(both.decision.raw[name], decision.raw[name], atol=0, rtol=0)
    with pytest.raises(CxrError, match="classes"):
        compute_pneumonia_and_decision_cams(model, images, ("gradcam",), torch.tensor([0, 2, 0, 1]))


# ------------------------------------------------------------------------------------ normalise and upsample


def test_normalise_per_image_and_constant_maps():
    maps = torch.tensor([[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]], [[-4.0, 0.0], [-2.0, -4.0]]])
    out = normalise(maps)
    assert torch.equal(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # constant → zeros, no NaN
    assert torch.equal(out[2], torch.tensor([[0.0, 1.0], [0.5, 0.0]]))


def test_upsample_is_bilinear_with_half_pixel_centres():
    out = upsample(torch.tensor([[[0.0, 1.0]]]), (1, 4))
    assert torch.equal(out, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))
    assert upsample(torch.rand(2, 2, 3), (64, 96)).shape == (2, 64, 96)
