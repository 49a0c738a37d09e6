"""The CAM family, batched and native: one feature map and one gradient per batch, every method a formula on them.

Notation, per image: ``A`` (K, h, w) is the target layer's feature map (:meth:`Classifier.cam_input`), ``y`` the
score explained, ``G = ∂y/∂A`` and ``Σ_ij`` a sum over the h·w positions. The study's target is binary with a single
logit ``z``: the score of class 1 (Pneumonia) is ``y = z`` and that of class 0 (No Finding) is ``y = −z``, so
explaining class 0 uses ``−G``. Each image of a batch has its own class.

The core, :func:`feature_gradients`, runs ``F = features(x)`` and ``A = model.cam_input(F)`` without autograd, then
the logits from a detached ``A`` that requires grad (``model.logits_from_cam(F, A)``: ``head(A)`` for the CNNs, where
``A = F``; for the ViT the last encoder block with ``A`` as its attention's input, then its head), and takes
``G = torch.autograd.grad(Σ_b y_b, A)``: nothing is back-propagated below the target layer, no parameter receives a
``.grad`` and no hook is registered. What runs after ``A`` works image by image (pooling, linear layers, LayerNorm and
attention within one image's tokens, no BatchNorm; Dropout is off in eval mode), so the gradient of the batch's summed
score with respect to ``A_b`` is the gradient of ``y_b`` alone.

The methods (:data:`CAM_METHODS`) map ``(A, G)`` of shape (B, K, h, w) to raw maps (B, h, w) at feature resolution.
They follow pytorch-grad-cam 1.5.7 exactly (its formulas, eps values and ReLU placement: it applies a ReLU to every
method's map), except for the sign of EigenGrad-CAM's principal component, which is fixed here (see
:func:`principal_projection`). :func:`compute_cams` is the entry point: it computes ``A`` and ``G`` once per batch
and returns, per method, the raw maps and the maps upsampled to the input size and min-max normalised per image.

With the study's head on a CNN, which average-pools ``A`` first, ``G_k,ij = (1/hw) ∂y/∂p_k`` does not depend on the
position: HiResCAM then equals Grad-CAM (up to rounding) and XGrad-CAM equals it up to its eps; Layer-CAM becomes
Grad-CAM with the negative channel weights dropped, and Grad-CAM++ reweights channels only. The formulas differ for
heads that do not pool first (the ViT's attention makes ``G`` vary over the positions); the tests check them on such
a head and on the ViT too.

Gradients are needed, so call this outside ``torch.inference_mode``. Lightning's evaluation loops
(``trainer.validate/test/predict``) run under it: explain outside them. :func:`feature_gradients` does step out of
inference mode locally (and out of ``torch.no_grad``), copying images made under it, but a model whose parameters
were created under inference mode cannot take part in autograd.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cxrexplain import names
from cxrexplain.errors import CxrError
from cxrexplain.models.backbones import Classifier

Target = Literal["predicted", "true"]
"""Which class each image is explained for: the model's prediction (``logit > 0``) or the true label."""

CamMethod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``method(activations, gradients) -> raw maps``: (B, K, h, w) and (B, K, h, w) to (B, h, w)."""

_SPATIAL = (2, 3)


# --------------------------------------------------------------------------------------------- targets and the core


def class_scores(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The score explained per image: ``z`` for class 1 (Pneumonia), ``−z`` for class 0 (No Finding); shape (B,)."""
    return torch.where(classes.to(logits.device) == 1, logits, -logits)


