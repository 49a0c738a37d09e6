"""Pixel orderings with ties broken at random, and the share of tied pixels.

Maps made by a ReLU (every CAM) or min-max normalised to [0, 1] hold many equal values: the zeros of a ReLU map, the
plateau of an upsampled cell. A stable sort puts equal values in row-major order, so "the top 20 % of the map" or "the
first pixels deleted" would be chosen by their position in memory, not by the map. Every measure that ranks pixels
goes through :func:`tie_broken_order` instead: equal values are ordered by a random permutation drawn from a seeded
generator, one permutation per order and image, and the measure is averaged over ``orders`` such orders. With no
ties every order is the same and the result is exact.
"""

from __future__ import annotations

import torch

TIE_ORDERS = 4
"""Default number of random tie orders a ranking measure is averaged over."""


def tie_broken_order(maps: torch.Tensor, orders: int = TIE_ORDERS, seed: int = 0) -> torch.Tensor:
    """Pixel indices by decreasing map value, ties in random order: LongTensor of shape (orders, B, N).

    ``maps`` is (B, H, W) (or (B, N)); ``N = H·W`` and indices are row-major. Order ``o`` of image ``b`` sorts the
    pixels by value (descending) and, among equal values, by a random permutation drawn from
    ``torch.Generator().manual_seed(seed)`` (on the CPU, so the same seed gives the same orders on any device).
    Deterministic for a seed; without ties every order equals the stable descending sort.
    """
    if orders < 1:
        raise ValueError(f"orders must be >= 1, got {orders}")
    flat = maps.reshape(maps.shape[0], -1)
    batch, n = flat.shape
    generator = torch.Generator().manual_seed(seed)
    keys = torch.rand(orders, batch, n, generator=generator).to(flat.device)
    shuffle = keys.argsort(dim=-1)  # a random permutation per (order, image)
    shuffled = flat.unsqueeze(0).expand(orders, batch, n).gather(-1, shuffle)
    by_value = shuffled.argsort(dim=-1, descending=True, stable=True)  # stable: ties keep the random order
    return shuffle.gather(-1, by_value)


def tied_share(maps: torch.Tensor) -> torch.Tensor:
    """Share of each map's pixels whose value is equal to that of at least one other pixel: float of shape (B,).

    ``t = #{p : ∃ q ≠ p, m_p = m_q} / N``. 0 for a map of distinct values, 1 for a constant map; a ReLU map with
    84 % zeros has ``t ≥ 0.84``. Reported beside every ranking measure, so a reader sees how much of its ordering
    was decided by the random tie-breaking.
    """
    flat = maps.reshape(maps.shape[0], -1)
    if flat.shape[1] < 2:
        return torch.zeros(flat.shape[0], dtype=torch.float32, device=flat.device)
    values, _ = flat.sort(dim=1)
    equal_next = values[:, 1:] == values[:, :-1]
    tied = torch.zeros_like(values, dtype=torch.bool)
    tied[:, 1:] |= equal_next
    tied[:, :-1] |= equal_next
    return tied.float().mean(dim=1)
