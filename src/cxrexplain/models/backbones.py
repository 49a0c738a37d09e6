"""Backbones with the study's head, each declaring its CAM target layer.

A :class:`Classifier` is ``features`` (the backbone up to and including the CAM target layer) followed by ``head``
(global average pooling → Dropout(0.5) → Linear(256) → ReLU → Linear(1)): one logit, sigmoid for the probability of
Pneumonia. For the convolutional networks the target layer's output *is* ``features(x)``, so the explain stage
computes Grad-CAM as ``head`` on a detached feature map: no hooks, and nothing back-propagated below the target layer.
The Vision Transformer (:class:`VitClassifier`) has its target inside its last block (the input of its attention):
``features`` stops before that block, and :meth:`Classifier.cam_input` / :meth:`Classifier.logits_from_cam` give the
map and the logits as a function of it, so the same holds there: nothing is back-propagated below the last block.

Input is **one channel** (grayscale). With ImageNet weights, the first convolution's RGB kernels are summed into one
(a grayscale image replicated to RGB gives the same activations), so nothing is replicated at run time.

The backbones: the study's ResNet-50 and DenseNet-121, ResNet-18 for CPU runs, and the related work's ResNet-101,
DenseNet-161, EfficientNet-B0, VGG16 and ViT-B/16 (all torchvision). Adding a backbone is one entry in
:data:`BACKBONES` (and its name in ``names.ARCHS``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
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
    # torchvision model (first convolution already grayscale), arch, dropout -> the Classifier sharing its modules
    cut: Callable[[nn.Module, str, float], Classifier]
    first_conv: Callable[[nn.Module], str]  # dotted name of the first convolution inside the torchvision model
    target_layer: str  # human-readable name of the CAM layer, for reports
    # the blocks of the Classifier for the sanity checks' cascading randomisation, output first, without the head
    # (which comes before them); together with the head they hold every parameter of the model
    blocks: Callable[[Classifier], list[tuple[str, nn.Module]]]
    patch: int | None = None  # a ViT's patch size: the input side must be a multiple of it, and is fixed at build
    # the non-linearity of every activation module: the ReLU-defined methods (names.RELU_METHODS) need "ReLU"
    activation: str = "ReLU"

    def constructor(self, **kwargs: object) -> nn.Module:
        """``torchvision.models.<name>(**kwargs)``."""
        import torchvision

        return getattr(torchvision.models, self.name)(**kwargs)

    def torchvision_model(self, image_size: int | None = None) -> nn.Module:
        """The torchvision model with random weights (``weights=None``); a ViT is built for ``image_size`` (needed:
        its position embedding fixes the input size), the convolutional networks take any size."""
        if self.patch is None:
            return self.constructor(weights=None)
        return self.constructor(weights=None, image_size=check_input_size(self.name, image_size, self.patch))

    @property
    def weights(self):  # -> torchvision.models.WeightsEnum
        """The ImageNet weights' enum member."""
        import torchvision

        enum, member = self.weights_name.split(".")
        return getattr(getattr(torchvision.models, enum), member)


def check_input_size(arch: str, image_size: int | None, patch: int) -> int:
    """``image_size`` when it is a multiple of ``patch``, else a :class:`CxrError` naming ``train.image_size``."""
    if image_size is None:
        raise CxrError(f"{arch}: needs the input size (train.image_size) to be built: its position embedding fixes it")
    if image_size <= 0 or image_size % patch:
        raise CxrError(
            f"train.image_size: {image_size} px does not fit {arch}: the input side must be a multiple of its patch "
            f"size, {patch} px (e.g. {max(patch, image_size // patch * patch)})"
        )
    return image_size


