"""Backbones: the study's head, one-channel input, CAM target layers, and the pretrained-weights paths.

Every backbone is checked against torchvision's own forward: the same random weights, the gray image replicated to
three channels for torchvision's RGB first convolution (ours sums its kernels), torchvision's classifier replaced by
the study's head (for VGG16 also its 7×7 adaptive pooling, which the study's head replaces by global pooling). Each
backbone is built once for the module (VGG16 has 138 M parameters); inputs are 2 images of 64 px (32 px for the ViT).
"""

import contextlib
from dataclasses import dataclass

import pytest
import torch
import torchvision
from torch import nn
from torch.testing import assert_close

from cxrexplain.config import ARCHS
from cxrexplain.errors import CxrError
from cxrexplain.explain.measures.sanity import randomisation_blocks, reinitialise
from cxrexplain.models.backbones import BACKBONES, Classifier, VitClassifier, build_classifier, from_torchvision

SIZES = {"vit_b_16": 32}  # the others: 64 px
# (channels, side) of the CAM target layer's map at the test size: stride 32 for the CNNs, the 16-px patch grid
CAM_MAPS = {
    "resnet50": (2048, 2),
    "densenet121": (1024, 2),
    "resnet18": (512, 2),
    "resnet101": (2048, 2),
    "densenet161": (2208, 2),
    "efficientnet_b0": (1280, 2),
    "vgg16": (512, 2),
    "vit_b_16": (768, 2),
}


