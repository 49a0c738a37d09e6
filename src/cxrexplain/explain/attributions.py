"""Attributions through captum: the study's baselines (saliency, integrated gradients, occlusion, gradient SHAP), the
papers' gradient methods (input × gradient, guided backpropagation, Guided Grad-CAM, DeepLIFT) and SmoothGrad over
each gradient method (``<method>_smoothgrad``, captum's NoiseTunnel).

Every method explains the study's binary target per image: the score is the logit for class 1 (Pneumonia) and minus
the logit for class 0 (No Finding). Captum sees a forward function that returns ``sign · logit`` of shape (B,) and takes
the signs as an additional forward argument, so ``target=None`` is right for every image and captum expands the signs
along with the images it perturbs or interpolates.

Each method in :data:`ATTRIBUTION_METHODS` returns the *raw* attribution of shape (B, H, W): signed, summed over the
single input channel. :func:`compute_attributions` turns raw attributions into maps: the absolute value (or the
positive part), min-max normalised per image to [0, 1]. The baselines, input × gradient and DeepLIFT are linear in
the score, so their absolute map is the same for either class (the sign shows only in the raw attribution and in the
``positive`` maps); guided backpropagation and Guided Grad-CAM are not (their ReLUs act on the signed gradient).

DeepLIFT runs on :func:`relu_network` of the model, a ``torch.fx`` copy sharing its parameters in which every ReLU
call is its own module and max-pooling is written with ReLUs: captum's DeepLift fails on a ReLU module called twice
(torchvision's ResNet blocks) and its max-pool rule breaks completeness (DenseNet's stem).

``batch_size`` bounds the number of images, real, interpolated or perturbed, that go through the model in one forward
pass: images are processed in chunks, and captum's own batching (``internal_batch_size``, ``perturbations_per_eval``)
is set so that each forward pass holds at most ``batch_size`` images (gradient SHAP: ``max(batch_size, n_samples)``).

The model is put in eval mode (Dropout off, BatchNorm on its running statistics) while it is explained and every
module's mode is restored afterwards; gradients are taken with respect to the input only (``torch.autograd.grad``),
so no parameter gradient is accumulated.

Inputs are in the study's normalised units ``(pixel - GRAY_MEAN) / GRAY_STD`` with pixels in [0, 1]; :data:`BLACK` is
a black pixel (0) in those units, the reference that integrated gradients, occlusion and gradient SHAP start from.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from cxrexplain import names
from cxrexplain.errors import CxrError
from cxrexplain.explain.cam import evaluating, normalise
from cxrexplain.models.backbones import GRAY_MEAN, GRAY_STD, Classifier

BLACK: float = -GRAY_MEAN / GRAY_STD
"""A black pixel (0 in [0, 1]) in the normalised units the model sees: ``(0 - GRAY_MEAN) / GRAY_STD`` ≈ -1.987."""

Reduce = Literal["abs", "positive"]


def _captum():  # -> the captum.attr module
    """captum, imported when a method runs (reading the registry, as config validation does, stays cheap)."""
    import captum.attr

    return captum.attr


class AttributionMethod(Protocol):
    """``method(model, images, classes, *, batch_size, **options) -> raw attributions (B, H, W)``."""

    def __call__(
        self, model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, batch_size: int, **options: Any
    ) -> torch.Tensor: ...


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and ``device``) and numpy's global generator for the block, then restore their states.

    Captum draws gradient-SHAP baselines and interpolation points from these global generators; seeding them here
    makes a call reproducible without changing the random streams of the caller.
    """
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(state)


