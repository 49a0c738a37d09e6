"""Complexity: how concentrated is a map? A map that spreads over the whole image explains less than a compact one.

Maps are tensors of shape (B, H, W) (a single (H, W) map gives 0-d results); both measures use ``|map|`` (the
project's maps are non-negative, so this is the map itself) and are computed in float64, returned in the maps'
floating dtype (float32 for integer maps), per image, on the maps' device.

An all-zero map (a min-max normalised constant map) has no distribution of mass; both measures give it the value of
their limit for ``map + ε``, ``ε → 0``: the uniform map, i.e. the least concentrated (Gini 0, entropy ``log(H·W)``).
This is what Quantus' eps (1e-7 added to every pixel in ``Sparseness``) gives for Gini; Quantus' ``Complexity``
divides 0 by 0 and returns NaN. Neither measure is ever NaN for finite maps.
"""

from __future__ import annotations

import math

import torch


def _flat_abs(maps: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if maps.dim() not in (2, 3):
        raise ValueError(f"maps must have shape (B, H, W) or (H, W), got {tuple(maps.shape)}")
    single = maps.dim() == 2
    flat = (maps.unsqueeze(0) if single else maps).flatten(1).to(torch.float64).abs()
    if flat.shape[1] == 0:
        raise ValueError("maps must have at least one pixel")
    return flat, single


def _result(values: torch.Tensor, maps: torch.Tensor, single: bool) -> torch.Tensor:
    values = values.to(maps.dtype if maps.is_floating_point() else torch.float32)
    return values.squeeze(0) if single else values


def sparseness(maps: torch.Tensor) -> torch.Tensor:
    """Gini index of ``|map|`` (Chalasani et al. 2020, "Concise explanations of neural networks using adversarial
    training"), per image: float of shape (B,).

    With ``v_(1) ≤ … ≤ v_(N)`` the sorted ``|map|`` values: ``G = Σ_i (2i − N − 1) v_(i) / (N Σ_i v_i)``. 0 for a
    uniform map, ``(N − 1)/N`` for a map with a single non-zero pixel; higher is sparser. An all-zero map: 0 (see
    the module docstring). Quantus 0.6 ``Sparseness`` (``abs=True, normalise=False``) computes the same formula after
    adding 1e-7 to every value, which lowers G by a relative ``≈ 1e-7 / mean|map|``; the project computes it exactly.
    """
    flat, single = _flat_abs(maps)
    n = flat.shape[1]
    values, _ = flat.sort(dim=1)
    weights = 2 * torch.arange(1, n + 1, dtype=torch.float64, device=flat.device) - n - 1
    total = values.sum(dim=1)
    gini = (weights * values).sum(dim=1) / (n * torch.where(total > 0, total, torch.ones_like(total)))
    return _result(torch.where(total > 0, gini, torch.zeros_like(gini)), maps, single)


def complexity(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of the normalised ``|map|`` (Bhatt et al. 2020, "Evaluating and aggregating feature-based
    model explanations"), per image: float of shape (B,).

    ``p_i = |m_i| / Σ_j |m_j|``, ``C = −Σ_i p_i log p_i`` (natural log, ``0 · log 0 = 0``). 0 for a single non-zero
    pixel, ``log N`` (``N = H·W``) for a uniform map; lower is more concentrated. An all-zero map: ``log N`` (see the
    module docstring). Quantus 0.6 ``Complexity`` (``abs=True, normalise=False``) computes
    ``−Σ p_i log(p_i + 1e-12)``, which differs by less than ``1e-12 · N`` (and is NaN for a zero map).
    """
    flat, single = _flat_abs(maps)
    total = flat.sum(dim=1, keepdim=True)
    p = flat / torch.where(total > 0, total, torch.ones_like(total))
    terms = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    entropy = -terms.sum(dim=1)
    uniform = torch.full_like(entropy, math.log(flat.shape[1]))
    return _result(torch.where(total[:, 0] > 0, entropy, uniform), maps, single)
