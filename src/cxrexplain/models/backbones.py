"""Backbones with the study's head, each declaring its CAM target layer.

A :class:`Classifier` is ``features`` (the backbone up to and including the CAM target layer) followed by ``head``
(global average pooling → Dropout(0.5) → Linear(256) → ReLU → Linear(1)): one logit, sigmoid for the probability of
Pneumonia. Because the target layer's output *is* ``features(x)``, the explain stage computes Grad-CAM as
``head`` on a detached feature map: no hooks, and nothing back-propagated below the target layer.

Input is **one channel** (grayscale). With ImageNet weights, the first convolution's RGB kernels are summed into one
(a grayscale image replicated to RGB gives the same activations), so nothing is replicated at run time.

Adding a backbone is one entry in :data:`BACKBONES`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cxrexplain import names
from cxrexplain.errors import CxrError

# Grayscale normalisation: the mean and std of ImageNet's RGB statistics (what a replicated gray image would see).
GRAY_MEAN = 0.449
GRAY_STD = 0.226


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: the torchvision constructor and ImageNet weights (by name: torchvision is imported
    when a model is built, not when the registry is read, so validating a config stays cheap), and how to cut it."""

    name: str  # also the torchvision constructor's name
    weights_name: str  # ``<WeightsEnum>.<member>`` in ``torchvision.models``
    cut: Callable[[nn.Module], tuple[nn.Module, int]]  # torchvision model -> (features incl. target layer, channels)
    first_conv: Callable[[nn.Module], str]  # dotted name of the first convolution inside the torchvision model
    target_layer: str  # human-readable name of the CAM layer, for reports
    # the blocks of ``Classifier.features`` for the sanity checks' cascading randomisation, output first (the head
    # comes before them); together with the head they hold every parameter of the model
    blocks: Callable[[nn.Module], list[tuple[str, nn.Module]]]

    def constructor(self, **kwargs: object) -> nn.Module:
        """``torchvision.models.<name>(**kwargs)``."""
        import torchvision

        return getattr(torchvision.models, self.name)(**kwargs)

    @property
    def weights(self):  # -> torchvision.models.WeightsEnum
        """The ImageNet weights' enum member."""
        import torchvision

        enum, member = self.weights_name.split(".")
        return getattr(getattr(torchvision.models, enum), member)


def _resnet_cut(model: nn.Module) -> tuple[nn.Module, int]:
    features = nn.Sequential(
        model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4
    )
    return features, model.fc.in_features


def _densenet_cut(model: nn.Module) -> tuple[nn.Module, int]:
    # torchvision applies F.relu(inplace=True) after `features` in forward(); here it is a module of its own, not in
    # place, so the CAM layer is "the final feature map after norm5 and its ReLU" and no hook sees it change.
    return nn.Sequential(model.features, nn.ReLU(inplace=False)), model.classifier.in_features


def _resnet_blocks(f: nn.Module) -> list[tuple[str, nn.Module]]:
    """``layer4``, ``layer3``, ``layer2``, ``layer1``, ``stem`` (conv1 + bn1)."""
    return [
        ("layer4", f[7]),
        ("layer3", f[6]),
        ("layer2", f[5]),
        ("layer1", f[4]),
        ("stem", nn.ModuleList([f[0], f[1]])),
    ]


def _densenet_blocks(features: nn.Module) -> list[tuple[str, nn.Module]]:
    """A stage is its dense block with the transition that feeds it: ``denseblock4`` (transition3, denseblock4,
    norm5), ``denseblock3`` (transition2, denseblock3), ``denseblock2`` (transition1, denseblock2), ``denseblock1``,
    ``stem`` (conv0 + norm0)."""
    d = features[0]
    return [
        ("denseblock4", nn.ModuleList([d.transition3, d.denseblock4, d.norm5])),
        ("denseblock3", nn.ModuleList([d.transition2, d.denseblock3])),
        ("denseblock2", nn.ModuleList([d.transition1, d.denseblock2])),
        ("denseblock1", d.denseblock1),
        ("stem", nn.ModuleList([d.conv0, d.norm0])),
    ]


BACKBONES: dict[str, BackboneSpec] = names.registered(
    "BACKBONES",
    names.ARCHS,
    {
        "resnet50": BackboneSpec(
            "resnet50",
            "ResNet50_Weights.IMAGENET1K_V2",
            _resnet_cut,
            lambda m: "conv1",
            "layer4 (output)",
            _resnet_blocks,
        ),
        "densenet121": BackboneSpec(
            "densenet121",
            "DenseNet121_Weights.IMAGENET1K_V1",
            _densenet_cut,
            lambda m: "features.conv0",
            "features.norm5 + ReLU (output)",
            _densenet_blocks,
        ),
        # the study's two above; ResNet-18 (a third of ResNet-50's CPU time per training step at 96 px, measured in
        # benchmarks/bench_train.py) keeps CPU runs short: the ci profile and the tests
        "resnet18": BackboneSpec(
            "resnet18",
            "ResNet18_Weights.IMAGENET1K_V1",
            _resnet_cut,
            lambda m: "conv1",
            "layer4 (output)",
            _resnet_blocks,
        ),
    },
)


class Classifier(nn.Module):
    """``head(features(x))``: one logit per image. ``features`` ends at the CAM target layer."""

    def __init__(self, arch: str, features: nn.Module, channels: int, dropout: float = 0.5, hidden: int = 256) -> None:
        super().__init__()
        self.arch = arch
        self.features = features
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B,) for images of shape (B, 1, H, W)."""
        return self.head(self.features(x)).squeeze(1)


def _to_grayscale(conv: nn.Conv2d) -> nn.Conv2d:
    gray = nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            gray.bias.copy_(conv.bias)
    return gray


def _set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _imagenet_state(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    weights = spec.weights
    file_name = Path(weights.url).name
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a truncated file a RuntimeError
        raise CxrError(
            f"model.pretrained: imagenet: could not load the {spec.name} ImageNet weights ({error}). Offline, place "
            f"{file_name} (from {weights.url}) at {hub_dir / file_name}, or set model.pretrained to that file's path, "
            "or to none to train from scratch"
        ) from None


def _file_state(path: Path, spec: BackboneSpec) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CxrError(f"model.pretrained: {path}: no such file (expected a torchvision {spec.name} state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CxrError(
            f"model.pretrained: {path}: not a loadable state dict ({type(error).__name__}: {error})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def build_classifier(arch: str, pretrained: str = "none", dropout: float = 0.5) -> Classifier:
    """A one-channel :class:`Classifier` for ``arch``; ``pretrained``: ``imagenet``, ``none`` or a state-dict path."""
    try:
        spec = BACKBONES[arch]
    except KeyError:
        raise CxrError(f"model arch {arch!r}: unknown (available: {', '.join(BACKBONES)})") from None
    model = spec.constructor(weights=None)
    if pretrained != "none":
        state = (
            _imagenet_state(spec)
            if pretrained == "imagenet"
            else _file_state(Path(os.path.expanduser(pretrained)), spec)
        )
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise CxrError(f"model.pretrained: {pretrained}: does not fit {arch} ({str(error)[:300]})") from None
    first = spec.first_conv(model)
    _set_module(model, first, _to_grayscale(model.get_submodule(first)))
    features, channels = spec.cut(model)
    return Classifier(arch, features, channels, dropout=dropout)
