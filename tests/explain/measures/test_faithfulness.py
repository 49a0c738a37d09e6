"""Faithfulness measures: exact values on hand-made maps and toy models, pytorch-grad-cam as the oracle."""

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, ROADLeastRelevantFirst, ROADMostRelevantFirst
from torch import nn

from cxrexplain.explain.attributions import BLACK
from cxrexplain.explain.measures.faithfulness import (
    _probabilities,
    average_drop,
    confidence_change,
    deletion_insertion,
    gaussian_blur,
    increase_in_confidence,
    noisy_linear_imputation,
    reference_images,
    road,
)
from cxrexplain.explain.measures.ordering import tie_broken_order

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # pytorch-grad-cam's NoisyLinearImputer calls numpy functions on tensors (NumPy 2 deprecates their __array_wrap__).
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]


class MeanProbability(nn.Module):
    """``logit = log(m / (1 - m))`` with ``m`` the mean of ``rows``: the class-1 probability *is* that mean."""

    def __init__(self, rows: slice = slice(None)) -> None:
        super().__init__()
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, :, self.rows].mean(dim=(1, 2, 3)).clamp(1e-12, 1 - 1e-12)
        return torch.log(m / (1 - m))


def tiny_model() -> nn.Module:
    """A small random CNN with one logit, in train mode (Dropout, BatchNorm) to check that measures use eval mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, 1),
    ).train()


def probability_targets(classes: list[int]) -> list:
    """pytorch-grad-cam targets giving our explained probability ``sigmoid(±logit)`` of each image's class."""
    return [lambda output, s=1.0 if c == 1 else -1.0: torch.sigmoid(s * output).squeeze() for c in classes]


# ------------------------------------------------------------------------------------------------------ references


def test_reference_images():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    assert torch.equal(reference_images(x, "mean"), torch.full_like(x, 4.0))
    assert torch.equal(reference_images(x, "black"), torch.full_like(x, BLACK))
    assert torch.equal(reference_images(x, -1.5), torch.full_like(x, -1.5))
    flat = torch.full((1, 1, 8, 8), 2.0)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)
    assert torch.allclose(reference_images(flat, "blur"), flat)
    spike = torch.zeros(1, 1, 9, 9)
    spike[..., 4, 4] = 1.0
    blurred = gaussian_blur(spike, 1.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5) and blurred[..., 4, 4].item() < 0.2
    assert torch.equal(gaussian_blur(spike, 0.0), spike)
    with pytest.raises(ValueError, match="baseline"):
        reference_images(x, "noise")


def test_probabilities_are_the_explained_class_sigmoid_batch_by_batch():
    images = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    sign = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    probs = _probabilities(MeanProbability(), images, sign, batch_size=2)
    assert probs.tolist() == pytest.approx([0.25, 0.5, 0.25])
    assert _probabilities(MeanProbability(), images[:0], sign[:0], batch_size=2).shape == (0,)


# ------------------------------------------------------------------------------------------- deletion / insertion


def test_deletion_and_insertion_aucs_by_hand():
    image = torch.tensor([[0.4, 0.3], [0.2, 0.1]], dtype=torch.float64)
    images = torch.stack([image, image])[:, None]
    maps = torch.stack([image, image])  # no ties: delete 0.4, then 0.3, 0.2, 0.1 in every order
    result = deletion_insertion(MeanProbability(), images, maps, [1, 0], steps=4, baseline=0.0)
    # Class 1: p = image mean. Deletion 0.25, 0.15, 0.075, 0.025, 0 → 0.25 · (0.125 + 0.25 + 0) = 0.09375;
    # insertion 0, 0.1, 0.175, 0.225, 0.25 → 0.25 · (0 + 0.5 + 0.125) = 0.15625. Class 0: p = 1 - mean.
    assert result.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.deletion_curve[0].tolist() == pytest.approx([0.25, 0.15, 0.075, 0.025, 0.0])
    assert result.deletion.tolist() == pytest.approx([0.09375, 0.90625])
    assert result.insertion.tolist() == pytest.approx([0.15625, 0.84375])
    one_at_a_time = deletion_insertion(
        MeanProbability(), images, maps, [1, 0], steps=4, baseline=0.0, batch_size=1, orders=1
    )
    assert torch.equal(one_at_a_time.deletion_curve, result.deletion_curve)
    assert torch.equal(one_at_a_time.insertion_curve, result.insertion_curve)


