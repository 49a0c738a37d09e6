"""Sanity checks for saliency maps (Adebayo et al. 2018): do the maps depend on the learned weights and the labels?

*Model-parameter randomisation* (:func:`randomisation_curve`): the trained model's maps are compared with the maps of
copies whose weights are re-initialised block by block (:func:`randomisation_blocks`), in the paper's three orders:

- ``top_down`` (cascading from the output): step ``k`` randomises blocks ``1 … k`` of the list, head first;
- ``bottom_up`` (cascading from the input): step ``k`` randomises the ``k`` blocks nearest the input, stem first;
- ``independent``: step ``k`` randomises block ``k`` alone (top-down numbering), everything else trained.

Step 0 randomises nothing and checks that the explanation is deterministic. Each comparison gives, per image, the
Spearman rank correlation of the signed maps, of their absolute values, and the SSIM of the min-max normalised maps
(:func:`map_similarity`). *Data randomisation* (:func:`data_randomisation`) compares the maps of the real model with
those of a model trained on permuted labels.

Verdict (:func:`sanity_verdict`): a method passes when its maps have already decorrelated (mean |ρ| below
``threshold``, default :data:`SANITY_PASS`) once the head and the last feature block are randomised (top-down step
:data:`PASS_STEP`). "Some step decorrelates" would be too lenient: a map that changes only when the first convolution
is randomised, as an edge detector does (Adebayo et al. 2018), would pass at the last step.

Convention shared by every similarity here: a constant map (on either side) has Spearman ρ = 0 with any map (see
:func:`cxrexplain.explain.measures.consistency.rank_correlation`), so a method whose maps randomisation *destroys*
(e.g. a Grad-CAM that becomes all zero) counts as changed, not as missing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrexplain import names
from cxrexplain.explain.attributions import seeded
from cxrexplain.explain.cam import normalise
from cxrexplain.explain.measures.consistency import rank_correlation
from cxrexplain.models.backbones import BACKBONES

ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``explain_fn(model, images (B, 1, H, W), classes (B,)) -> signed raw maps (B, H, W)`` (or (M·B, H, W), see
:func:`randomisation_curve`)."""

Mode = Literal["top_down", "bottom_up", "independent"]
MODES: tuple[Mode, ...] = ("top_down", "bottom_up", "independent")
names.registered("MODES", names.SANITY_MODES, dict.fromkeys(MODES))  # the config's copy of these names agrees

SANITY_PASS = 0.5
"""Default threshold: a method passes when its mean |ρ| at top-down step :data:`PASS_STEP` is below this."""

PASS_STEP = 2
"""The top-down step at which the verdict is read: the head and the last feature block randomised."""

SIMILARITIES = ("spearman", "spearman_abs", "ssim")
CURVE_COLUMNS = ["mode", "step", "block", "image", *SIMILARITIES]

SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# ------------------------------------------------------------------------------------------------------------ blocks