def study_head(channels: int, dropout: float = 0.5, hidden: int = 256, pool: bool = True) -> nn.Sequential:
    """The study's head: [global average pooling →] Dropout → Linear(``hidden``) → ReLU → Linear(1)."""
    pooling = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if pool else []
    return nn.Sequential(*pooling, nn.Dropout(dropout), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class Classifier(nn.Module):
    """``head(features(x))``: one logit per image. ``features`` ends at the CAM target layer.

    The CAM family needs the target layer's map ``A`` and the logits as a function of ``A``: with ``F =
    features(x)``, :meth:`cam_input` gives ``A`` (B, K, h, w) and :meth:`logits_from_cam` the logits (B,) computed
    from ``A`` (and ``F``, for what does not pass through ``A``). For a convolutional network ``A = F`` and the
    logits are ``head(A)``; :class:`VitClassifier` overrides both.
    """

    def __init__(
        self,
        arch: str,
        features: nn.Module,
        channels: int,
        dropout: float = 0.5,
        hidden: int = 256,
        pool: bool = True,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.features = features
        self.head = study_head(channels, dropout, hidden, pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B,) for images of shape (B, 1, H, W)."""
        return self.head(self.features(x)).squeeze(1)

    def cam_input(self, features: torch.Tensor) -> torch.Tensor:
        """The CAM target layer's map ``A`` (B, K, h, w) from ``F = features(x)``: ``F`` itself here."""
        return features

    def logits_from_cam(self, features: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
        """Logits (B,) from ``A`` (:meth:`cam_input`), equal to :meth:`forward` when ``A = cam_input(F)``:
        ``head(A)`` here (``F`` is not needed)."""
        return self.head(activations).squeeze(1)


class VitTokens(nn.Module):
    """A ViT's input side, as torchvision's ``VisionTransformer`` computes it: the image cut into patches by
    ``conv_proj`` (B, D, h, w), flattened row-major to h·w tokens, the class token prepended, the position embedding
    added. The input must be ``image_size`` × ``image_size`` (the position embedding has one entry per patch)."""

    def __init__(
        self, conv_proj: nn.Module, class_token: nn.Parameter, pos_embedding: nn.Parameter, image_size: int, patch: int
    ) -> None:
        super().__init__()
        self.conv_proj = conv_proj
        self.class_token = class_token
        self.pos_embedding = pos_embedding
        self.image_size = image_size
        self.grid = image_size // patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) images -> (B, 1 + h·w, D) tokens."""
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise CxrError(
                f"ViT input {tuple(x.shape[-2:])}: this model was built for {self.image_size} × {self.image_size} px "
                "(train.image_size, recorded in its checkpoint); a ViT's position embedding fixes its input size"
            )
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embedding

    def reset_parameters(self) -> None:
        """torchvision's initialisation of the two tensors held here (the class token 0, the position embedding
        N(0, 0.02²)); ``conv_proj`` resets itself. For the sanity checks' randomisation."""
        with torch.no_grad():
            nn.init.zeros_(self.class_token)
            nn.init.normal_(self.pos_embedding, std=0.02)


class VitClassifier(Classifier):
    """A Vision Transformer with the study's head on its class token (no pooling: the class token replaces it).

    ``features`` = :class:`VitTokens` + the encoder's dropout + every encoder block but the last; ``last`` is the last
    block (torchvision's ``EncoderBlock``) and ``norm`` the encoder's final LayerNorm. The CAM target is the token map
    entering the last block's attention: ``A`` = ``last.ln_1(F)`` without the class token, its h·w patch tokens
    reshaped to the (h, w) grid as (B, D, h, w) (what pytorch-grad-cam's ``reshape_transform`` for ViTs does on the
    hooked ``encoder.layers[-1].ln_1``). Computing the logits from ``A`` runs the last block with ``A`` (and the class
    token's ``ln_1``) as the attention's input while the residual uses ``F``, exactly as ``EncoderBlock.forward``:
    ``x = F + Dropout(Attention(ln_1(F))); y = x + MLP(ln_2(x))``, then the final LayerNorm, the class token and the
    head. Only the class token's output of the last block reaches the logit, so the last block computes only that
    (its attention with the class token's query over every token's key and value): the full block's class token up
    to rounding (tested against torchvision's forward), for about a sixth of the block's work (the key and value
    projections of every token).
    """

    def __init__(
        self,
        arch: str,
        features: nn.Sequential,
        last: nn.Module,
        norm: nn.Module,
        dim: int,
        dropout: float = 0.5,
        hidden: int = 256,
    ) -> None:
        super().__init__(arch, features, dim, dropout=dropout, hidden=hidden, pool=False)
        self.last = last
        self.norm = norm

    def _logits(self, features: torch.Tensor, attention_input: torch.Tensor) -> torch.Tensor:
        """The last block's class token (``attention_input`` in place of ``ln_1(F)``), final norm, head."""
        block = self.last
        query = attention_input[:, :1]
        attended, _ = block.self_attention(query, attention_input, attention_input, need_weights=False)
        x = block.dropout(attended) + features[:, :1]
        x = x + block.mlp(block.ln_2(x))
        return self.head(self.norm(x[:, 0])).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return self._logits(features, self.last.ln_1(features))

    def cam_input(self, features: torch.Tensor) -> torch.Tensor:
        patches = self.last.ln_1(features[:, 1:])  # LayerNorm is per token: the class token is left out before
        grid = self.features.tokens.grid
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], grid, grid)

    def logits_from_cam(self, features: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.last.ln_1(features[:, :1]), activations.flatten(2).transpose(1, 2)], dim=1)
        return self._logits(features, tokens)