def test_deletion_steps_round_the_pixel_counts_and_the_mean_baseline_is_flat():
    image = torch.tensor([[0.4, 0.3], [0.2, 0.1]], dtype=torch.float64)[None, None]
    result = deletion_insertion(MeanProbability(), image, image[:, 0], [1], steps=3)
    assert result.fractions.tolist() == [0.0, 0.25, 0.75, 1.0]  # round(4k / 3) = 0, 1, 3, 4 pixels
    # With the image's own mean as the reference, deleting everything gives the same mean: the curve ends at 0.25.
    assert result.deletion_curve[0, -1].item() == pytest.approx(0.25)
    assert result.insertion_curve[0, 0].item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="steps"):
        deletion_insertion(MeanProbability(), image, image[:, 0], [1], steps=0)


# The regression case. An all-ones 8×8 image, reference 0; the model reads the top four rows (p = their mean).
# The map has 10 distinct values in rows 4-5, which the model does not read, and 54 zeros (84 %), 32 of them in
# the rows it reads. Flipping image, map and model upside down is the same problem, so a measure of the map must
# not tell them apart.
TIE_IMAGE = torch.ones(1, 1, 8, 8, dtype=torch.float64)
TIE_MAP = torch.zeros(1, 8, 8, dtype=torch.float64)
TIE_MAP[0, 4] = torch.linspace(1.0, 0.3, 8, dtype=torch.float64)
TIE_MAP[0, 5, :2] = torch.tensor([0.2, 0.1], dtype=torch.float64)


