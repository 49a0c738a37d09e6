"""Tie-broken pixel orderings: exact on maps without ties, uniform over tied pixels, seeded."""

import pytest
import torch

from cxrexplain.explain.measures.ordering import tie_broken_order, tied_share

pytestmark = pytest.mark.usefixtures("one_thread")


def test_without_ties_every_order_is_the_descending_sort():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.3]], [[4.0, 3.0], [2.0, 1.0]]])
    order = tie_broken_order(maps, orders=3, seed=7)
    assert order.shape == (3, 2, 4)
    expected = torch.tensor([[1, 2, 3, 0], [0, 1, 2, 3]])
    assert torch.equal(order, expected.expand(3, 2, 4))


def test_ties_are_ordered_at_random_after_the_larger_values():
    maps = torch.zeros(1, 4, 4)
    maps[0, 3, 3] = 1.0  # one peak, 15 tied zeros
    order = tie_broken_order(maps, orders=200, seed=0)
    assert (order[:, 0, 0] == 15).all()  # the peak always comes first
    assert all(sorted(o.tolist()) == list(range(16)) for o in order[:, 0])  # each order is a permutation
    # the position right after the peak is uniform over the 15 zeros (a stable sort would always give pixel 0)
    second = torch.bincount(order[:, 0, 1], minlength=16)[:15].float()
    assert second.min() > 0 and second.max() < 40  # 200 draws over 15 pixels: ~13 each


def test_orders_are_deterministic_per_seed_and_differ_between_seeds():
    maps = torch.zeros(2, 3, 3)
    a, b, c = (tie_broken_order(maps, 2, s) for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="orders"):
        tie_broken_order(maps, 0)


def test_tied_share_counts_pixels_equal_to_another():
    maps = torch.tensor(
        [
            [[0.0, 0.0], [0.0, 1.0]],  # three zeros tied
            [[0.1, 0.2], [0.3, 0.4]],  # no tie
            [[0.5, 0.5], [0.5, 0.5]],  # constant
            [[0.0, 0.7], [0.7, 0.2]],  # one pair
        ]
    )
    assert torch.equal(tied_share(maps), torch.tensor([0.75, 0.0, 1.0, 0.5]))