def _cnn(body: Callable[[nn.Module], tuple[nn.Module, int]]) -> Callable[[nn.Module, str, float], Classifier]:
    """A ``cut`` from a function giving (features incl. the target layer, its channels): the pooling head on it."""

    def cut(model: nn.Module, arch: str, dropout: float) -> Classifier:
        features, channels = body(model)
        return Classifier(arch, features, channels, dropout=dropout)

    return cut


def _resnet_cut(model: nn.Module) -> tuple[nn.Module, int]:
    features = nn.Sequential(
        model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4
    )
    return features, model.fc.in_features


def _densenet_cut(model: nn.Module) -> tuple[nn.Module, int]:
    # torchvision applies F.relu(inplace=True) after `features` in forward(); here it is a module of its own, not in
    # place, so the CAM layer is "the final feature map after norm5 and its ReLU" and no hook sees it change.
    return nn.Sequential(model.features, nn.ReLU(inplace=False)), model.classifier.in_features


def _efficientnet_cut(model: nn.Module) -> tuple[nn.Module, int]:
    # `features` ends with the 1x1 Conv-BN-SiLU to 1280 channels; torchvision then pools and applies its classifier
    return model.features, model.classifier[-1].in_features


def _vgg_cut(model: nn.Module) -> tuple[nn.Module, int]:
    # the whole of `features`: the last conv block's output after its ReLU *and* the final max-pool, which is
    # pytorch-grad-cam's documented target for VGG (`model.features[-1]`); torchvision's 7x7 adaptive pooling and
    # its three-layer classifier are replaced by the study's head (global average pooling first)
    return model.features, model.features[-3].out_channels


def _vit_cut(model: nn.Module, arch: str, dropout: float) -> Classifier:
    encoder = model.encoder
    *early, (_, last) = encoder.layers.named_children()
    tokens = VitTokens(model.conv_proj, model.class_token, encoder.pos_embedding, model.image_size, model.patch_size)
    features = nn.Sequential(
        OrderedDict(tokens=tokens, dropout=encoder.dropout, layers=nn.Sequential(OrderedDict(early)))
    )
    return VitClassifier(arch, features, last, encoder.ln, model.hidden_dim, dropout=dropout)