def randomisation_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks of a :class:`~cxrexplain.models.backbones.Classifier`, output first, for cascading randomisation.

    Always first: ``head`` (pooling, the two linear layers); then the blocks its backbone's registry entry names
    (:attr:`~cxrexplain.models.backbones.BackboneSpec.blocks`: for ResNet-50 ``layer4`` ... ``stem``, for
    DenseNet-121 ``denseblock4`` ... ``stem``, for ViT-B/16 ``encoder_layer_11`` ... ``embedding``); for any other
    ``features``, its children with parameters, last first,
    named ``features.<child>``. Every parameter of the model belongs to exactly one block.
    """
    head, features = getattr(model, "head", None), getattr(model, "features", None)
    if not isinstance(head, nn.Module) or not isinstance(features, nn.Module):
        raise ValueError("randomisation_blocks expects a model with `features` and `head` (a Classifier)")
    spec = BACKBONES.get(getattr(model, "arch", ""))
    if spec is not None:
        return [("head", head), *spec.blocks(model)]
    children = [(n, c) for n, c in features.named_children() if any(True for _ in c.parameters())]
    return [("head", head), *((f"features.{n}", c) for n, c in reversed(children))]


def reinitialise(module: nn.Module, seed: int) -> None:
    """Call ``reset_parameters()`` on every submodule that has one, drawing from ``seed`` (global RNG untouched).

    Convolutions and linear layers get fresh random weights (PyTorch's default initialisation); BatchNorm layers
    get weight 1, bias 0 and fresh running statistics (mean 0, variance 1); LayerNorm weight 1, bias 0; a
    ``MultiheadAttention``'s input projection Xavier-uniform with bias 0 (its ``_reset_parameters``: it has no public
    one); a ViT's class token 0 and position embedding N(0, 0.02²) (``VitTokens.reset_parameters``). Submodules are
    reset in ``module.modules()`` order after one ``torch.manual_seed(seed)``.
    """
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with seeded(seed, device), torch.no_grad():
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if isinstance(sub, nn.MultiheadAttention):  # its input projection's reset is private
                reset = sub._reset_parameters
            if callable(reset):
                reset()


# -------------------------------------------------------------------------------------------------------- similarity


def ssim(
    maps_a: torch.Tensor,
    maps_b: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = SSIM_WINDOW,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of paired maps, per image: float64 of shape (B,).

    As ``skimage.metrics.structural_similarity(a, b, data_range=data_range)`` with its defaults: a uniform
    ``win_size × win_size`` window, sample covariances (``× n/(n − 1)``, ``n = win_size²``), ``C1 = (k1·R)²``,
    ``C2 = (k2·R)²`` and

        ``S = (2 μa μb + C1)(2 σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2))``,

    averaged over the windows that lie wholly inside the map (skimage filters the whole map and then crops
    ``(win_size − 1) / 2`` pixels from each border, which leaves exactly these). Maps need H, W ≥ ``win_size``.
    """
    single = maps_a.ndim == 2
    a = (maps_a.unsqueeze(0) if single else maps_a).to(torch.float64)
    b = (maps_b.unsqueeze(0) if single else maps_b).to(torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < win_size or win_size % 2 != 1:
        raise ValueError(f"ssim needs an odd win_size no larger than the maps, got {win_size} for {tuple(a.shape)}")

    def mean(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x.unsqueeze(1), win_size, stride=1).squeeze(1)

    n = win_size**2
    cov_norm = n / (n - 1)
    ua, ub = mean(a), mean(b)
    va = cov_norm * (mean(a * a) - ua * ua)
    vb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = (2 * ua * ub + c1) * (2 * vab + c2) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    out = s.mean(dim=(-2, -1))
    return out[0] if single else out


def map_similarity(original: torch.Tensor, other: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image similarity of paired signed maps (B, H, W): ``spearman``, ``spearman_abs``, ``ssim``, each (B,).

    - ``spearman``: Spearman ρ of the signed maps (:func:`~cxrexplain.explain.measures.consistency.rank_correlation`);
    - ``spearman_abs``: Spearman ρ of ``|map|`` (what the study shows for gradient methods; for non-negative maps
      such as CAMs it equals ``spearman``). Adebayo et al. report both: the sign of gradient maps can flip while their
      magnitudes stay alike;
    - ``ssim``: :func:`ssim` of the maps min-max normalised per image to [0, 1] (``data_range`` 1, skimage's default
      7×7 uniform window), a constant map normalising to zeros.

    A constant map has ρ = 0 with any map (never NaN).
    """
    original, other = original.detach(), other.detach()
    if original.shape != other.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(original.shape)} and {tuple(other.shape)}")
    return {
        "spearman": rank_correlation(original, other),
        "spearman_abs": rank_correlation(original.abs(), other.abs()),
        "ssim": ssim(normalise(original), normalise(other)),
    }


# ------------------------------------------------------------------------------------------ parameter randomisation


def _steps(mode: Mode, count: int) -> list[list[int]]:
    """Indices (into the top-down block list) randomised at steps 1 … count of ``mode``."""
    if mode == "top_down":
        return [list(range(k)) for k in range(1, count + 1)]
    if mode == "bottom_up":
        return [list(range(count - k, count)) for k in range(1, count + 1)]
    if mode == "independent":
        return [[k] for k in range(count)]
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def randomisation_curve(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor | Sequence[int],
    explain_fn: ExplainFn,
    seed: int = 0,
    modes: Sequence[Mode] = MODES,
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps"), in full.

    With blocks ``1 … K`` = :func:`randomisation_blocks` (head first, stem last), each ``mode`` in ``modes`` is a
    sequence of steps ``0 … K``; step 0 randomises nothing (determinism check, computed once and repeated in every
    mode), and at step ``k ≥ 1``:

    - ``top_down``: blocks ``1 … k`` are random (cascading from the output; ``block`` = block ``k``, the last one
      randomised);
    - ``bottom_up``: blocks ``K − k + 1 … K`` are random (cascading from the stem; ``block`` = block ``K − k + 1``);
    - ``independent``: block ``k`` alone is random (``block`` = block ``k``).

    Block ``j`` is always re-initialised with :func:`reinitialise` from seed ``seed + j`` (the same random weights in
    every mode, so top-down and bottom-up step K are the same fully random model). The randomised models are deep
    copies; ``model`` is untouched. The maps of each randomised copy are compared with the trained model's maps by
    :func:`map_similarity`.

    ``explain_fn(model, images, classes)`` returns signed raw maps (B, H, W) (CAMs are non-negative; gradient methods
    signed). It may return the maps of several methods stacked along the batch, method-major, so that they share
    each randomised model's passes: ``(M·B, H, W)``. With ``methods`` (M names) the table gets a ``method`` column
    and ``image`` is the index within the batch; without, ``image`` is the row of ``explain_fn``'s output.
    ``explain_fn`` sets the model's mode (the study's CAM and captum functions explain in eval mode); a map that
    depends on Dropout shows up as step 0 below 1.

    Returns a long table, one row per (mode, step, image): ``[method,] mode, step, block, image, spearman,
    spearman_abs, ssim`` (step 0's ``block`` is ``none``).
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"modes must be among {MODES}, got {unknown}")
    c = torch.as_tensor(classes, device=images.device)
    original = explain_fn(model, images, c).detach()
    names = [name for name, _ in randomisation_blocks(model)]
    count = len(names)

    def compare(other: nn.Module) -> dict[str, np.ndarray]:
        similarity = map_similarity(original, explain_fn(other, images, c))
        return {key: value.cpu().numpy() for key, value in similarity.items()}

    same = compare(model)  # step 0: the trained model again (is explain_fn deterministic?)
    frames = []
    for mode in modes:
        results = [("none", 0, same)]
        if mode == "independent":
            copy_ = copy.deepcopy(model)
            blocks = randomisation_blocks(copy_)
            for j, (name, block) in enumerate(blocks):
                saved = copy.deepcopy(block.state_dict())
                reinitialise(block, seed + j + 1)
                results.append((name, j + 1, compare(copy_)))
                block.load_state_dict(saved)
        else:
            copy_ = copy.deepcopy(model)
            blocks = randomisation_blocks(copy_)
            done: set[int] = set()
            for step, indices in enumerate(_steps(mode, count), start=1):
                for j in indices:
                    if j not in done:
                        reinitialise(blocks[j][1], seed + j + 1)
                        done.add(j)
                results.append((names[indices[0] if mode == "bottom_up" else indices[-1]], step, compare(copy_)))
        for name, step, values in results:
            frame = pd.DataFrame({"mode": mode, "step": step, "block": name, "image": np.arange(len(original))})
            for key in SIMILARITIES:
                frame[key] = values[key].astype(np.float64)
            frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CURVE_COLUMNS)
    if methods is not None:
        per_method = len(images)
        if len(original) != len(methods) * per_method:
            raise ValueError(f"explain_fn returned {len(original)} maps for {len(methods)} methods × {per_method}")
        table.insert(0, "method", [methods[i // per_method] for i in table["image"]])
        table["image"] = table["image"] % per_method
    return table


def curve_means(curve: pd.DataFrame) -> pd.DataFrame:
    """Per (method, mode, step, block): the mean over images of ``spearman``, ``|spearman|``, ``spearman_abs``,
    ``|spearman_abs|`` and ``ssim`` (columns ``spearman``, ``abs_spearman``, ``spearman_abs``, ``abs_spearman_abs``,
    ``ssim``), in the curve's order: the whole curve, as Adebayo et al. plot it per randomised block."""
    frame = curve.copy()
    if "method" not in frame.columns:
        frame.insert(0, "method", "")
    frame["abs_spearman"] = frame["spearman"].abs()
    frame["abs_spearman_abs"] = frame["spearman_abs"].abs()
    keys = ["method", "mode", "step", "block"]
    values = ["spearman", "abs_spearman", "spearman_abs", "abs_spearman_abs", "ssim"]
    return frame.groupby(keys, sort=False)[values].mean().reset_index()


VERDICT_COLUMNS = ["method", "spearman_after_last_block", "ssim_after_last_block", "min_over_steps", "passes"]


def sanity_verdict(
    curve: pd.DataFrame,
    threshold: float = SANITY_PASS,
    on: Literal["spearman_abs", "spearman"] = "spearman_abs",
) -> pd.DataFrame:
    """Does each method pass the model-parameter randomisation test? One row per method.

    From the ``top_down`` rows of a :func:`randomisation_curve` table (with a ``method`` column; without, one method
    named ``""``), with ``ρ`` the column ``on`` and the mean taken over images:

    - ``spearman_after_last_block`` = mean ``|ρ|`` at top-down step :data:`PASS_STEP` (head and last feature block
      random; the last step if the model has fewer blocks);
    - ``ssim_after_last_block`` = mean SSIM at that step;
    - ``min_over_steps`` = the smallest mean ``|ρ|`` over top-down steps ≥ 1 (the old, too lenient statistic);
    - ``passes`` = ``spearman_after_last_block < threshold``.

    ``|ρ|``: a map that turns into its negative (ρ ≈ −1) still depends on the weights only through a sign, so it does
    not count as decorrelated. ``on`` defaults to ``spearman_abs``, the ranking of ``|map|``, which is what the study
    shows for gradient methods and which Adebayo et al. found the more persistent; for CAMs both columns are equal.
    Why step 2 and not "any step": a map that changes only once the first convolution is randomised (an edge
    detector) would pass the latter (Adebayo et al. 2018). The whole curve: :func:`curve_means`.
    """
    rows = curve[curve["mode"] == "top_down"]
    if rows.empty:
        raise ValueError("sanity_verdict needs the top_down rows of a randomisation curve")
    frame = rows.copy()
    if "method" not in frame.columns:
        frame.insert(0, "method", "")
    frame["abs_rho"] = frame[on].abs()
    out = []
    for method, part in frame.groupby("method", sort=False):
        per_step = part.groupby("step")[["abs_rho", "ssim"]].mean()
        randomised = per_step[per_step.index >= 1]
        if randomised.empty:
            raise ValueError(f"method {method!r}: the curve has no randomised top_down step")
        step = min(PASS_STEP, int(randomised.index.max()))
        after = float(per_step.loc[step, "abs_rho"])
        out.append(
            {
                "method": method,
                "spearman_after_last_block": after,
                "ssim_after_last_block": float(per_step.loc[step, "ssim"]),
                "min_over_steps": float(randomised["abs_rho"].min()),
                "passes": bool(after < threshold),
            }
        )
    return pd.DataFrame(out, columns=VERDICT_COLUMNS)


# --------------------------------------------------------------------------------------------- data randomisation


class DataRandomisation(NamedTuple):
    """Per-image similarities (``image, spearman, spearman_abs, ssim``), the mean ``|ρ|`` and the verdict."""

    per_image: pd.DataFrame
    mean_abs_spearman: float
    passes: bool


def data_randomisation(
    maps_real: torch.Tensor,
    maps_permuted: torch.Tensor,
    threshold: float = SANITY_PASS,
    on: Literal["spearman_abs", "spearman"] = "spearman_abs",
) -> DataRandomisation:
    """Data randomisation test (Adebayo et al. 2018): do the maps depend on the relation of images to labels?

    ``maps_real`` are the signed raw maps (B, H, W) of the trained model, ``maps_permuted`` those of the same
    architecture trained the same way on the same images with the labels randomly permuted, for the same images and
    the same explained classes. Per image: :func:`map_similarity` (``spearman``, ``spearman_abs``, ``ssim``, a
    constant map having ρ = 0). The method passes when ``mean_i |ρ_i| < threshold`` (``ρ`` = column ``on``): the
    maps of a model that could only memorise labels no longer resemble those of the real model.
    """
    similarity = map_similarity(maps_real, maps_permuted)
    per_image = pd.DataFrame({"image": np.arange(len(maps_real))})
    for key in SIMILARITIES:
        per_image[key] = similarity[key].cpu().numpy().astype(np.float64)
    mean_abs = float(per_image[on].abs().mean()) if len(per_image) else float("nan")
    return DataRandomisation(per_image, mean_abs, bool(mean_abs < threshold))