def _set(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, child = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@dataclass
class Pair:
    arch: str
    size: int
    model: Classifier  # ours, sharing its modules with `reference`
    reference: nn.Module  # torchvision's model, head swapped
    first: str  # the first convolution's dotted name in `reference`
    rgb: nn.Module  # torchvision's RGB first convolution (ours holds its kernels summed)

    @contextlib.contextmanager
    def rgb_input(self):
        """``reference`` with its own RGB first convolution for the block (the two models share every other module)."""
        gray = self.reference.get_submodule(self.first)
        _set(self.reference, self.first, self.rgb)
        try:
            yield self.reference
        finally:
            _set(self.reference, self.first, gray)


@pytest.fixture(scope="module", params=ARCHS)
def pair(request) -> Pair:
    arch = request.param
    size = SIZES.get(arch, 64)
    spec = BACKBONES[arch]
    torch.manual_seed(0)
    reference = spec.torchvision_model(size).eval()
    first = spec.first_conv(reference)
    rgb = reference.get_submodule(first)
    model = from_torchvision(arch, reference).eval()
    tail = model.head if isinstance(model, VitClassifier) else model.head[2:]  # after the pooling and flattening
    if arch.startswith("resnet"):
        reference.fc = tail
    elif arch == "vit_b_16":
        reference.heads = tail
    else:  # densenet, efficientnet, vgg: `classifier`
        reference.classifier = tail
    if arch == "vgg16":
        reference.avgpool = nn.AdaptiveAvgPool2d(1)
    return Pair(arch, size, model, reference, first, rgb)


def test_forward_equals_torchvision_with_the_head_swapped(pair):
    x = torch.rand(2, 1, pair.size, pair.size)
    with torch.no_grad(), pair.rgb_input() as reference:
        expected = reference(x.repeat(1, 3, 1, 1)).squeeze(1)
    with torch.no_grad():
        logits = pair.model(x)
    assert logits.shape == (2,)
    assert_close(logits, expected, atol=1e-5 * expected.abs().max().item() + 1e-6, rtol=1e-4)


def test_cam_map_and_the_logits_from_it(pair):
    x = torch.rand(2, 1, pair.size, pair.size)
    with torch.no_grad():
        features = pair.model.features(x)
        activations = pair.model.cam_input(features)
        logits = pair.model.logits_from_cam(features, activations)
        expected = pair.model(x)
    channels, side = CAM_MAPS[pair.arch]
    assert activations.shape == (2, channels, side, side)
    assert_close(logits, expected, atol=1e-5 * expected.abs().max().item() + 1e-6, rtol=1e-4)


def test_head(pair):
    head = [type(m).__name__ for m in pair.model.head]
    pooling = [] if pair.arch == "vit_b_16" else ["AdaptiveAvgPool2d", "Flatten"]  # ViT: on the class token
    assert head == [*pooling, "Dropout", "Linear", "ReLU", "Linear"]
    assert pair.model.head[-4].p == 0.5 and pair.model.head[-3].in_features == CAM_MAPS[pair.arch][0]
    assert pair.model.head[-3].out_features == 256 and pair.model.head[-1].out_features == 1


def test_randomisation_resets_every_parameter_of_every_block(pair):
    """The blocks (head first) hold every parameter once, and re-initialising them leaves no parameter untouched
    (parameters set to NaN first): also those that no ``reset_parameters`` of torch's own modules covers (a ViT's
    class token and position embedding, its attention's input projection)."""
    blocks = randomisation_blocks(pair.model)
    covered = [id(p) for _, block in blocks for p in block.parameters()]
    assert len(covered) == len(set(covered)) and set(covered) == {id(p) for p in pair.model.parameters()}
    saved = {k: v.clone() for k, v in pair.model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in pair.model.parameters():
                p.fill_(float("nan"))
        for i, (_, block) in enumerate(blocks):
            reinitialise(block, seed=i)
        assert not any(p.isnan().any() for p in pair.model.parameters())
    finally:
        pair.model.load_state_dict(saved)


def test_vit_input_size_is_checked():
    with pytest.raises(CxrError, match=r"train.image_size: 40 px does not fit vit_b_16.*multiple of its patch size"):
        build_classifier("vit_b_16", image_size=40)
    with pytest.raises(CxrError, match=r"vit_b_16: needs the input size \(train.image_size\)"):
        build_classifier("vit_b_16")


@pytest.mark.parametrize("pair", ["vit_b_16"], indirect=True)
def test_vit_refuses_another_input_size(pair):
    with pytest.raises(CxrError, match=r"built for 32 × 32 px \(train.image_size"):
        pair.model(torch.rand(1, 1, 48, 48))


@pytest.mark.parametrize("pair", ["vit_b_16"], indirect=True)
def test_vit_imagenet_weights_at_another_size_interpolate_the_position_embedding(pair, monkeypatch):
    """ImageNet's ViT is made for 224 px; at another size its position embedding is interpolated (torchvision's
    ``interpolate_embeddings``): here "ImageNet" is the fixture's 32-px model (2 × 2 patches), built at 64 px
    (4 × 4)."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    with pair.rgb_input() as reference:  # torchvision's keys; its ImageNet head (1000 classes) back in place
        state = {k: v.clone() for k, v in reference.state_dict().items() if not k.startswith("heads.")}
    state.update({"heads.head.weight": torch.zeros(1000, 768), "heads.head.bias": torch.zeros(1000)})
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, **kwargs: dict(state))
    model = build_classifier("vit_b_16", pretrained="imagenet", image_size=64)
    expected = interpolate_embeddings(64, 16, dict(state))["encoder.pos_embedding"]
    assert model.features.tokens.pos_embedding.shape == (1, 17, 768)
    assert_close(model.features.tokens.pos_embedding, expected)
    assert_close(model.features.tokens.pos_embedding[:, 0], state["encoder.pos_embedding"][:, 0])  # class token's
    assert_close(model.last.mlp[0].weight, state["encoder.layers.encoder_layer_11.mlp.0.weight"])
    assert_close(model.features.tokens.conv_proj.weight, state["conv_proj.weight"].sum(dim=1, keepdim=True))


def test_densenet_target_layer_is_a_separate_relu_not_in_place():
    model = build_classifier("densenet121")
    relu = model.features[-1]
    assert isinstance(relu, torch.nn.ReLU) and relu.inplace is False
    assert (model.features(torch.randn(1, 1, 64, 64)) >= 0).all()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on this project's small shared CPU, oversubscribed threads make the forward passes of
    these 2-image batches many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# the summed kernels are checked for every backbone above (torchvision's forward on the replicated image); this is
# the path of a state-dict file
@pytest.mark.parametrize("arch", ["densenet121", "resnet18"])
def test_pretrained_path_sums_rgb_kernels_so_gray_equals_replicated_rgb(arch, tmp_path):
    reference = BACKBONES[arch].constructor(weights=None).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)
    model = build_classifier(arch, pretrained=str(path)).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        if arch.startswith("resnet"):
            body = torch.nn.Sequential(*list(reference.children())[:-2])
            expected = body(x.repeat(1, 3, 1, 1))
        else:
            expected = torch.relu(reference.features(x.repeat(1, 3, 1, 1)))
        assert torch.allclose(model.features(x), expected, atol=1e-4)


def test_imagenet_offline_says_where_to_put_the_file(monkeypatch, tmp_path):
    def offline(self, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CxrError) as info:
        build_classifier("resnet50", pretrained="imagenet")
    message = str(info.value)
    assert "resnet50-11ad3fa6.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message
    assert "none" in message


def test_bad_arch_and_bad_weight_files(tmp_path):
    with pytest.raises(CxrError, match=r"unknown .*resnet50, densenet121, resnet18, .*vgg16, vit_b_16"):
        build_classifier("vgg19")
    with pytest.raises(CxrError, match="no such file"):
        build_classifier("resnet50", pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CxrError, match="not a loadable state dict"):
        build_classifier("resnet50", pretrained=str(tmp_path / "junk.pth"))
    torch.save(BACKBONES["densenet121"].constructor(weights=None).state_dict(), tmp_path / "dense.pth")
    with pytest.raises(CxrError, match="does not fit resnet50"):
        build_classifier("resnet50", pretrained=str(tmp_path / "dense.pth"))


_ACTIVATION_TYPES = {"ReLU": nn.ReLU, "SiLU": nn.SiLU, "GELU": nn.GELU}


def test_the_recorded_activation_is_the_backbones_and_decides_the_relu_methods(pair):
    """``names.ACTIVATIONS`` (the registry's ``activation``) is the only non-linearity among the backbone's modules
    (the study's head, on every backbone, has one ReLU), which is what makes the ReLU-defined methods skip a backbone
    (``names.not_applicable``). Why: guided backpropagation only changes ReLU's backward pass, so on a backbone
    without ReLU it guides the head's ReLU alone and passes the plain gradient through the backbone, exactly (checked
    against autograd with only the head's ReLU guided); on a ReLU backbone the two differ (checked on ResNet-18, the
    cheapest)."""
    from cxrexplain.explain.attributions import guided_backprop, signs
    from cxrexplain.names import ACTIVATIONS, not_applicable

    backbone = [m for name, m in pair.model.named_modules() if not name.startswith("head")]
    found = {name for name, kind in _ACTIVATION_TYPES.items() if any(isinstance(m, kind) for m in backbone)}
    assert found == {ACTIVATIONS[pair.arch]}
    assert isinstance(pair.model.head[-2], nn.ReLU)
    skipped = not_applicable(pair.arch, ("deeplift", "guided_backprop", "guided_gradcam_smoothgrad", "saliency"))
    assert list(skipped) == ([] if found == {"ReLU"} else ["deeplift", "guided_backprop", "guided_gradcam_smoothgrad"])
    if found == {"ReLU"} and pair.arch != "resnet18":
        return
    torch.manual_seed(1)
    x, c = torch.randn(2, 1, pair.size, pair.size, requires_grad=True), torch.tensor([1, 0])
    guided = guided_backprop(pair.model, x, c)
    hook = pair.model.head[-2].register_full_backward_hook(lambda m, g_in, g_out: (g_in[0].clamp(min=0),))
    try:
        head_only = torch.autograd.grad((pair.model(x) * signs(c, x)).sum(), x)[0][:, 0]
    finally:
        hook.remove()
    if found == {"ReLU"}:
        assert not torch.allclose(guided, head_only, atol=1e-6)
    else:
        assert_close(guided, head_only, atol=1e-7, rtol=1e-5)
