"""The names the config accepts from the registries that need torch: backbones, CAM and attribution methods, sanity
modes.

``config.py`` validates ``params.yaml`` in every command, including ``params``, ``download``, ``sample`` and
``split``, which never touch a tensor; importing the registries themselves to learn their names cost those commands
torch's import (4-6 s on this project's 2-core CPU machine, ``python -X importtime``). So the names live here, in the
order the registries list them, and each registry is built through :func:`registered`, which refuses at import time
a registry whose names differ from these (naming both lists): a method added to its registry but not here, or the
reverse, fails on the first import instead of being silently unavailable. Adding a backbone or a method is therefore
its entry in its registry plus its name here. The measures' registry (``explain/measures/registry.py``) needs no
copy: it imports torch only when a measure is computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

ARCHS: tuple[str, ...] = (
    "resnet50",
    "densenet121",
    "resnet18",
    "resnet101",
    "densenet161",
    "efficientnet_b0",
    "vgg16",
    "vit_b_16",
)
"""``models/backbones.py`` :data:`BACKBONES`: the study's two, ResNet-18 for CPU runs, then the related work's."""

PATCH_SIZES: dict[str, int] = {"vit_b_16": 16}
"""The backbones whose input side must be a multiple of a patch size (``BackboneSpec.patch`` in the registry, checked
equal at import), so that ``config.py`` can refuse a ``train.image_size`` they cannot take without importing torch."""

ACTIVATIONS: dict[str, str] = {
    "resnet50": "ReLU",
    "densenet121": "ReLU",
    "resnet18": "ReLU",
    "resnet101": "ReLU",
    "densenet161": "ReLU",
    "efficientnet_b0": "SiLU",
    "vgg16": "ReLU",
    "vit_b_16": "GELU",
}
"""Each backbone's non-linearity (``BackboneSpec.activation`` in the registry, checked equal at import; that the
torchvision modules have exactly it is tested); the study's head, the same on every backbone, adds one ReLU. It decides
where the methods defined through ReLU (:data:`RELU_METHODS`) apply, without importing torch."""

GRADIENT_CAMS: tuple[str, ...] = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigengradcam")
"""``explain/cam.py`` :data:`GRADIENT_CAMS`: formulas of the feature map and its gradient, one backward per batch; the
default of ``explain.cams``."""

PERTURBATION_CAMS: tuple[str, ...] = ("scorecam", "ablationcam")
"""``explain/cam.py`` :data:`PERTURBATION_CAMS`: channel weights from the scores of perturbed copies (one forward pass
of the model, or of the head, per channel and image); opt-in in ``explain.cams``, for their cost."""

CAMS: tuple[str, ...] = GRADIENT_CAMS + PERTURBATION_CAMS
"""``explain/cam.py`` :data:`CAM_METHODS`: both families."""

BASELINE_ATTRIBUTIONS: tuple[str, ...] = ("saliency", "integrated_gradients", "occlusion", "gradient_shap")
"""The study's captum baselines: the default of ``explain.attributions``."""

GRADIENT_ATTRIBUTIONS: tuple[str, ...] = ("input_x_gradient", "guided_backprop", "guided_gradcam", "deeplift")
"""Further gradient methods (the papers' comparisons); opt-in in ``explain.attributions``."""

SMOOTHGRAD_BASES: tuple[str, ...] = (
    "saliency",
    "input_x_gradient",
    "guided_backprop",
    "guided_gradcam",
    "deeplift",
    "integrated_gradients",
)
"""The gradient methods that have a SmoothGrad variant ``<method>_smoothgrad`` (captum's NoiseTunnel)."""

ATTRIBUTIONS: tuple[str, ...] = (
    BASELINE_ATTRIBUTIONS + GRADIENT_ATTRIBUTIONS + tuple(f"{name}_smoothgrad" for name in SMOOTHGRAD_BASES)
)
"""``explain/attributions.py`` :data:`ATTRIBUTION_METHODS`."""

RELU_METHODS: dict[str, str] = {
    "guided_backprop": "guided backpropagation changes only ReLU's backward pass: only the head's ReLU would be "
    "guided, and the backbone would pass the plain gradient",
    "guided_gradcam": "its guided-backpropagation factor changes only ReLU's backward pass: only the head's ReLU "
    "would be guided, and the backbone would pass the plain gradient",
    "deeplift": "captum's DeepLIFT rules cover ReLU networks only",
}
"""The attribution methods defined through ReLU, and why they do not apply to a backbone without one (their
``<method>_smoothgrad`` variants alike)."""


def not_applicable(arch: str, methods: Sequence[str]) -> dict[str, str]:
    """Of ``methods``, those that do not apply to backbone ``arch``, each with the reason: the :data:`RELU_METHODS`
    (and their SmoothGrad variants) on a backbone whose :data:`ACTIVATIONS` entry is not ReLU. The explain stage skips
    them for that backbone and records why (``not_applicable`` in its metrics); every other method applies to every
    backbone."""
    activation = ACTIVATIONS[arch]
    if activation == "ReLU":
        return {}
    out = {}
    for method in methods:
        reason = RELU_METHODS.get(method.removesuffix("_smoothgrad"))
        if reason is not None:
            out[method] = f"{arch}'s backbone has no ReLU (its activation is {activation}): {reason}"
    return out


SANITY_MODES: tuple[str, ...] = ("top_down", "bottom_up", "independent")
"""``explain/measures/sanity.py`` :data:`MODES`: the model randomisation orders."""

T = TypeVar("T")


def registered(registry_name: str, names: tuple[str, ...], registry: Mapping[str, T]) -> dict[str, T]:
    """``registry`` as a dict when its keys are exactly ``names``, in that order; otherwise a ``RuntimeError`` naming
    what is missing where (a programming error of this repository, caught when the registry's module is imported)."""
    keys = tuple(registry)
    if keys != names:
        only_registry = [k for k in keys if k not in names]
        only_names = [n for n in names if n not in keys]
        raise RuntimeError(
            f"{registry_name} lists {keys}, but cxrexplain/names.py lists {names} for the config"
            + (f"; add {only_registry} to names.py" if only_registry else "")
            + (f"; add {only_names} to {registry_name} or remove them from names.py" if only_names else "")
            + ("; the order differs" if not only_registry and not only_names else "")
        )
    return dict(registry)