def expected_tie_aucs(steps: int = 20) -> tuple[float, float]:
    """Deletion and insertion AUCs of the regression case, in expectation over uniformly random tie orders.

    After the 10 ranked pixels, ``t_k = clamp(n_k − 10, 0, 54)`` zeros are removed, of which ``32 t_k / 54`` are
    read in expectation; p is linear in the removed pixels, so ``E[p_k] = 1 − t_k / 54`` (deletion), ``t_k / 54``
    (insertion): AUCs 0.578125 and 0.421875.
    """
    counts = (torch.arange(steps + 1) * 64 + steps // 2) // steps
    share = (counts - 10).clamp(0, 54).double() / 54
    fractions = counts.double() / 64
    return torch.trapezoid(1 - share, fractions).item(), torch.trapezoid(share, fractions).item()


def test_deletion_insertion_do_not_depend_on_the_order_of_tied_pixels():
    top, bottom = MeanProbability(slice(0, 4)), MeanProbability(slice(4, 8))
    flipped_image, flipped_map = TIE_IMAGE.flip(-2), TIE_MAP.flip(-2)
    # The old stable sort is one tie order: row-major. Reproduce it by breaking the ties with tiny offsets that
    # decrease in row-major order (the 10 ranked values stay in their order).
    row_major = 1e-6 * torch.arange(63, -1, -1, dtype=torch.float64).view(1, 8, 8)
    old = deletion_insertion(top, TIE_IMAGE, TIE_MAP + row_major, [1], baseline=0.0, orders=1)
    old_flipped = deletion_insertion(bottom, flipped_image, flipped_map + row_major, [1], baseline=0.0, orders=1)
    # Row-major deletes the read rows' zeros first (low deletion AUC) or, flipped, last (high).
    assert old.deletion.item() == pytest.approx(0.40625) and old_flipped.deletion.item() == pytest.approx(0.75)
    assert old.insertion.item() == pytest.approx(0.59375) and old_flipped.insertion.item() == pytest.approx(0.25)
    # Averaged over random tie orders, both equal the expectation. One order's deletion AUC has a standard deviation
    # of 0.027 here (measured over 300 seeds), so 256 orders estimate it within ±0.0017 (one standard error): the
    # tolerance 0.01 is about 6 standard errors, and 30 times smaller than the 0.34 the tie order moved it by.
    deletion, insertion = expected_tie_aucs()
    for model, image, tie_map in [(top, TIE_IMAGE, TIE_MAP), (bottom, flipped_image, flipped_map)]:
        new = deletion_insertion(model, image, tie_map, [1], baseline=0.0, orders=256, batch_size=512)
        assert new.deletion.item() == pytest.approx(deletion, abs=0.01)
        assert new.insertion.item() == pytest.approx(insertion, abs=0.01)


def test_deletion_insertion_average_the_tie_orders_exactly():
    """The mean over ``tie_broken_order``'s orders, each computed by hand; steps outside a tie are shared."""
    torch.manual_seed(3)
    images = torch.rand(2, 1, 4, 5, dtype=torch.float64)
    maps = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 0.25], dtype=torch.float64)[torch.randint(0, 7, (2, 4, 5))]
    classes, steps, orders = [1, 0], 7, 3
    result = deletion_insertion(MeanProbability(), images, maps, classes, steps=steps, baseline="mean", orders=orders)
    counts = (torch.arange(steps + 1) * 20 + steps // 2) // steps
    ref = images.mean(dim=(1, 2, 3), keepdim=True).expand_as(images)
    expected_deletion = torch.zeros(2, steps + 1, dtype=torch.float64)
    expected_insertion = torch.zeros(2, steps + 1, dtype=torch.float64)
    for order in tie_broken_order(maps, orders, seed=0):
        for b in range(2):
            for k, n in enumerate(counts):
                removed = torch.zeros(20, dtype=torch.bool)
                removed[order[b, :n]] = True
                removed = removed.view(1, 4, 5)
                for curve, x in [(expected_deletion, torch.where(removed, ref[b], images[b])),
                                 (expected_insertion, torch.where(removed, images[b], ref[b]))]:  # fmt: skip
                    m = x.mean().item()
                    curve[b, k] += (m if classes[b] == 1 else 1 - m) / orders
    assert torch.allclose(result.deletion_curve, expected_deletion)
    assert torch.allclose(result.insertion_curve, expected_insertion)
    # Without ties every order is the same: more orders change nothing.
    distinct = torch.rand(2, 4, 5, dtype=torch.float64)
    one = deletion_insertion(MeanProbability(), images, distinct, classes, steps=steps, orders=1)
    many = deletion_insertion(MeanProbability(), images, distinct, classes, steps=steps, orders=5, seed=9)
    assert torch.equal(one.deletion_curve, many.deletion_curve)
    assert torch.equal(one.insertion_curve, many.insertion_curve)


def test_deletion_insertion_evaluate_in_eval_mode_and_restore_it():
    model = tiny_model()
    torch.manual_seed(1)
    images, maps = torch.randn(2, 1, 6, 6), torch.rand(2, 6, 6)
    first = deletion_insertion(model, images, maps, [1, 0], steps=5)
    second = deletion_insertion(model, images, maps, [1, 0], steps=5, batch_size=3)
    assert torch.allclose(first.deletion_curve, second.deletion_curve, atol=1e-6)  # Dropout would differ
    assert model.training and all(m.training for m in model.modules())


# ---------------------------------------------------------------------------------------------- confidence change


def test_confidence_change_when_the_map_halves_the_image():
    image = torch.tensor([[0.4, 0.3], [0.2, 0.1]], dtype=torch.float64)
    images = torch.stack([image, image])[:, None]
    maps = torch.full((2, 2, 2), 0.5, dtype=torch.float64)
    result = confidence_change(MeanProbability(), images, maps, [1, 0], reference=0.0)
    assert result.original.tolist() == pytest.approx([0.25, 0.75])
    assert result.masked.tolist() == pytest.approx([0.125, 0.875])
    assert result.change.tolist() == pytest.approx([-0.125, 0.125])
    assert result.drop.tolist() == pytest.approx([0.5, 0.0])
    assert result.increase.tolist() == [False, True]
    # Average Drop % = 100 · (0.5 + 0) / 2; Increase in Confidence % = 100 · 1 / 2.
    assert average_drop(result) == pytest.approx(25.0)
    assert increase_in_confidence(result) == pytest.approx(50.0)
    empty = confidence_change(MeanProbability(), images[:0], maps[:0], [], reference=0.0)
    assert np.isnan(average_drop(empty)) and np.isnan(increase_in_confidence(empty))


def test_confidence_change_matches_pytorch_grad_cam():
    """pytorch-grad-cam multiplies the normalised tensor by the map (reference 0 here); its drop is absolute."""
    model = tiny_model()
    torch.manual_seed(2)
    images, maps, classes = torch.randn(6, 1, 8, 8), torch.rand(6, 8, 8), [1, 0, 1, 0, 0, 1]
    ours = confidence_change(model, images, maps, classes, reference=0.0, batch_size=4)
    model.eval()
    args = (images, maps.numpy(), probability_targets(classes), model)
    change = CamMultImageConfidenceChange()(*args)
    assert np.allclose(ours.change.numpy(), change, atol=1e-6)
    assert np.allclose((ours.drop * ours.original).numpy(), DropInConfidence()(*args), atol=1e-6)
    assert np.array_equal(ours.increase.numpy(), IncreaseInConfidence()(*args) > 0)
    assert 0 < ours.increase.sum() < len(classes)  # both outcomes occur, so the comparison means something
    # With our default reference (black) the masked image differs from theirs.
    black = confidence_change(model, images, maps, classes, batch_size=4)
    assert not np.allclose(black.change.numpy(), change, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------- ROAD


def test_noisy_linear_imputation_equals_pytorch_grad_cam():
    torch.manual_seed(4)
    images = torch.randn(4, 1, 9, 7)
    removed = torch.rand(4, 9, 7) < torch.tensor([0.1, 0.5, 0.9, 0.0]).view(4, 1, 1)
    removed[0, 0, 0] = removed[0, 8, 6] = True  # corners: neighbours outside the image drop out
    ours = noisy_linear_imputation(images, removed, noise=0.0)
    for i in range(4):  # their mask: 1 = kept, 0 = imputed
        theirs = NoisyLinearImputer(noise=0.0)(images[i], (~removed[i]).float())
        assert torch.allclose(ours[i], theirs, atol=1e-5)
    assert torch.equal(ours[~removed[:, None]], images[~removed[:, None]])  # kept pixels untouched
    # Noise: the same numbers as theirs after torch.manual_seed with the generator's seed.
    noisy = noisy_linear_imputation(images[1:2], removed[1:2], noise=0.3, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    theirs = NoisyLinearImputer(noise=0.3)(images[1], (~removed[1]).float())
    assert torch.allclose(noisy[0], theirs, atol=1e-5)
    assert not torch.allclose(noisy, ours[1:2], atol=1e-2)
    with pytest.raises(ValueError, match="every pixel"):
        noisy_linear_imputation(images[:1], torch.ones(1, 9, 7, dtype=torch.bool))


def test_noisy_linear_imputation_by_hand():
    """A removed pixel between known ones is their weighted mean; a constant image stays constant."""
    image = torch.arange(9.0, dtype=torch.float64).view(1, 1, 3, 3)
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = True  # centre: (0 + 2 + 6 + 8) / 12 + (1 + 3 + 5 + 7) / 6 = 4
    assert noisy_linear_imputation(image, removed, noise=0.0)[0, 0, 1, 1].item() == pytest.approx(4.0)
    removed[0, 0, 0] = True  # corner: neighbours 1, 3 (1/6 each), 4 (1/12, itself unknown) over weight 5/12
    out = noisy_linear_imputation(image, removed, noise=0.0)[0, 0]
    corner, centre = out[0, 0].item(), out[1, 1].item()
    assert corner == pytest.approx((1 / 6 + 3 / 6 + centre / 12) / (5 / 12))
    assert centre == pytest.approx((corner + 2 + 6 + 8) / 12 + (1 + 3 + 5 + 7) / 6)
    flat = torch.full((1, 1, 6, 6), -0.7, dtype=torch.float64)
    assert torch.allclose(noisy_linear_imputation(flat, torch.rand(1, 6, 6) < 0.7, noise=0.0), flat)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_curves_match_pytorch_grad_cam(order):
    """On 10×10 maps without ties their ``p``-th percentile threshold removes exactly ``100 − p`` of the 100 pixels,
    the ``q = 100 − p`` % removed here."""
    model = tiny_model()
    torch.manual_seed(5)
    images, maps, classes = torch.randn(3, 1, 10, 10), torch.rand(3, 10, 10), [1, 0, 1]
    ours = road(model, images, maps, classes, order=order, noise=0.0, orders=2, batch_size=4)
    assert ours.fractions.tolist() == pytest.approx([q / 100 for q in range(10, 100, 10)])
    model.eval()
    metric = ROADMostRelevantFirst if order == "morf" else ROADLeastRelevantFirst
    theirs = []
    for q in range(10, 100, 10):
        step = metric(percentile=100 - q)
        step.perturbation.imputer.noise = 0.0
        theirs.append(step(images, maps.numpy(), probability_targets(classes), model, return_diff=False))
    assert np.allclose(ours.curve.numpy(), np.stack(theirs, axis=1), atol=1e-5)
    assert torch.allclose(ours.score, ours.curve.mean(dim=1))
    assert torch.allclose(ours.original, torch.sigmoid(model(images).squeeze(1) * torch.tensor([1.0, -1.0, 1.0])))


def test_road_averages_the_tie_orders_and_is_seeded():
    torch.manual_seed(6)
    images = torch.rand(2, 1, 5, 5, dtype=torch.float64)
    maps = torch.tensor([0.0, 0.0, 1.0, 0.5], dtype=torch.float64)[torch.randint(0, 4, (2, 5, 5))]
    percentiles, orders = (20, 48, 80), 3
    result = road(MeanProbability(), images, maps, [1, 0], percentiles, order="lerf", noise=0.0, orders=orders)
    expected = torch.zeros(2, 3, dtype=torch.float64)
    for tie_order in tie_broken_order(-maps, orders, seed=0):  # lerf: least relevant first
        for j, n in enumerate([5, 12, 20]):
            removed = torch.zeros(2, 25, dtype=torch.bool).scatter_(1, tie_order[:, :n], True).view(2, 5, 5)
            m = noisy_linear_imputation(images, removed, noise=0.0).mean(dim=(1, 2, 3))
            expected[:, j] += torch.stack([m[0], 1 - m[1]]) / orders
    assert torch.allclose(result.curve, expected)
    noisy = road(MeanProbability(), images, maps, [1, 0], percentiles, noise=0.05, seed=1)
    again = road(MeanProbability(), images, maps, [1, 0], percentiles, noise=0.05, seed=1)
    other = road(MeanProbability(), images, maps, [1, 0], percentiles, noise=0.05, seed=2)
    assert torch.equal(noisy.curve, again.curve) and not torch.equal(noisy.curve, other.curve)
    with pytest.raises(ValueError, match="order"):
        road(MeanProbability(), images, maps, [1, 0], order="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="percentiles"):
        road(MeanProbability(), images, maps, [1, 0], percentiles=(100,))
