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

Two families share the registry :data:`CAM_METHODS`. The gradient CAMs (:data:`GRADIENT_CAMS`) map ``(A, G)`` of
shape (B, K, h, w) to raw maps (B, h, w) at feature resolution. The perturbation CAMs (:data:`PERTURBATION_CAMS`:
Score-CAM, Ablation-CAM) weight the channels of ``A`` by the scores of perturbed copies of each image instead, so they
also need the model and the images: each is a :class:`PerturbationCam`, whose perturbed logits are computed in
batches of copies (B·K forward passes of the whole model for Score-CAM, of the head alone for Ablation-CAM). Both
follow pytorch-grad-cam 1.5.7 exactly (its formulas, eps values and ReLU placement: it applies a ReLU to every
method's map), except for the sign of EigenGrad-CAM's principal component, which is fixed here (see
:func:`principal_projection`). :func:`compute_cams` is the entry point: it computes ``A`` and ``G`` once per batch
(and each perturbation CAM's logits once) and returns, per method, the raw maps and the maps upsampled to the input
size and min-max normalised per image.

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
    features: torch.Tensor | None = None  # F = features(x), detached: A itself for a CNN, the token map for a ViT


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
    return CamInputs(activations.detach(), gradients, logits.detach(), chosen, features.detach())


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


GRADIENT_CAMS: dict[str, CamMethod] = names.registered(
    "GRADIENT_CAMS",
    names.GRADIENT_CAMS,
    {
        "gradcam": gradcam,
        "gradcampp": gradcampp,
        "xgradcam": xgradcam,
        "layercam": layercam,
        "hirescam": hirescam,
        "eigengradcam": eigengradcam,
    },
)
"""The gradient CAMs by name; adding one is a function of ``(A, G)``, an entry here and its name in
``names.GRADIENT_CAMS``."""


# ------------------------------------------------------------------------------------- perturbation CAMs


def _logits_from_cam(model: Classifier, features: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """The logits (B,) of the model whose CAM layer outputs ``activations`` A, given ``features`` F = features(x).

    :meth:`Classifier.logits_from_cam`: for a CNN A = F and the logits are ``head(A)``; a ViT's A is its last block's
    ``ln_1`` token map, and the block's residual needs F too. The one place the perturbation CAMs reach the model above
    the CAM layer."""
    return model.logits_from_cam(features, activations)


def _pairs(batch: int, channels: int, size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(image, channel) index pairs of a (batch, channels) grid in image-major order, ``size`` pairs at a time."""
    flat = torch.arange(batch * channels, device=device)
    for part in flat.split(size):
        yield part // channels, part % channels


def ablation_logits(
    model: Classifier, images: torch.Tensor, features: torch.Tensor, activations: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``z_k``: the logit of each image with channel k of its feature map set to 0, (B, K); ``batch_size`` ablated
    copies go through the head at a time (the head only: ``images`` are not needed)."""
    batch, channels = activations.shape[:2]
    out = activations.new_empty(batch, channels)
    for rows, ks in _pairs(batch, channels, batch_size, activations.device):
        ablated = activations[rows].clone()
        ablated[torch.arange(len(rows), device=ablated.device), ks] = 0
        out[rows, ks] = _logits_from_cam(model, features[rows], ablated)
    return out


def ablation_weights(channel_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``w_k = (y − y_k) / y``: the relative drop of the explained score; 0 where ``y = 0`` (no relative drop)."""
    y = scores[:, None]
    return torch.where(y != 0, (y - channel_scores) / torch.where(y != 0, y, torch.ones_like(y)), 0.0)


def score_logits(
    model: Classifier, images: torch.Tensor, features: torch.Tensor, activations: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``z_k``: the logit of each image multiplied by its channel k's mask, (B, K); ``batch_size`` masked images go
    through the whole model at a time. The mask ``M_k`` is ``A_k`` upsampled bilinearly to the input size with
    ``align_corners=True`` (pytorch-grad-cam's ``UpsamplingBilinear2d``; the maps elsewhere use ``False``) and
    min-max scaled to [0, 1] with ``+1e-8`` in the denominator; masks are made per batch, never all at once."""
    batch, channels = activations.shape[:2]
    size = images.shape[-2:]
    out = activations.new_empty(batch, channels)
    for rows, ks in _pairs(batch, channels, batch_size, activations.device):
        masks = F.interpolate(activations[rows, ks][:, None], size=size, mode="bilinear", align_corners=True)
        flat = masks.flatten(1)
        low, high = flat.amin(dim=1)[:, None, None, None], flat.amax(dim=1)[:, None, None, None]
        masks = (masks - low) / (high - low + 1e-8)
        out[rows, ks] = model(images[rows] * masks).reshape(-1)
    return out


def score_weights(channel_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``w_k = softmax_k(y_k)``: the explained scores of the masked images, normalised over the channels."""
    return torch.softmax(channel_scores, dim=1)


@dataclass(frozen=True)
class PerturbationCam:
    """A CAM whose channel weights come from the scores of perturbed copies of each image.

    ``channel_logits(model, images, F, A, batch_size)`` returns ``z_k`` (B, K): the logit with channel k perturbed;
    ``weights(y_k, y)`` turns the explained class's scores (``y_k = ±z_k``, ``y = ±z``, the sign of the class) into
    channel weights (B, K); the map is ``ReLU(Σ_k w_k A_k)``. The logits are computed once for both explained classes.
    """

    channel_logits: Callable[[Classifier, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
    weights: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def maps(self, activations: torch.Tensor, logits: torch.Tensor, channel_logits: torch.Tensor, sign: torch.Tensor):
        """Raw maps (B, h, w) for the class whose score is ``sign · z`` per image (``sign`` (B,) of ±1)."""
        weights = self.weights(channel_logits * sign[:, None], logits * sign)
        return _weighted_sum(weights, activations)


PERTURBATION_CAMS: dict[str, PerturbationCam] = names.registered(
    "PERTURBATION_CAMS",
    names.PERTURBATION_CAMS,
    {
        "scorecam": PerturbationCam(score_logits, score_weights),
        "ablationcam": PerturbationCam(ablation_logits, ablation_weights),
    },
)
"""Score-CAM (Wang et al., 2020) and Ablation-CAM (Desai & Ramaswamy, 2020), as pytorch-grad-cam 1.5.7's ``ScoreCAM``
and ``AblationCAM`` (default ``ratio_channels_to_ablate=1``), batched over images and channels:

- Score-CAM: ``w_k = softmax_k(y(x ⊙ M_k))``, ``M_k`` channel k upsampled to the input and min-max scaled
  (:func:`score_logits`); B·K forward passes of the whole model. The inputs are in the network's normalised units, so
  masking moves a pixel towards 0, the mean gray (0.449), as pytorch-grad-cam does with normalised inputs.
- Ablation-CAM: ``w_k = (y − y_k) / y`` with ``y_k`` the score with ``A_k := 0`` (:func:`ablation_logits`); B·K
  passes of the head only. Ablated to 0 (the paper's ablation) on every backbone; pytorch-grad-cam ablates to 0 only
  when the image's map holds a 0 (else to ``min − 1e7``): the same on the six ReLU-ended CAM layers, not on
  EfficientNet-B0's (SiLU) or the ViT's (LayerNorm), where the tests compare with its ablation layer set to 0.
  With the single logit, class 0's ``y = −z`` gives the same weights as class 1's: ``(−z + z_k) / (−z)``, so the
  two classes' Ablation-CAMs are equal (the ratio's sign flips with the score's).
"""

CAM_METHODS: dict[str, CamMethod | PerturbationCam] = names.registered(
    "CAM_METHODS", names.CAMS, {**GRADIENT_CAMS, **PERTURBATION_CAMS}
)
"""Every CAM by name, both families: :data:`GRADIENT_CAMS` (functions of ``(A, G)``) and :data:`PERTURBATION_CAMS`
(:class:`PerturbationCam`, which need the model and the images). :func:`compute_cams` runs either."""


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


def _check_methods(methods: Sequence[str]) -> None:
    unknown = [name for name in methods if name not in CAM_METHODS]
    if unknown:
        raise CxrError(f"CAM methods {unknown}: unknown (available: {', '.join(CAM_METHODS)})")


def _perturbation_logits(
    model: Classifier, images: torch.Tensor, inputs: CamInputs, methods: Sequence[str], batch_size: int
) -> dict[str, torch.Tensor]:
    """Per perturbation CAM among ``methods``, its ``z_k`` (B, K) (:class:`PerturbationCam`), in eval mode."""
    wanted = [name for name in dict.fromkeys(methods) if name in PERTURBATION_CAMS]
    if not wanted:
        return {}
    if batch_size < 1:
        raise CxrError(f"CAM batch size must be >= 1, got {batch_size}")
    activations = inputs.activations
    features = inputs.features if inputs.features is not None else activations  # F = features(x)
    with evaluating(model), torch.inference_mode(False), torch.no_grad():
        x = images.to(activations.device)
        return {
            name: PERTURBATION_CAMS[name].channel_logits(model, x, features, activations, batch_size) for name in wanted
        }


def _raw_map(
    name: str,
    inputs: CamInputs,
    gradients: torch.Tensor,
    classes: torch.Tensor,
    channel_logits: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Method ``name``'s raw maps (B, h, w) explaining ``classes``, whose gradients are ``gradients``."""
    method = CAM_METHODS[name]
    if isinstance(method, PerturbationCam):
        sign = torch.where(classes == 1, 1.0, -1.0).to(inputs.logits.dtype)
        return method.maps(inputs.activations, inputs.logits, channel_logits[name], sign)
    return method(inputs.activations, gradients)


def compute_cams(
    model: Classifier,
    images: torch.Tensor,
    methods: Sequence[str] = ("gradcam",),
    classes: torch.Tensor | None = None,
    target: Target = "predicted",
    labels: torch.Tensor | None = None,
    batch_size: int = 16,
) -> CamResult:
    """CAMs of ``images`` (B, 1, H, W) for each of ``methods`` (names in :data:`CAM_METHODS`), on the model's device.

    Each image is explained for its own class: ``classes`` if given (0/1 per image), else the prediction
    (``target="predicted"``) or ``labels`` (``target="true"``). ``A`` and ``G`` are computed once for all methods
    (:func:`feature_gradients`); each raw map is upsampled to (H, W) and then min-max normalised per image. The
    perturbation CAMs (:data:`PERTURBATION_CAMS`) score ``batch_size`` perturbed copies per forward pass.
    """
    _check_methods(methods)
    inputs = feature_gradients(model, images, classes=classes, target=target, labels=labels)
    channel_logits = _perturbation_logits(model, images, inputs, methods, batch_size)
    size = (images.shape[-2], images.shape[-1])
    raw: dict[str, torch.Tensor] = {}
    maps: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in dict.fromkeys(methods):
            raw[name] = _raw_map(name, inputs, inputs.gradients, inputs.classes, channel_logits)
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
    batch_size: int = 16,
) -> TwoClassCams:
    """CAMs of class 1 (Pneumonia) for every image, and of ``classes[i]`` (the decision) for image ``i``.

    Without ``classes`` the decision is the prediction at ``threshold``: class 1 where ``sigmoid(z) > threshold``
    (computed in float64, the precision of every other use of the threshold), so one threshold defines both the
    outcomes and the explained class.

    One feature pass: with the single-logit head, the score of class 0 is ``−z``, so its gradient is ``−G`` of
    class 1's (exactly; autograd of a negation). The class-1 maps are the ones localisation is scored on (the boxes
    mark Pneumonia whatever the model predicts); the decision maps are the ones faithfulness is scored on. Equal to
    two calls of :func:`compute_cams` (tested). The perturbation CAMs' perturbed logits are likewise computed once
    (``batch_size`` copies per forward pass) and weighted for each class.
    """
    _check_methods(methods)
    ones = torch.ones(images.shape[0], dtype=torch.long)
    inputs = feature_gradients(model, images, classes=ones)
    channel_logits = _perturbation_logits(model, images, inputs, methods, batch_size)
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
            raw = {
                name: _raw_map(name, inputs, gradients, explained, channel_logits) for name in dict.fromkeys(methods)
            }
            maps = {name: normalise(upsample(r, size)) for name, r in raw.items()}
            results.append(CamResult(inputs.logits, explained, raw, maps))
    return TwoClassCams(inputs.logits, results[0], results[1])