def _resnet_blocks(model: Classifier) -> list[tuple[str, nn.Module]]:
    """``layer4``, ``layer3``, ``layer2``, ``layer1``, ``stem`` (conv1 + bn1)."""
    f = model.features
    return [
        ("layer4", f[7]),
        ("layer3", f[6]),
        ("layer2", f[5]),
        ("layer1", f[4]),
        ("stem", nn.ModuleList([f[0], f[1]])),
    ]


def _densenet_blocks(model: Classifier) -> list[tuple[str, nn.Module]]:
    """A stage is its dense block with the transition that feeds it: ``denseblock4`` (transition3, denseblock4,
    norm5), ``denseblock3`` (transition2, denseblock3), ``denseblock2`` (transition1, denseblock2), ``denseblock1``,
    ``stem`` (conv0 + norm0)."""
    d = model.features[0]
    return [
        ("denseblock4", nn.ModuleList([d.transition3, d.denseblock4, d.norm5])),
        ("denseblock3", nn.ModuleList([d.transition2, d.denseblock3])),
        ("denseblock2", nn.ModuleList([d.transition1, d.denseblock2])),
        ("denseblock1", d.denseblock1),
        ("stem", nn.ModuleList([d.conv0, d.norm0])),
    ]


def _efficientnet_blocks(model: Classifier) -> list[tuple[str, nn.Module]]:
    """torchvision's nine ``features`` children, last first: ``features.8`` (the 1x1 conv to 1280 channels),
    ``features.7`` ... ``features.1`` (the MBConv stages), ``features.0`` (the stem)."""
    return [(f"features.{i}", block) for i, block in reversed(list(enumerate(model.features)))]


def _vgg_blocks(model: Classifier) -> list[tuple[str, nn.Module]]:
    """The five conv blocks (the convolutions between two max-pools), last first: ``block5`` ... ``block1``."""
    blocks: list[list[nn.Module]] = [[]]
    for layer in model.features:
        if isinstance(layer, nn.MaxPool2d):
            blocks.append([])
        elif any(True for _ in layer.parameters()):
            blocks[-1].append(layer)
    blocks = [b for b in blocks if b]
    return [(f"block{i + 1}", nn.ModuleList(b)) for i, b in reversed(list(enumerate(blocks)))]


def _vit_blocks(model: Classifier) -> list[tuple[str, nn.Module]]:
    """The encoder blocks, last first, by torchvision's names: ``encoder_layer_11`` (with the final LayerNorm),
    ``encoder_layer_10`` ... ``encoder_layer_0``, then ``embedding`` (patch projection, class token, position
    embedding)."""
    layers = list(model.features.layers.named_children())
    last = f"encoder_layer_{len(layers)}"
    return [
        (last, nn.ModuleList([model.last, model.norm])),
        *reversed(layers),
        ("embedding", model.features.tokens),
    ]