def signs(classes: torch.Tensor | Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """+1 for class 1 (Pneumonia), -1 for class 0 (No Finding): shape (B,), dtype and device of ``like``."""
    c = torch.as_tensor(classes, device=like.device)
    if c.ndim != 1 or c.shape[0] != like.shape[0]:
        raise ValueError(f"classes: expected shape ({like.shape[0]},), got {tuple(c.shape)}")
    return (2 * (c > 0).to(like.dtype) - 1).to(like.dtype)


def signed_forward(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``forward(x, sign) = sign · model(x)``: the per-image binary score (B,), for captum's ``target=None``."""

    def forward(x: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        return model(x).reshape(-1) * sign

    return forward


def _in_eval_mode(method: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(method)
    def wrapped(model: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        with evaluating(model):
            return method(model, *args, **kwargs)

    return wrapped


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _check(images: torch.Tensor, batch_size: int) -> None:
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images: expected shape (B, 1, H, W), got {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _pixels(fraction: float, side: int) -> int:
    return max(1, min(side, round(fraction * side)))


@_in_eval_mode
def saliency(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """Saliency (Simonyan et al. 2014): the gradient of the score with respect to each input pixel.

    ``A(x)_ij = ∂ s(x) / ∂ x_ij`` with ``s = ±logit``; the classic saliency map is ``|A|`` (``reduce="abs"``).
    """
    _check(images, batch_size)
    forward = signed_forward(model)
    method = _captum().Saliency(forward)
    out = []
    for part in _chunks(len(images), batch_size):
        x = images[part].detach().requires_grad_()
        attr = method.attribute(x, additional_forward_args=(signs(classes[part], x),), abs=False)
        out.append(attr.detach().sum(dim=1))
    return torch.cat(out)


@_in_eval_mode
def integrated_gradients(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    *,
    batch_size: int = 16,
    n_steps: int = 32,
    baseline: float = BLACK,
) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017) from a black image.

    ``A(x)_ij = (x_ij − b_ij) · ∫₀¹ ∂ s(b + α (x − b)) / ∂ x_ij dα``, the integral by ``n_steps``-point Gauss-Legendre
    quadrature (captum's default). The baseline ``b`` is a black image (:data:`BLACK` in normalised units): "no signal"
    on a radiograph, where opacities are bright. Completeness: ``Σ A = s(x) − s(b)`` up to the quadrature error.
    """
    _check(images, batch_size)
    method = _captum().IntegratedGradients(signed_forward(model))
    out = []
    for part in _chunks(len(images), batch_size):
        x = images[part].detach()
        attr = method.attribute(
            x,
            baselines=baseline,
            additional_forward_args=(signs(classes[part], x),),
            n_steps=n_steps,
            internal_batch_size=batch_size,
        )
        out.append(attr.detach().sum(dim=1))
    return torch.cat(out)


@_in_eval_mode
def occlusion(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    *,
    batch_size: int = 16,
    window: float = 1 / 8,
    stride: float = 1 / 16,
    baseline: float = BLACK,
) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus 2014): the drop in score when a square patch is blacked out, averaged per pixel.

    A ``w × w`` window slides with stride ``t`` (``w = round(window · H)``, ``t = round(stride · H)``, at least one
    pixel: 28 and 14 pixels at 224). For each position ``P``, ``d_P = s(x) − s(x with P set to b)``; the attribution
    of a pixel is the mean of ``d_P`` over the windows that cover it (0 for a pixel no window covers). ``b`` is
    :data:`BLACK`.
    """
    _check(images, batch_size)
    height, width = images.shape[-2:]
    w_h, w_w = _pixels(window, height), _pixels(window, width)
    s_h, s_w = _pixels(stride, height), _pixels(stride, width)
    method = _captum().Occlusion(signed_forward(model))
    out = []
    for part in _chunks(len(images), batch_size):
        x = images[part].detach()
        attr = method.attribute(
            x,
            sliding_window_shapes=(1, w_h, w_w),
            strides=(1, s_h, s_w),
            baselines=baseline,
            additional_forward_args=(signs(classes[part], x),),
            perturbations_per_eval=max(1, batch_size // len(x)),
        )
        out.append(attr.detach().sum(dim=1))
    return torch.cat(out)


@_in_eval_mode
def gradient_shap(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    *,
    batch_size: int = 16,
    n_samples: int = 8,
    noise_baselines: int = 3,
    stdevs: float = 0.0,
    baseline: float = BLACK,
    seed: int = 0,
) -> torch.Tensor:
    """Gradient SHAP (Lundberg & Lee 2017, captum): expected gradients over random baselines and interpolation points.

    ``A(x) = E_{b ~ B, α ~ U(0, 1)} [(x − b) · ∂ s(b + α (x − b)) / ∂ x]``, estimated from ``n_samples`` draws per
    image. The baseline set ``B`` is one black image and ``noise_baselines`` images of uniform noise over the pixel
    range [0, 1] (normalised: ``BLACK + U(0, 1) / GRAY_STD``); ``stdevs`` adds Gaussian noise to the inputs (0: none).
    The noise images and the draws come from ``seed``, without touching the caller's random streams.
    """
    _check(images, batch_size)
    method = _captum().GradientShap(signed_forward(model))
    per_chunk = max(1, batch_size // n_samples)
    with seeded(seed, images.device):
        shape = (noise_baselines, *images.shape[1:])
        noise = baseline + torch.rand(shape, device=images.device, dtype=images.dtype) / GRAY_STD
        baselines = torch.cat([torch.full((1, *images.shape[1:]), baseline, device=images.device), noise])
        out = []
        for part in _chunks(len(images), per_chunk):
            x = images[part].detach()
            attr = method.attribute(
                x,
                baselines=baselines.to(x.dtype),
                additional_forward_args=(signs(classes[part], x),),
                n_samples=n_samples,
                stdevs=stdevs,
            )
            out.append(attr.detach().sum(dim=1))
    return torch.cat(out)


# ------------------------------------------------------------------------- ReLU networks for DeepLIFT


class ReluMaxPool2d(nn.Module):
    """``nn.MaxPool2d`` written with ReLUs, so that DeepLIFT's Rescale rule applies to it exactly.

    The input is padded by replicating its edges (the window of a padded position always holds the edge it copies,
    so the maximum is that of the valid positions, as with max-pooling's implicit −inf), taken as k² strided views
    (the window's value at each offset), and reduced as ``m ← m + ReLU(v − m)`` (``max(m, v)``) over the offsets in
    row-major order, with one ReLU module per step. Forward equals ``nn.MaxPool2d`` up to rounding (``m + (v − m)``
    may differ from ``v`` by an
    ulp). Only ``dilation=1``, ``ceil_mode=False`` and no returned indices, as every backbone here uses.
    """

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        pair = nn.modules.utils._pair
        if pool.dilation not in (1, (1, 1)) or pool.ceil_mode or pool.return_indices:
            raise CxrError(
                f"{pool}: only max-pooling without dilation, ceil mode or indices can be explained by DeepLIFT"
            )
        self.kernel, self.stride, self.padding = pair(pool.kernel_size), pair(pool.stride), pair(pool.padding)
        self.steps = nn.ModuleList(nn.ReLU() for _ in range(self.kernel[0] * self.kernel[1] - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        padded = torch.nn.functional.pad(x, (pw, pw, ph, ph), mode="replicate") if ph or pw else x
        out_h, out_w = (x.shape[-2] + 2 * ph - kh) // sh + 1, (x.shape[-1] + 2 * pw - kw) // sw + 1
        # the window's value at offset (i, j) for every output position: a strided view (no im2col copy)
        values = [
            padded[..., i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw]
            for i in range(kh)
            for j in range(kw)
        ]
        m = values[0]
        for relu, v in zip(self.steps, values[1:], strict=True):
            m = m + relu(v - m)
        return m


_RELU_FUNCTIONS = {torch.relu, torch.relu_, torch.nn.functional.relu}
_UNSUPPORTED = (nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.ReLU6, nn.PReLU, nn.SELU)
_UNSUPPORTED_FUNCTIONS = {
    torch.nn.functional.silu,
    torch.nn.functional.gelu,
    torch.nn.functional.hardswish,
    torch.nn.functional.hardsigmoid,
    torch.nn.functional.mish,
    torch.nn.functional.relu6,
}


def relu_network(model: nn.Module) -> nn.Module:
    """``model`` traced by ``torch.fx`` with every ReLU its own non-in-place ``nn.ReLU`` and every ``nn.MaxPool2d`` a
    :class:`ReluMaxPool2d`: the model captum's DeepLIFT computes correctly. Shares the model's parameters and modules.

    captum's DeepLift keeps each non-linear module's input and output on the module between its forward and backward
    hooks: a module called twice (torchvision's ResNet blocks call ``self.relu`` two or three times) fails with
    "detected that does not contain some of the input/output attributes", a functional ``F.relu`` is not hooked (its
    plain gradient breaks completeness), and captum's max-pool rule (``max_unpool``, which assigns instead of
    accumulating) breaks completeness too (measured in the tests). Activations without a DeepLIFT rule in captum
    (SiLU, GELU, ...) are refused with a :class:`CxrError`.
    """
    import torch.fx

    graph_module = torch.fx.symbolic_trace(model)
    graph = graph_module.graph
    for count, node in enumerate(list(graph.nodes)):
        module = graph_module.get_submodule(node.target) if node.op == "call_module" else None
        unsupported = isinstance(module, _UNSUPPORTED) or (
            node.op == "call_function" and node.target in _UNSUPPORTED_FUNCTIONS
        )
        if unsupported:
            raise CxrError(f"deeplift: {node.target} has no DeepLIFT rule in captum (ReLU networks only)")
        if isinstance(module, nn.MaxPool2d):
            replacement: nn.Module = ReluMaxPool2d(module)
        elif (
            isinstance(module, nn.ReLU)
            or (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target in ("relu", "relu_"))
        ):
            replacement = nn.ReLU()
        else:
            continue
        name = f"_deeplift_{count}"
        graph_module.add_submodule(name, replacement)
        with graph.inserting_after(node):
            new = graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph_module.recompile()
    return graph_module


# ------------------------------------------------------------------- gradient methods and SmoothGrad


class SignedModel(nn.Module):
    """``forward(x, sign) = sign · model(x)`` as a module: captum's hook-based methods need an ``nn.Module``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        return self.model(x).reshape(-1) * sign


Made = tuple[Any, dict[str, Any], int]
"""A captum attribution object, its ``attribute`` keyword arguments, and forward images per input image."""


def _make_saliency(model: nn.Module, batch_size: int) -> Made:
    return _captum().Saliency(signed_forward(model)), {"abs": False}, 1


def _make_input_x_gradient(model: nn.Module, batch_size: int) -> Made:
    return _captum().InputXGradient(signed_forward(model)), {}, 1


def _make_guided_backprop(model: nn.Module, batch_size: int) -> Made:
    return _captum().GuidedBackprop(SignedModel(model)), {}, 1


def _make_guided_gradcam(model: nn.Module, batch_size: int) -> Made:
    layer = getattr(model, "features", None)
    if not isinstance(layer, nn.Module):
        raise CxrError("guided_gradcam: the model has no CAM layer (a Classifier's `features`)")
    if type(model).cam_input is not Classifier.cam_input:  # the CAM map is not `features`' output (a ViT's token map)
        raise CxrError(
            f"guided_gradcam: captum's GuidedGradCam takes the CAM layer as a module's output, but "
            f"{getattr(model, 'arch', type(model).__name__)}'s CAM map is computed from its token map: not supported "
            "for it (leave guided_gradcam out of explain.attributions for this backbone)"
        )
    signed = SignedModel(model)
    return _captum().GuidedGradCam(signed, signed.model.features), {"interpolate_mode": "bilinear"}, 1


def _make_deeplift(model: nn.Module, batch_size: int, baseline: float = BLACK) -> Made:
    return _captum().DeepLift(SignedModel(relu_network(model))), {"baselines": baseline}, 2


def _make_integrated_gradients(model: nn.Module, batch_size: int, n_steps: int = 32, baseline: float = BLACK) -> Made:
    kwargs = {"baselines": baseline, "n_steps": n_steps, "internal_batch_size": batch_size}
    return _captum().IntegratedGradients(signed_forward(model)), kwargs, 1


_MAKERS: dict[str, Callable[..., Made]] = {
    "saliency": _make_saliency,
    "input_x_gradient": _make_input_x_gradient,
    "guided_backprop": _make_guided_backprop,
    "guided_gradcam": _make_guided_gradcam,
    "deeplift": _make_deeplift,
    "integrated_gradients": _make_integrated_gradients,
}


def _attribute(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    *,
    batch_size: int,
    smoothgrad: tuple[int, float, int] | None = None,
    **options: Any,
) -> torch.Tensor:
    """Raw attributions (B, H, W) of the gradient method ``name`` (``_MAKERS``), in chunks of images of at most
    ``batch_size`` forward images; ``smoothgrad = (samples, noise, seed)`` wraps it in captum's NoiseTunnel."""
    _check(images, batch_size)
    method, kwargs, per_image = _MAKERS[name](model, batch_size, **options)
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    if smoothgrad is not None:
        samples, noise, seed = smoothgrad
        if samples < 1 or not noise > 0:
            raise ValueError(f"smoothgrad: samples must be >= 1 and noise > 0, got {samples} and {noise}")
        together = max(1, min(samples, batch_size // per_image))
        method = _captum().NoiseTunnel(method)
        kwargs = {
            **kwargs,
            "nt_type": "smoothgrad",
            "nt_samples": samples,
            "nt_samples_batch_size": together,
            "stdevs": noise / GRAY_STD,
        }
        per_image *= together
        context = seeded(seed, images.device)
    chunk = max(1, batch_size // per_image)  # IG: captum's internal_batch_size bounds its interpolated passes
    out = []
    with context:
        for part in _chunks(len(images), chunk):
            x = images[part].detach().requires_grad_()
            attr = method.attribute(x, additional_forward_args=(signs(classes[part], x),), **kwargs)
            out.append(attr.detach().sum(dim=1))
    return torch.cat(out)


@_in_eval_mode
def input_x_gradient(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, batch_size: int = 16
) -> torch.Tensor:
    """Input × gradient (Shrikumar et al. 2016, captum ``InputXGradient``): ``A(x)_ij = x_ij · ∂s/∂x_ij``.

    ``x`` in the network's normalised units, so a pixel at the mean gray (0.449) has no attribution."""
    return _attribute("input_x_gradient", model, images, classes, batch_size=batch_size)


@_in_eval_mode
def guided_backprop(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, batch_size: int = 16
) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015, captum ``GuidedBackprop``): the gradient of the score with
    every ReLU's backward replaced by ``ReLU(grad_out · 1[input > 0])``.

    captum overrides the backward of every ``nn.ReLU`` module through hooks that keep no state, so a ReLU module called
    several times (torchvision's ResNet blocks) and in-place ReLUs (DenseNet) are guided correctly: equal to
    pytorch-grad-cam's ``GuidedBackpropReLUModel`` on every ReLU backbone (tested). A functional ``F.relu`` would not
    be guided (none in this project's backbones: DenseNet's final ``F.relu`` is a module here)."""
    return _attribute("guided_backprop", model, images, classes, batch_size=batch_size)


@_in_eval_mode
def guided_gradcam(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, batch_size: int = 16
) -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017, captum ``GuidedGradCam``): guided backpropagation times Grad-CAM of
    the CAM layer (``model.features``) upsampled bilinearly to the input, ``ReLU(Σ_k w_k A_k)`` unnormalised.

    Conventions: captum's default upsampling is nearest; bilinear (``align_corners=False``) is chosen here, as for
    every CAM of this project. pytorch-grad-cam's recipe multiplies by the *min-max normalised* Grad-CAM instead: the
    same map divided by ``max − min`` of the image's Grad-CAM when its minimum is 0 (tested); maps are min-max
    normalised in the end, so both give the same map then."""
    return _attribute("guided_gradcam", model, images, classes, batch_size=batch_size)


@_in_eval_mode
def deeplift(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, batch_size: int = 16, baseline: float = BLACK
) -> torch.Tensor:
    """DeepLIFT (Shrikumar et al. 2017, captum ``DeepLift``, Rescale rule) from a black image, on
    :func:`relu_network` of the model (distinct ReLU modules, max-pooling as ReLUs).

    Completeness: ``Σ A = s(x) − s(b)`` (summation-to-delta), exact up to rounding on this project's ReLU backbones
    (tested on each)."""
    return _attribute("deeplift", model, images, classes, batch_size=batch_size, baseline=baseline)


def smoothgrad(base: str) -> AttributionMethod:
    """SmoothGrad (Smilkov et al. 2017) over ``base`` through captum's ``NoiseTunnel`` (``nt_type="smoothgrad"``):
    the mean of ``base``'s raw attributions over ``samples`` copies of the image with Gaussian noise of standard
    deviation ``noise`` × the pixel range [0, 1] (``noise / GRAY_STD`` in normalised units; the paper's 10-20 %).
    The noise comes from ``seed`` without touching the caller's random streams; ``options`` go to ``base``."""

    @_in_eval_mode
    def method(
        model: nn.Module,
        images: torch.Tensor,
        classes: torch.Tensor,
        *,
        batch_size: int = 16,
        samples: int = 16,
        noise: float = 0.15,
        seed: int = 0,
        **options: Any,
    ) -> torch.Tensor:
        return _attribute(
            base, model, images, classes, batch_size=batch_size, smoothgrad=(samples, noise, seed), **options
        )

    method.__name__ = method.__qualname__ = f"{base}_smoothgrad"
    method.__doc__ = f"SmoothGrad over {base}: see :func:`smoothgrad`."
    return method


ATTRIBUTION_METHODS: dict[str, AttributionMethod] = names.registered(
    "ATTRIBUTION_METHODS",
    names.ATTRIBUTIONS,
    {
        "saliency": saliency,
        "integrated_gradients": integrated_gradients,
        "occlusion": occlusion,
        "gradient_shap": gradient_shap,
        "input_x_gradient": input_x_gradient,
        "guided_backprop": guided_backprop,
        "guided_gradcam": guided_gradcam,
        "deeplift": deeplift,
        **{f"{base}_smoothgrad": smoothgrad(base) for base in names.SMOOTHGRAD_BASES},
    },
)
"""Name → raw attribution function; adding a method is one entry (same call signature, raw (B, H, W) output) and
its name in ``names.ATTRIBUTIONS``. A gradient method gains a SmoothGrad variant by its captum constructor in
``_MAKERS`` and its name in ``names.SMOOTHGRAD_BASES``."""


def to_maps(raw: torch.Tensor, reduce: Reduce = "abs") -> torch.Tensor:
    """Raw attributions (B, H, W) → maps in [0, 1]: ``|A|`` (``abs``) or ``max(A, 0)`` (``positive``), then min-max."""
    if reduce == "abs":
        return normalise(raw.abs())
    if reduce == "positive":
        return normalise(raw.clamp_min(0))
    raise ValueError(f"reduce must be 'abs' or 'positive', got {reduce!r}")


def compute_attributions(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor | Sequence[int],
    methods: Sequence[str],
    batch_size: int = 16,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    reduce: Reduce = "abs",
) -> dict[str, torch.Tensor]:
    """Maps (B, H, W) in [0, 1] for each of ``methods``, explaining class ``classes[i]`` of image ``i``.

    ``images`` is (B, 1, H, W) in normalised units on the model's device; ``classes`` holds 0 (No Finding) or 1
    (Pneumonia) per image. ``options[name]`` passes keyword arguments to one method (e.g. ``{"occlusion":
    {"window": 0.1}}``). The model is in eval mode during the call and its modes are restored afterwards.
    """
    unknown = [m for m in methods if m not in ATTRIBUTION_METHODS]
    if unknown:
        raise CxrError(
            f"attribution method(s) {', '.join(map(repr, unknown))}: unknown "
            f"(available: {', '.join(ATTRIBUTION_METHODS)})"
        )
    options = options or {}
    c = torch.as_tensor(classes, device=images.device)
    maps: dict[str, torch.Tensor] = {}
    with evaluating(model):
        for name in methods:
            raw = ATTRIBUTION_METHODS[name](model, images, c, batch_size=batch_size, **dict(options.get(name, {})))
            maps[name] = to_maps(raw, reduce)
    return maps
