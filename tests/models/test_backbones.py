"""Backbones: the study's head, one-channel input, CAM target layers, and the pretrained-weights paths."""

import pytest
import torch
import torchvision

from cxrexplain.errors import CxrError
from cxrexplain.models.backbones import BACKBONES, build_classifier


@pytest.mark.parametrize(("arch", "channels"), [("resnet50", 2048), ("densenet121", 1024), ("resnet18", 512)])
def test_head_and_feature_map(arch, channels):
    model = build_classifier(arch).eval()
    x = torch.randn(3, 1, 64, 64)
    features = model.features(x)
    assert features.shape == (3, channels, 2, 2)  # the CAM target layer's output, stride 32
    assert model(x).shape == (3,)
    head = [type(m).__name__ for m in model.head]
    assert head == ["AdaptiveAvgPool2d", "Flatten", "Dropout", "Linear", "ReLU", "Linear"]
    assert model.head[2].p == 0.5 and model.head[3].out_features == 256 and model.head[5].out_features == 1
    assert torch.allclose(model(x), model.head(features).squeeze(1))


def test_densenet_target_layer_is_a_separate_relu_not_in_place():
    model = build_classifier("densenet121")
    relu = model.features[-1]
    assert isinstance(relu, torch.nn.ReLU) and relu.inplace is False
    assert (model.features(torch.randn(1, 1, 64, 64)) >= 0).all()


@pytest.mark.parametrize("arch", ["resnet50", "densenet121", "resnet18"])
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
    with pytest.raises(CxrError, match=r"unknown .*resnet50, densenet121, resnet18"):
        build_classifier("vgg16")
    with pytest.raises(CxrError, match="no such file"):
        build_classifier("resnet50", pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CxrError, match="not a loadable state dict"):
        build_classifier("resnet50", pretrained=str(tmp_path / "junk.pth"))
    torch.save(BACKBONES["densenet121"].constructor(weights=None).state_dict(), tmp_path / "dense.pth")
    with pytest.raises(CxrError, match="does not fit resnet50"):
        build_classifier("resnet50", pretrained=str(tmp_path / "dense.pth"))