BACKBONES: dict[str, BackboneSpec] = names.registered(
    "BACKBONES",
    names.ARCHS,
    {
        "resnet50": BackboneSpec(
            "resnet50",
            "ResNet50_Weights.IMAGENET1K_V2",
            _cnn(_resnet_cut),
            lambda m: "conv1",
            "layer4 (output)",
            _resnet_blocks,
        ),
        "densenet121": BackboneSpec(
            "densenet121",
            "DenseNet121_Weights.IMAGENET1K_V1",
            _cnn(_densenet_cut),
            lambda m: "features.conv0",
            "features.norm5 + ReLU (output)",
            _densenet_blocks,
        ),
        # the study's two above; ResNet-18 (a third of ResNet-50's CPU time per training step at 96 px, measured in
        # benchmarks/bench_train.py) keeps CPU runs short: the ci profile and the tests
        "resnet18": BackboneSpec(
            "resnet18",
            "ResNet18_Weights.IMAGENET1K_V1",
            _cnn(_resnet_cut),
            lambda m: "conv1",
            "layer4 (output)",
            _resnet_blocks,
        ),
        # the related work's backbones (issue 13)
        "resnet101": BackboneSpec(
            "resnet101",
            "ResNet101_Weights.IMAGENET1K_V2",
            _cnn(_resnet_cut),
            lambda m: "conv1",
            "layer4 (output)",
            _resnet_blocks,
        ),
        "densenet161": BackboneSpec(
            "densenet161",
            "DenseNet161_Weights.IMAGENET1K_V1",
            _cnn(_densenet_cut),
            lambda m: "features.conv0",
            "features.norm5 + ReLU (output)",
            _densenet_blocks,
        ),
        "efficientnet_b0": BackboneSpec(
            "efficientnet_b0",
            "EfficientNet_B0_Weights.IMAGENET1K_V1",
            _cnn(_efficientnet_cut),
            lambda m: "features.0.0",
            "features (output: the last Conv-BN-SiLU, 1280 channels)",
            _efficientnet_blocks,
            activation="SiLU",
        ),
        "vgg16": BackboneSpec(
            "vgg16",
            "VGG16_Weights.IMAGENET1K_V1",
            _cnn(_vgg_cut),
            lambda m: "features.0",
            "features[-1] (the last conv block after its ReLU and max-pool)",
            _vgg_blocks,
        ),
        "vit_b_16": BackboneSpec(
            "vit_b_16",
            "ViT_B_16_Weights.IMAGENET1K_V1",
            _vit_cut,
            lambda m: "conv_proj",
            "encoder_layer_11.ln_1 (output; patch tokens as the (h, w) grid, class token dropped)",
            _vit_blocks,
            patch=16,
            activation="GELU",
        ),
    },
)
if {a: s.patch for a, s in BACKBONES.items() if s.patch} != names.PATCH_SIZES:
    raise RuntimeError("BACKBONES' patch sizes differ from cxrexplain/names.py PATCH_SIZES")
if {a: s.activation for a, s in BACKBONES.items()} != names.ACTIVATIONS:
    raise RuntimeError("BACKBONES' activations differ from cxrexplain/names.py ACTIVATIONS")


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


def build_classifier(
    arch: str, pretrained: str = "none", dropout: float = 0.5, image_size: int | None = None
) -> Classifier:
    """A one-channel :class:`Classifier` for ``arch``; ``pretrained``: ``imagenet``, ``none`` or a state-dict path.

    ``image_size``: the input side (``train.image_size``). The convolutional networks take any size and ignore it; a
    ViT is built for it (a multiple of its patch size, else a :class:`CxrError`), and ImageNet weights made for
    another size get their position embedding interpolated to it (torchvision's ``interpolate_embeddings``, bicubic).
    """
    try:
        spec = BACKBONES[arch]
    except KeyError:
        raise CxrError(f"model arch {arch!r}: unknown (available: {', '.join(BACKBONES)})") from None
    model = spec.torchvision_model(image_size)
    if pretrained != "none":
        state = (
            _imagenet_state(spec)
            if pretrained == "imagenet"
            else _file_state(Path(os.path.expanduser(pretrained)), spec)
        )
        try:
            if spec.patch is not None:
                from torchvision.models.vision_transformer import interpolate_embeddings

                state = interpolate_embeddings(model.image_size, spec.patch, OrderedDict(state))
            model.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as error:
            raise CxrError(f"model.pretrained: {pretrained}: does not fit {arch} ({str(error)[:300]})") from None
    return from_torchvision(arch, model, dropout)


def from_torchvision(arch: str, model: nn.Module, dropout: float = 0.5) -> Classifier:
    """The :class:`Classifier` of ``arch`` made from the torchvision ``model`` (its weights kept; it is changed in
    place: its first convolution becomes the grayscale one, RGB kernels summed, and the Classifier shares its
    modules). :func:`build_classifier` is this on a fresh or pretrained model; the tests use it to compare with
    torchvision's own forward on a copy."""
    spec = BACKBONES[arch]
    first = spec.first_conv(model)
    _set_module(model, first, _to_grayscale(model.get_submodule(first)))
    return spec.cut(model, arch, dropout)
