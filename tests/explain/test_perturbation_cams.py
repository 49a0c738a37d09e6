"""Score-CAM and Ablation-CAM: equality with pytorch-grad-cam 1.5.7 (``ScoreCAM``, ``AblationCAM``), exact values on
a toy model, batching, both classes from one pass.

pytorch-grad-cam (pgc) explains each image for one target per image; the study's binary targets are defined here
(design.md "Traps"): ``out[0]`` (the logit) for Pneumonia, ``-out[0]`` for No Finding. Its maps are compared end to end
at the input size (its cv2 resize against our bilinear upsampling, equal to 1e-4 as in test_cam.py) and its channel
weights (``get_cam_weights``) directly. Score-CAM is compared on a small random CNN classifier (every one of its B·K
masked images runs the whole model, in pgc too: on a real backbone that is seconds per image); Ablation-CAM also on
ResNet-18 (both sides run only the head per ablated copy: pgc replaces the target layer, ``features``, by its
ablation layer). Every backbone: test_backbone_oracles.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pgc_adapters import Logits, targets
from pytorch_grad_cam import AblationCAM, ScoreCAM
from torch import nn
from torch.testing import assert_close

from cxrexplain.errors import CxrError
from cxrexplain.explain.cam import (
    PERTURBATION_CAMS,
    ablation_logits,
    compute_cams,
    compute_pneumonia_and_decision_cams,
    feature_gradients,
    score_logits,
)
from cxrexplain.models.backbones import Classifier, build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

PGC = {"scorecam": ScoreCAM, "ablationcam": AblationCAM}


def _small_cnn() -> Classifier:
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Conv2d(6, 10, 3, padding=1), nn.ReLU()
    )
    return Classifier("small", features, channels=10, hidden=8).eval()


def _pgc(name: str, model: Classifier, images: torch.Tensor, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """pgc's maps at the input size and its channel weights for ``classes``."""
    kwargs = {"batch_size": 7} if name == "ablationcam" else {}
    with PGC[name](Logits(model), [model.features], **kwargs) as cam:
        maps = cam(images, targets(classes))
        with torch.no_grad():
            activations = model.features(images).numpy()
        weights = cam.get_cam_weights(images, model.features, targets(classes), activations, None)
    return maps, np.asarray(weights)


@pytest.mark.parametrize("name", list(PERTURBATION_CAMS))
def test_equals_pytorch_grad_cam_on_a_small_cnn(name):
    model = _small_cnn()
    torch.manual_seed(1)
    images = torch.randn(3, 1, 32, 32)
    classes = [1, 0, 1]
    ours = compute_cams(model, images, (name,), classes=torch.tensor(classes), batch_size=4)
    inputs = feature_gradients(model, images, classes=torch.tensor(classes))
    assert inputs.activations.amin() == 0  # pgc's AblationLayer ablates to 0 only then (else to min − 1e7)
    maps, weights = _pgc(name, model, images, classes)
    sign = torch.tensor([1.0, -1.0, 1.0])
    logits = PERTURBATION_CAMS[name].channel_logits(model, images, inputs.activations, inputs.activations, 4)
    ours_weights = PERTURBATION_CAMS[name].weights(logits * sign[:, None], inputs.logits * sign)
    assert_close(ours_weights, torch.from_numpy(weights).float(), atol=1e-4, rtol=1e-4)
    raw = ours.raw[name]
    assert raw.shape == (3, 8, 8) and (raw.amax(dim=(1, 2)) > 0).all()  # no image's map is empty
    assert_close(ours.maps[name], torch.from_numpy(maps), atol=1e-4, rtol=0)


def test_ablation_cam_equals_pytorch_grad_cam_on_resnet18():
    torch.manual_seed(0)
    model = build_classifier("resnet18").eval()
    images = torch.randn(2, 1, 64, 64)
    classes = [1, 0]
    ours = compute_cams(model, images, ("ablationcam",), classes=torch.tensor(classes), batch_size=256)
    maps, weights = _pgc("ablationcam", model, images, classes)
    inputs = feature_gradients(model, images, classes=torch.tensor(classes))
    logits = ablation_logits(model, images, inputs.activations, inputs.activations, 256)
    sign = torch.tensor([1.0, -1.0])
    ours_weights = PERTURBATION_CAMS["ablationcam"].weights(logits * sign[:, None], inputs.logits * sign)
    assert_close(ours_weights, torch.from_numpy(weights).float(), atol=1e-4, rtol=1e-3)
    assert (ours.raw["ablationcam"].amax(dim=(1, 2)) > 0).all()
    assert_close(ours.maps["ablationcam"], torch.from_numpy(maps), atol=1e-4, rtol=0)


# -------------------------------------------------------------------------------------- exact toy values


def _toy() -> Classifier:
    """``A = (ReLU(x), ReLU(−x))``, head: mean → identity → ReLU → ``z = 3·p₀ − p₁``."""
    model = Classifier("toy", nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU()), channels=2, hidden=2)
    with torch.no_grad():
        model.features[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        model.head[3].weight.copy_(torch.eye(2))
        model.head[3].bias.zero_()
        model.head[5].weight.copy_(torch.tensor([[3.0, -1.0]]))
        model.head[5].bias.zero_()
    return model.eval()


X = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]]])  # A₀ = [[1, 0], [3, 0]], A₁ = [[0, 2], [0, 4]]; p = (1, 1.5), z = 1.5
A0, A1 = torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 4.0]])


