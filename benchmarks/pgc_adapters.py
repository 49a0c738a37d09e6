"""What it takes to run pytorch-grad-cam 1.5.7 (pgc) on this project's single-logit classifiers: the logits as pgc's
(B, C) output, a signed score for its guided-backpropagation model, the study's binary targets as pgc targets, its ViT
``reshape_transform``, and the calibration that makes a random model's maps informative. Shared by the oracle tests
(tests/explain/test_cam.py, test_perturbation_cams.py, test_backbone_oracles.py, test_gradient_attributions.py) and
benchmarks/bench_explain.py (pytest's ``pythonpath`` names benchmarks/). Not a benchmark itself."""

from __future__ import annotations

import torch
from torch import nn

from cxrexplain.models.backbones import Classifier


class Logits(nn.Module):
    """pgc expects (B, C) outputs: the classifier's logits as (B, 1)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).unsqueeze(1)


class Signed(nn.Module):
    """pgc's guided model explains ``output[0, category]``: the score of class 1 (``sign`` 1) or 0 (``sign`` −1) as a
    (B, 1) output."""

    def __init__(self, model: nn.Module, sign: float) -> None:
        super().__init__()
        self.model, self.sign = model, sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) * self.sign).unsqueeze(1)


def targets(classes: list[int]) -> list:
    """One pgc target per image: ``out[0]`` (the logit) for class 1, ``-out[0]`` for class 0 (pgc's own binary target
    has a sign bug for the negative class: design.md "Traps")."""
    return [(lambda out: out[0]) if c == 1 else (lambda out: -out[0]) for c in classes]


def vit_reshape(tensor: torch.Tensor, height: int = 2, width: int = 2) -> torch.Tensor:
    """pytorch-grad-cam's ``reshape_transform`` for ViTs (its tutorial's): drop the class token, tokens to the grid."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def calibrate(model: Classifier, x: torch.Tensor) -> None:
    """Make a random model's maps on ``x`` (two images or more) informative.

    BatchNorm running statistics := the batch's, so that eval-mode feature maps are not dominated by one offset. The
    head's biases are zeroed, so ``z = W₂ ReLU(W₁ p)`` is positively homogeneous in the head's input ``p`` (the pooled
    features; the ViT's class token) and, for a CNN, Grad-CAM's map before its ReLU sums to ``z`` (Euler): the
    predicted class has positive evidence. ``W₂`` is made orthogonal to the batch's mean hidden vector (so the logits
    sum to 0: both classes are predicted) and scaled so that ``mean |z| = 1``.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    model.train()
    with torch.no_grad():
        model.features(x)
        model.eval()
        inputs = []
        hook = model.head.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
        model(x)
        hook.remove()
        first, last = model.head[-3], model.head[-1]
        first.bias.zero_()
        last.bias.zero_()
        hidden = model.head[:-1](inputs[0]).mean(dim=0)
        last.weight -= (last.weight @ hidden) / hidden.dot(hidden) * hidden
        last.weight /= model(x).abs().mean()