def _check_classes(classes: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if classes.shape != (batch,):
        raise CxrError(f"{what}: expected one class per image, shape ({batch},), got {tuple(classes.shape)}")
    if classes.is_floating_point() and not torch.equal(classes, classes.round()):
        raise CxrError(f"{what}: classes must be 0 (No Finding) or 1 (Pneumonia), got non-integer values")
    classes = classes.long()
    if not ((classes == 0) | (classes == 1)).all():
        raise CxrError(f"{what}: classes must be 0 (No Finding) or 1 (Pneumonia), got {classes.unique().tolist()}")
    return classes


def resolve_targets(logits: torch.Tensor, target: Target, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The class to explain per image (LongTensor (B,) on the logits' device).

    ``predicted``: 1 where ``logit > 0`` (probability above 0.5), else 0. ``true``: ``labels`` (0 or 1 per image).
    """
    if target == "predicted":
        return (logits.detach() > 0).long()
    if target == "true":
        if labels is None:
            raise CxrError("explain target 'true' needs the images' labels")
        return _check_classes(torch.as_tensor(labels), logits.shape[0], "labels").to(logits.device)
    raise CxrError(f"explain target {target!r}: unknown (available: predicted, true)")


@dataclass(frozen=True)
class CamInputs:
    """What every CAM method needs, for one batch: ``A``, ``G = ∂y/∂A``, the logits and the classes explained."""

    activations: torch.Tensor  # (B, K, h, w), detached
    gradients: torch.Tensor  # (B, K, h, w), of each image's own score
    logits: torch.Tensor  # (B,), detached
    classes: torch.Tensor  # (B,) long: 1 = Pneumonia (score z), 0 = No Finding (score −z)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block; every submodule's own ``training`` flag is restored afterwards, also on error."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def feature_gradients(
    model: Classifier,
    images: torch.Tensor,
    classes: torch.Tensor | None = None,
    target: Target = "predicted",
    labels: torch.Tensor | None = None,
) -> CamInputs:
    """``A`` (the target layer's map) and ``G = ∂y/∂A`` for a batch, back-propagating from the logit to ``A`` only.

    ``F = features(x)`` and ``A = model.cam_input(F)`` run without autograd; the logits are
    ``model.logits_from_cam(F, A)`` on a detached ``A`` that requires grad (for a CNN ``A = F`` and the logits are
    ``head(A)``; for the ViT, the last encoder block with ``A`` as its attention's input, then its head).

    ``images`` (B, 1, H, W) are moved to the model's device. ``classes`` (0/1 per image) takes precedence over
    ``target``; ``target="true"`` needs ``labels``. The model is in eval mode during the call and every module's
    mode is restored afterwards; no parameter gradient is accumulated and no hook is registered. Works under
    ``torch.no_grad`` (grad is enabled locally).
    """
    if images.ndim != 4:
        raise CxrError(f"images: expected a batch of shape (B, 1, H, W), got {tuple(images.shape)}")
    device = _device(model)
    with evaluating(model), torch.inference_mode(False):
        x = images.to(device)
        if x.is_inference():  # made under inference mode: a normal copy may enter autograd
            x = x.clone()
        with torch.no_grad():
            features = model.features(x)
            activations = model.cam_input(features)
        activations = activations.detach().requires_grad_()
        with torch.enable_grad():
            logits = model.logits_from_cam(features, activations)
            if classes is None:
                chosen = resolve_targets(logits, target, labels)
            else:
                chosen = _check_classes(torch.as_tensor(classes), logits.shape[0], "classes").to(logits.device)
            (gradients,) = torch.autograd.grad(class_scores(logits, chosen).sum(), activations)
    return CamInputs(activations.detach(), gradients, logits.detach(), chosen)


# ------------------------------------------------------------------------------------------------------- methods


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``ReLU(Σ_k w_k A_k)`` for channel weights (B, K)."""
    return torch.relu((weights[:, :, None, None] * activations).sum(dim=1))


def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017).

    ``w_k = (1/hw) Σ_ij G_k,ij``;  ``map = ReLU(Σ_k w_k A_k)``.
    """
    return _weighted_sum(gradients.mean(dim=_SPATIAL), activations)


def gradcampp(activations: torch.Tensor, gradients: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al., 2018), the closed form of its Eq. 19 with first-order gradients.

    ``α_k,ij = G² / (2 G² + (Σ_ab A_k,ab) G³ + eps)`` (elementwise in ``G = G_k,ij``), set to 0 where ``G = 0``;
    ``w_k = Σ_ij α_k,ij ReLU(G_k,ij)``;  ``map = ReLU(Σ_k w_k A_k)``. ``eps = 1e-6`` as in pytorch-grad-cam; it is
    absolute, so where ``G²`` is not much larger than it the coefficients shrink.
    """
    squared = gradients.pow(2)
    cubed = squared * gradients
    sum_activations = activations.sum(dim=_SPATIAL, keepdim=True)
    alpha = squared / (2 * squared + sum_activations * cubed + eps)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    weights = (torch.relu(gradients) * alpha).sum(dim=_SPATIAL)
    return _weighted_sum(weights, activations)


def xgradcam(activations: torch.Tensor, gradients: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """XGrad-CAM (Fu et al., 2020).

    ``w_k = Σ_ij G_k,ij A_k,ij / (Σ_ij A_k,ij + eps)``;  ``map = ReLU(Σ_k w_k A_k)``; ``eps = 1e-7``.
    """
    sum_activations = activations.sum(dim=_SPATIAL, keepdim=True)
    weights = (gradients * activations / (sum_activations + eps)).sum(dim=_SPATIAL)
    return _weighted_sum(weights, activations)


def layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Layer-CAM (Jiang et al., 2021).

    ``map = ReLU(Σ_k ReLU(G_k) ⊙ A_k)``: positive gradients weight each position separately.
    """
    return torch.relu((torch.relu(gradients) * activations).sum(dim=1))


def hirescam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin, 2020).

    ``map = ReLU(Σ_k G_k ⊙ A_k)``: the gradients weight each position, signed (no ReLU on ``G``); Grad-CAM with the
    spatial mean of ``G`` replaced by ``G`` itself.
    """
    return torch.relu((gradients * activations).sum(dim=1))


def principal_projection(maps: torch.Tensor) -> torch.Tensor:
    """Each image's (K, h, w) stack projected on its first principal component, as pytorch-grad-cam does.

    Per image: ``X`` (hw, K) with NaN set to 0, centred per channel over the positions (``X − mean_ij X``),
    ``X = U S Vᵀ``, projection ``p = X v₁`` reshaped to (h, w). The sign of ``v₁`` is arbitrary in an SVD
    (pytorch-grad-cam keeps whatever LAPACK returns); here it is fixed so that ``Σ_k v₁,k ≥ 0``, i.e. ``p``
    correlates positively with the centred channel sum ``Σ_k X_k`` (for ``X = G ⊙ A``: HiResCAM's evidence).
    Returns (B, h, w), signed.
    """
    batch, channels, height, width = maps.shape
    x = torch.where(torch.isnan(maps), torch.zeros_like(maps), maps).reshape(batch, channels, height * width)
    x = x.transpose(1, 2)  # (B, hw, K)
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    first = vh[:, 0, :]  # (B, K)
    sign = torch.where(first.sum(dim=1) < 0, -1.0, 1.0).to(first.dtype)
    projection = (x @ first.unsqueeze(2)).squeeze(2) * sign[:, None]
    return projection.reshape(batch, height, width)


def eigengradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """EigenGrad-CAM (Eigen-CAM, Muhammad & Yeasin, 2020, on gradient-weighted activations, as pytorch-grad-cam).

    ``map = ReLU(p)`` where ``p`` is :func:`principal_projection` of ``G ⊙ A``: the first principal component of
    the per-position vectors (``G_k,ij A_k,ij``)_k, centred over the positions, with its sign fixed.
    """
    return torch.relu(principal_projection(gradients * activations))


CAM_METHODS: dict[str, CamMethod] = names.registered(
    "CAM_METHODS",
    names.CAMS,
    {
        "gradcam": gradcam,
        "gradcampp": gradcampp,
        "xgradcam": xgradcam,
        "layercam": layercam,
        "hirescam": hirescam,
        "eigengradcam": eigengradcam,
    },
)
"""The CAM methods by name; adding one is a function of ``(A, G)``, an entry here and its name in ``names.CAMS``."""


# ------------------------------------------------------------------------------------------ maps and entry point


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max per image to [0, 1]: ``(m − min) / (max − min)``; a constant map becomes zeros. (B, ...) → same."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    scaled = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
    return scaled.reshape(maps.shape)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) of (B, h, w) maps to (B, H, W) = (B, *size)."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


@dataclass(frozen=True)
class CamResult:
    """CAMs of one batch: per method, ``raw`` maps (B, h, w) and ``maps`` (B, H, W) upsampled and normalised."""

    logits: torch.Tensor  # (B,)
    classes: torch.Tensor  # (B,) long: the class each map explains
    raw: Mapping[str, torch.Tensor]  # method -> (B, h, w) at the target layer's resolution, after the method's ReLU
    maps: Mapping[str, torch.Tensor]  # method -> (B, H, W) in [0, 1], max 1 unless the map is constant (then zeros)


def compute_cams(
    model: Classifier,
    images: torch.Tensor,
    methods: Sequence[str] = ("gradcam",),
    classes: torch.Tensor | None = None,
    target: Target = "predicted",
    labels: torch.Tensor | None = None,
) -> CamResult:
    """CAMs of ``images`` (B, 1, H, W) for each of ``methods`` (names in :data:`CAM_METHODS`), on the model's device.

    Each image is explained for its own class: ``classes`` if given (0/1 per image), else the prediction
    (``target="predicted"``) or ``labels`` (``target="true"``). ``A`` and ``G`` are computed once for all methods
    (:func:`feature_gradients`); each raw map is upsampled to (H, W) and then min-max normalised per image.
    """
    unknown = [name for name in methods if name not in CAM_METHODS]
    if unknown:
        raise CxrError(f"CAM methods {unknown}: unknown (available: {', '.join(CAM_METHODS)})")
    inputs = feature_gradients(model, images, classes=classes, target=target, labels=labels)
    size = (images.shape[-2], images.shape[-1])
    raw: dict[str, torch.Tensor] = {}
    maps: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in dict.fromkeys(methods):
            raw[name] = CAM_METHODS[name](inputs.activations, inputs.gradients)
            maps[name] = normalise(upsample(raw[name], size))
    return CamResult(inputs.logits, inputs.classes, raw, maps)


@dataclass(frozen=True)
class TwoClassCams:
    """CAMs of one batch for two explained classes from one feature pass: Pneumonia, and each image's own class."""

    logits: torch.Tensor  # (B,)
    pneumonia: CamResult  # every image explained as class 1
    decision: CamResult  # image i explained as classes[i]


def compute_pneumonia_and_decision_cams(
    model: Classifier,
    images: torch.Tensor,
    methods: Sequence[str],
    classes: torch.Tensor | Sequence[int] | None = None,
    threshold: float = 0.5,
) -> TwoClassCams:
    """CAMs of class 1 (Pneumonia) for every image, and of ``classes[i]`` (the decision) for image ``i``.

    Without ``classes`` the decision is the prediction at ``threshold``: class 1 where ``sigmoid(z) > threshold``
    (computed in float64, the precision of every other use of the threshold), so one threshold defines both the
    outcomes and the explained class.

    One feature pass: with the single-logit head, the score of class 0 is ``−z``, so its gradient is ``−G`` of
    class 1's (exactly; autograd of a negation). The class-1 maps are the ones localisation is scored on (the boxes
    mark Pneumonia whatever the model predicts); the decision maps are the ones faithfulness is scored on. Equal to
    two calls of :func:`compute_cams` (tested).
    """
    unknown = [name for name in methods if name not in CAM_METHODS]
    if unknown:
        raise CxrError(f"CAM methods {unknown}: unknown (available: {', '.join(CAM_METHODS)})")
    ones = torch.ones(images.shape[0], dtype=torch.long)
    inputs = feature_gradients(model, images, classes=ones)
    if classes is None:
        chosen = (torch.sigmoid(inputs.logits.double()) > threshold).long()
    else:
        chosen = _check_classes(torch.as_tensor(classes), images.shape[0], "classes")
    chosen = chosen.to(inputs.gradients.device)
    sign = torch.where(chosen == 1, 1.0, -1.0).to(inputs.gradients.dtype)[:, None, None, None]
    size = (images.shape[-2], images.shape[-1])
    results = []
    with torch.no_grad():
        for gradients, explained in ((inputs.gradients, inputs.classes), (inputs.gradients * sign, chosen)):
            raw = {name: CAM_METHODS[name](inputs.activations, gradients) for name in dict.fromkeys(methods)}
            maps = {name: normalise(upsample(r, size)) for name, r in raw.items()}
            results.append(CamResult(inputs.logits, explained, raw, maps))
    return TwoClassCams(inputs.logits, results[0], results[1])
