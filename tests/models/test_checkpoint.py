"""Checkpoint loading: weights only (never unpickling objects), and no download of the weights it was trained from."""

import pathlib
import re
import socket
import sys

import numpy as np
import pytest
import torch
import torchvision.models._api
from PIL import Image

from cxrexplain.errors import CxrError
from cxrexplain.explain.pipeline import load_model
from cxrexplain.explain.single import explain_file
from cxrexplain.models.checkpoint import load_classifier
from cxrexplain.models.module import PneumoniaClassifier, load_checkpoint, read_checkpoint


class _Touch:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _checkpoint(module: PneumoniaClassifier, **hparams) -> dict:
    """What Lightning's ``Trainer.save_checkpoint`` writes, less the loop and optimizer states."""
    return {
        "epoch": 3,
        "global_step": 12,
        "state_dict": module.state_dict(),
        "hparams_name": "kwargs",
        "hyper_parameters": {**dict(module.hparams), **hparams},
        "history": [{"epoch": 0.0, "val/loss": 0.7}],
    }


@pytest.fixture(scope="module")
def module() -> PneumoniaClassifier:
    torch.manual_seed(0)
    return PneumoniaClassifier("resnet50", dropout=0.25, pos_weight=2.0, image_size=32).eval()


@pytest.fixture
def evil(tmp_path, module):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({**_checkpoint(module), "payload": _Touch(marker)}, path)
    return path, marker


def _explain_image(path: pathlib.Path) -> None:
    image = path.parent / "x.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    explain_file(image, path, out=path.parent / "out.png")


LOADERS = {
    "read_checkpoint": read_checkpoint,
    "load_checkpoint": load_checkpoint,
    "explain stage": lambda path: load_model(path, torch.device("cpu")),
    "explain-image": _explain_image,
}


@pytest.mark.parametrize("force_no_weights_only", [False, True])
@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_a_checkpoint_that_needs_pickled_objects_is_refused_and_runs_nothing(
    evil, loader, force_no_weights_only, monkeypatch
):
    path, marker = evil
    if force_no_weights_only:  # torch reads it at each torch.load call; it overrides only an unset weights_only
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CxrError, match=re.escape(f"{path}: refused: it needs pickled objects")):
        loader(path)
    assert not marker.exists()


def test_the_malicious_checkpoint_does_run_code_when_unpickled(evil, monkeypatch):
    """The test above is not vacuous: an implicit ``weights_only`` under the variable does run the payload."""
    path, marker = evil
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(path, map_location="cpu")
    assert marker.exists()


@pytest.mark.parametrize("pretrained", ["imagenet", "/nowhere/resnet50-elsewhere.pth"])
def test_a_checkpoint_loads_without_the_weights_it_was_trained_from(tmp_path, module, pretrained, monkeypatch):
    path = tmp_path / "best.ckpt"
    torch.save(_checkpoint(module, pretrained=pretrained), path)

    def offline(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, PneumoniaClassifier) and not loaded.training
    assert dict(loaded.hparams) == {**dict(module.hparams), "pretrained": pretrained}
    saved = module.state_dict()
    assert loaded.state_dict().keys() == saved.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert loaded.history == [{"epoch": 0.0, "val/loss": 0.7}]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))
    # the Lightning-free loader of explain and explain-image: the same network and hyper-parameters
    network, hparams = load_classifier(path)
    assert not network.training and hparams == dict(loaded.hparams)
    assert network.state_dict().keys() == module.model.state_dict().keys()
    for key, value in network.state_dict().items():
        assert torch.equal(value, module.model.state_dict()[key]), key
    with torch.no_grad():
        assert torch.equal(network(x), module(x))


def test_a_truncated_or_garbage_file_is_an_error_naming_it(tmp_path, module):
    whole = tmp_path / "whole.ckpt"
    torch.save(_checkpoint(module), whole)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"<html>not found</html>" * 10)
    for path in (truncated, garbage):
        with pytest.raises(CxrError, match=re.escape(f"{path}: not a cxrexplain checkpoint")):
            load_checkpoint(path)


@pytest.mark.parametrize("load", [load_checkpoint, load_classifier])
def test_a_foreign_weights_only_file_is_an_error_naming_it(tmp_path, module, load):
    plain = tmp_path / "state_dict.pth"  # a bare state dict: loads weights-only, but is no checkpoint
    torch.save(module.model.state_dict(), plain)
    with pytest.raises(CxrError, match=re.escape(f"{plain}: not a cxrexplain training checkpoint")):
        load(plain)
    other = tmp_path / "other.ckpt"  # the right shape but weights of another architecture
    torch.save(_checkpoint(module, arch="densenet121"), other)
    with pytest.raises(CxrError, match=re.escape(f"{other}: not a cxrexplain training checkpoint")):
        load(other)
    extra = tmp_path / "extra.ckpt"  # a key that is neither the network's nor the loss's
    state = {**module.state_dict(), "head2.weight": torch.zeros(1)}
    torch.save({**_checkpoint(module), "state_dict": state}, extra)
    with pytest.raises(CxrError, match=re.escape(f"{extra}: not a cxrexplain training checkpoint")):
        load(extra)


def test_no_code_reads_a_checkpoint_unsafely():
    root = pathlib.Path(sys.modules["cxrexplain"].__file__).parent
    for source in root.rglob("*.py"):
        text = source.read_text()
        # saving the full state is fine (save_checkpoint(..., weights_only=False)); loading must never unpickle
        loads = [line for line in text.splitlines() if "weights_only=False" in line and "save_checkpoint" not in line]
        assert not loads, (source, loads)
        assert "load_from_checkpoint" not in text, source


def test_a_vit_checkpoint_rebuilds_at_its_recorded_input_size(tmp_path):
    """A ViT is built for one input size: the checkpoint's ``image_size`` rebuilds it (no download) with the same
    logits, and explain-image runs at that size. (Each load of its 86 M parameters costs seconds here: the training
    module's reader builds it from the same hyper-parameters, and another input size is refused in
    tests/models/test_backbones.py.)"""
    torch.manual_seed(0)
    module = PneumoniaClassifier("vit_b_16", image_size=32).eval()
    path = tmp_path / "vit.ckpt"
    torch.save(_checkpoint(module), path)
    x = torch.rand(2, 1, 32, 32)
    model, hparams = load_classifier(path)
    with torch.no_grad():
        assert torch.equal(model(x), module.model(x))
    assert hparams["image_size"] == 32 and model.features.tokens.pos_embedding.shape == (1, 5, 768)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)).save(image)
    result = explain_file(image, path, out=tmp_path / "out.png")
    assert result.heatmap.shape == (32, 32) and result.path.is_file()