def test_ablation_cam_toy_values_and_equal_classes():
    # A₀ := 0: p = (0, 1.5), z₀ = −1.5; A₁ := 0: p = (1, 0), z₁ = 3. Class 1 (y = 1.5): w = (3/1.5, −1.5/1.5) = (2, −1)
    inputs = feature_gradients(_toy(), X, classes=torch.tensor([1]))
    assert inputs.logits.tolist() == [1.5]
    assert ablation_logits(_toy(), X, inputs.activations, inputs.activations, 1).tolist() == [[-1.5, 3.0]]
    for c in (1, 0):  # class 0 (y = −1.5): ((−1.5 + 1.5) / −1.5 ... ) the same weights, the same map
        result = compute_cams(_toy(), X, ("ablationcam",), classes=torch.tensor([c]))
        assert torch.equal(result.raw["ablationcam"][0], torch.relu(2 * A0 - A1))  # [[2, 0], [6, 0]]


def test_score_cam_toy_values():
    # masks (align_corners=True from 2×2 to 2×2 is the identity): M₀ = A₀/3, M₁ = A₁/4 (+1e-8 aside);
    # x⊙M₀ = [[1/3, 0], [3, 0]] → p = (10/12, 0), z₀ = 2.5; x⊙M₁ = [[0, −1], [0, −4]] → p = (0, 1.25), z₁ = −1.25
    inputs = feature_gradients(_toy(), X, classes=torch.tensor([1]))
    assert_close(score_logits(_toy(), X, inputs.activations, inputs.activations, 2), torch.tensor([[2.5, -1.25]]))
    for c, (s0, s1) in ((1, (2.5, -1.25)), (0, (-2.5, 1.25))):
        w0, w1 = math.exp(s0) / (math.exp(s0) + math.exp(s1)), math.exp(s1) / (math.exp(s0) + math.exp(s1))
        result = compute_cams(_toy(), X, ("scorecam",), classes=torch.tensor([c]))
        assert_close(result.raw["scorecam"][0], w0 * A0 + w1 * A1)


# ------------------------------------------------------------------------------------ batching and classes


def test_results_do_not_depend_on_the_batch_size_and_both_classes_come_from_one_pass():
    model = _small_cnn()
    torch.manual_seed(2)
    images = torch.randn(3, 1, 32, 32)
    classes = torch.tensor([0, 1, 0])
    names = tuple(PERTURBATION_CAMS)
    one = compute_cams(model, images, names, classes=classes, batch_size=1)
    many = compute_cams(model, images, names, classes=classes, batch_size=29)  # chunks span images
    both = compute_pneumonia_and_decision_cams(model, images, names, classes, batch_size=5)
    ones = compute_cams(model, images, names, classes=torch.ones(3, dtype=torch.long))
    for name in names:
        assert_close(one.raw[name], many.raw[name], atol=1e-6, rtol=1e-5)
        assert_close(both.decision.raw[name], many.raw[name], atol=1e-6, rtol=1e-5)
        assert_close(both.pneumonia.raw[name], ones.raw[name], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(both.decision.raw["scorecam"], both.pneumonia.raw["scorecam"])  # softmax of ±z differs
    with pytest.raises(CxrError, match="batch size"):
        compute_cams(model, images, ("scorecam",), batch_size=0)


def test_modes_are_restored_and_no_parameter_gradients_are_left():
    model = _small_cnn().train()
    compute_cams(model, torch.randn(2, 1, 32, 32), tuple(PERTURBATION_CAMS))
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_ablation_cam_on_the_vit_ablates_its_token_map_as_torchvisions_own_forward_would():
    """The ViT's CAM layer is its last block's ``ln_1`` output (patch tokens as a grid): an ablated channel must give
    the logit torchvision's own ViT gives with that channel of ``ln_1``'s patch tokens set to 0 (a forward hook: an
    oracle independent of ``logits_from_cam``); checked on a sample of the 768 channels. (pgc's ``AblationLayerVit``
    ablates to ``min − 1e7`` where A has negative values, and the class token too: a convention; compared with it set
    to 0 on the patch tokens in test_backbone_oracles.py's heavy tier.)"""
    from cxrexplain.models.backbones import BACKBONES, from_torchvision

    torch.manual_seed(0)
    reference = BACKBONES["vit_b_16"].torchvision_model(32).eval()
    model = from_torchvision("vit_b_16", reference).eval()
    reference.heads = model.head
    images = torch.randn(2, 1, 32, 32)
    inputs = feature_gradients(model, images, classes=torch.tensor([1, 0]))
    logits = ablation_logits(model, images, inputs.features, inputs.activations, 512)
    assert logits.shape == (2, 768)
    channel = {}

    def ablate(module, args, output):
        output = output.clone()
        output[:, 1:, channel["k"]] = 0  # the patch tokens' channel k; the class token kept
        return output

    handle = reference.encoder.layers[-1].ln_1.register_forward_hook(ablate)
    try:
        for k in (0, 5, 300, 767):
            channel["k"] = k
            with torch.no_grad():
                expected = reference(images).squeeze(1)  # its first convolution is the gray one (shared)
            assert_close(logits[:, k], expected, atol=1e-4, rtol=1e-4)
    finally:
        handle.remove()
    maps = compute_cams(model, images, ("ablationcam",), classes=torch.tensor([1, 0]), batch_size=512)
    assert maps.raw["ablationcam"].shape == (2, 2, 2) and torch.isfinite(maps.maps["ablationcam"]).all()
