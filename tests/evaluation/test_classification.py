"""Report metrics: numpy equals torchmetrics/sklearn, float64 thresholds, ECE, intervals, DeLong, the document."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrexplain.evaluation import classification as cls
from cxrexplain.evaluation.document import Document
from cxrexplain.evaluation.metrics import binary_metrics


@pytest.mark.parametrize("levels", [None, 5, 2])  # continuous scores, heavy ties, two values only
def test_point_metrics_equal_torchmetrics_and_sklearn_on_random_inputs(levels):
    """The report's numpy metrics against the references: torchmetrics' functional metrics (what training logs; they
    return float32 ratios, hence 1e-7) and sklearn's average precision (float64, 1e-12)."""
    rng = np.random.default_rng(levels or 0)
    for size in (2, 7, 80, 301):
        labels = rng.integers(0, 2, size)
        labels[:2] = (0, 1)
        probs = rng.random(size) if levels is None else rng.integers(0, levels + 1, size) / levels
        for threshold in (0.0, 0.3, 0.5, 0.71, 1.0):
            ours = cls.point_metrics(labels, probs, threshold)
            reference = binary_metrics(labels, probs, threshold=threshold)
            assert {k: ours[k] for k in reference} == pytest.approx(reference, abs=1e-7), (size, threshold)
            assert ours["auprc"] == pytest.approx(average_precision_score(labels, probs), abs=1e-12)
    one_class = cls.point_metrics(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]), 0.5)
    assert np.isnan(one_class["auroc"]) and np.isnan(one_class["auprc"])
    assert one_class["recall"] == pytest.approx(2 / 3) and one_class["specificity"] == 0.0  # 0 / 0 -> 0


@pytest.mark.parametrize("levels", [None, 5, 2])  # continuous scores, heavy ties, two values only
def test_auroc_and_average_precision_equal_sklearn_on_random_tied_scores(levels):
    rng = np.random.default_rng(levels or 0)
    for size in (2, 3, 10, 57, 400):
        for _ in range(20):
            labels = rng.integers(0, 2, size)
            labels[:2] = (0, 1)  # both classes
            scores = rng.random(size) if levels is None else rng.integers(0, levels, size) / levels
            assert cls.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
            assert cls.average_precision(labels, scores) == pytest.approx(
                average_precision_score(labels, scores), abs=1e-12
            )


def test_auroc_and_average_precision_by_hand():
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.8, 0.1])
    # pairs (positive, negative): (0.9, 0.8) 1, (0.9, 0.1) 1, (0.8, 0.8) 1/2, (0.8, 0.1) 1 -> 3.5 / 4
    assert cls.auroc(labels, scores) == 0.875
    # thresholds 0.9: P 1, R 1/2; 0.8 (two images, one threshold): P 2/3, R 1 -> 1/2·1 + 1/2·2/3
    assert cls.average_precision(labels, scores) == pytest.approx(0.5 + 1 / 3)
    with pytest.raises(ValueError, match="both classes"):
        cls.auroc(np.array([1, 1]), np.array([0.2, 0.3]))
    with pytest.raises(ValueError, match="positive"):
        cls.average_precision(np.array([0, 0]), np.array([0.2, 0.3]))


def test_expected_calibration_error_by_hand():
    # two bins used: [0.1, 0.1] with labels [0, 1] -> |0.5 - 0.1| = 0.4, weight 0.5; [0.9, 0.9] with [1, 1] -> 0.1
    assert cls.expected_calibration_error(np.array([0, 1, 1, 1]), np.array([0.1, 0.1, 0.9, 0.9])) == pytest.approx(
        0.5 * 0.4 + 0.5 * 0.1
    )


def test_bootstrap_intervals_contain_the_estimate_and_repeat_for_a_seed():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    probs = np.clip(labels * 0.4 + rng.random(60) * 0.6, 0, 1)
    a = cls.bootstrap_metrics(labels, probs, 0.5, n=200, seed=3)
    assert a == cls.bootstrap_metrics(labels, probs, 0.5, n=200, seed=3)
    for name in cls.METRICS:
        assert a[name]["low"] <= a[name]["value"] <= a[name]["high"], name
    assert cls.confusion(np.array([0, 0, 1, 1]), np.array([0.2, 0.7, 0.6, 0.4]), 0.5).tolist() == [[1, 1], [1, 1]]


def test_point_estimates_and_bootstrap_threshold_in_float64_alike():
    # regression: in float32, 0.99999997 rounds to 0.99999994, below the threshold 0.99999995, so the point
    # estimate said recall 0 while the bootstrap (float64) said 1
    labels, probs, threshold = np.array([1, 0]), np.array([0.99999997, 0.2]), 0.99999995
    assert float(np.float32(0.99999997)) < threshold < 0.99999997
    for metrics in (cls.point_metrics(labels, probs, threshold), binary_metrics(labels, probs, threshold)):
        assert [metrics[k] for k in ("accuracy", "precision", "recall", "specificity", "f1")] == [1.0] * 5
    boot = cls.bootstrap_metrics(labels, probs, threshold, n=50)
    assert boot["recall"]["value"] == 1.0 and boot["recall"]["high"] == 1.0  # low: resamples without a positive


def test_torchmetrics_takes_float64_probabilities_as_they_are():
    # no sigmoid on probabilities in [0, 1]: sigmoid(0.55) = 0.634 would be called positive at 0.56
    assert binary_metrics(np.array([1, 0]), np.array([0.55, 0.0]), threshold=0.56)["recall"] == 0.0
    assert binary_metrics(np.array([1, 0]), np.array([1.0, 0.0]), threshold=0.99999999)["recall"] == 1.0


def test_clustered_bootstrap_metrics():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    probs = np.clip(labels * 0.4 + rng.random(40) * 0.6, 0, 1)
    plain = cls.bootstrap_metrics(labels, probs, 0.5, n=60, seed=2)
    singletons = cls.bootstrap_metrics(labels, probs, 0.5, n=60, seed=2, clusters=[f"p{i}" for i in range(40)])
    assert singletons == plain  # one image per patient: the same draws
    patients = np.repeat(np.arange(10), 4)
    clustered = cls.bootstrap_metrics(labels, probs, 0.5, n=60, seed=2, clusters=patients)
    assert clustered != plain
    for name in cls.METRICS:
        assert clustered[name]["value"] == plain[name]["value"]
        assert clustered[name]["low"] <= clustered[name]["value"] <= clustered[name]["high"], name
    # two patients, all of patient 1 right and all of patient 2 wrong: a resample holds 0, 1 or 2 copies of each
    labels2, probs2 = np.array([1, 1, 0]), np.array([0.9, 0.8, 0.7])  # patient 1: images 0, 1; patient 2: image 2
    acc = cls.bootstrap_metrics(labels2, probs2, 0.5, n=200, clusters=[1, 1, 2])["accuracy"]
    # accuracy per resample: {1, 1} -> 1, {1, 2} -> 2/3, {2, 2} -> 0 (each tail ≈ 25 % of 200 draws, far above 2.5 %)
    assert acc == {"value": pytest.approx(2 / 3), "low": 0.0, "high": 1.0}
    with pytest.raises(ValueError, match="one id per image"):
        cls.bootstrap_metrics(labels2, probs2, 0.5, clusters=[1, 2])


def _placements(labels, scores):
    """V10 (per positive) and V01 (per negative) by the definition: ψ = 1 if x > y, 1/2 if equal, else 0."""
    x = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    y = [s for s, lab in zip(scores, labels, strict=True) if lab == 0]

    def psi(a, b):
        return 1.0 if a > b else 0.5 if a == b else 0.0

    v10 = [sum(psi(xi, yj) for yj in y) / len(y) for xi in x]
    v01 = [sum(psi(xi, yj) for xi in x) / len(x) for yj in y]
    return np.array(v10), np.array(v01)


def test_bootstrap_difference_by_hand():
    labels = np.array([0, 1, 0, 1, 0, 1])
    constant = (labels, np.full(6, 0.4))  # AUROC 1/2 on any resample with both classes; everything called negative
    perfect = (labels, np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7]))  # AUROC 1 and accuracy 1 on every resample
    d = cls.bootstrap_difference(constant, perfect, 0.5, n=1000, seed=0)
    assert (d["auroc"]["value"], d["auroc"]["low"], d["auroc"]["high"]) == (0.5, 0.5, 0.5)
    # the accuracy difference is 1 - (negatives' share of the constant set's resample) = the positives' share drawn,
    # Binomial(6, 1/2) / 6, whose 2.5 and 97.5 percentiles are 1/6 and 5/6 (P(X <= 0) = 1/64, P(X <= 1) = 7/64)
    assert d["accuracy"]["value"] == 0.5
    assert (d["accuracy"]["low"], d["accuracy"]["high"]) == pytest.approx((1 / 6, 5 / 6), abs=1e-12)
    # clustered: three patients, each with one negative and one positive image: every resample has half positives
    clustered = cls.bootstrap_difference(constant, perfect, 0.5, n=500, seed=0, clusters_a=[1, 1, 2, 2, 3, 3])
    assert (clustered["accuracy"]["low"], clustered["accuracy"]["high"]) == (0.5, 0.5)
    # one image per cluster is the unclustered bootstrap, draw for draw
    same = cls.bootstrap_difference(
        constant, perfect, 0.5, n=500, seed=3, clusters_a=list("abcdef"), clusters_b=range(6)
    )
    assert same == cls.bootstrap_difference(constant, perfect, 0.5, n=500, seed=3)
    with pytest.raises(ValueError, match="one id per image"):
        cls.bootstrap_difference(constant, perfect, 0.5, n=5, clusters_b=[1, 2])


def _normal_scores(rng: np.random.Generator, n: int, separation: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images, half positive; scores N(separation, 1) for positives, N(0, 1) for negatives, squashed to 0..1:
    AUROC Φ(separation / √2)."""
    labels = np.repeat([0, 1], n // 2)
    return labels, 1 / (1 + np.exp(-(rng.standard_normal(n) + separation * labels)))


def test_bootstrap_difference_equals_numpy_sklearn_and_scipys_two_sample_bootstrap():
    import scipy.stats

    rng = np.random.default_rng(7)
    a, b = _normal_scores(rng, 60, 0.8), _normal_scores(rng, 90, 1.6)
    ours = cls.bootstrap_difference(a, b, 0.5, n=400, seed=0)["auroc"]
    assert ours["value"] == pytest.approx(roc_auc_score(*b) - roc_auc_score(*a), abs=1e-12)
    # the same draws (all of set b's resamples, then set a's: cluster_bootstrap_difference's order) with sklearn's
    # AUROC and numpy's percentiles
    draws = np.random.default_rng(0)
    jb, ia = draws.integers(0, 90, (400, 90)), draws.integers(0, 60, (400, 60))
    differences = [
        roc_auc_score(b[0][j], b[1][j]) - roc_auc_score(a[0][i], a[1][i]) for i, j in zip(ia, jb, strict=True)
    ]
    assert (ours["low"], ours["high"]) == pytest.approx(tuple(np.percentile(differences, [2.5, 97.5])), abs=1e-12)

    # scipy's two-sample percentile bootstrap (its own draws; AUROC as the Mann-Whitney U over m·n): the same
    # interval up to Monte-Carlo error (measured: -0.083 to 0.175 vs -0.077 to 0.167)
    def auc(labels, scores):
        return scipy.stats.mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic / (
            (labels == 1).sum() * (labels == 0).sum()
        )

    reference = scipy.stats.bootstrap(
        (np.arange(60), np.arange(90)),
        lambda i, j: auc(b[0][j], b[1][j]) - auc(a[0][i], a[1][i]),
        paired=False,
        vectorized=False,
        n_resamples=400,
        method="percentile",
        rng=np.random.default_rng(1),
    )
    low, high = reference.confidence_interval
    assert ours["low"] == pytest.approx(low, abs=0.04) and ours["high"] == pytest.approx(high, abs=0.04)


def test_bootstrap_difference_interval_covers_the_true_difference():
    import scipy.stats

    true = scipy.stats.norm.cdf(1.5 / np.sqrt(2)) - scipy.stats.norm.cdf(0.5 / np.sqrt(2))  # 0.2174
    rng = np.random.default_rng(0)
    covered = 0
    for k in range(20):
        d = cls.bootstrap_difference(_normal_scores(rng, 80, 0.5), _normal_scores(rng, 80, 1.5), 0.5, n=150, seed=k)
        covered += d["auroc"]["low"] <= true <= d["auroc"]["high"]
    # a 95 % interval; measured: 17 of these 20 (and 140 of 150 simulations, 93 %, with n=200, outside the suite)
    assert covered >= 16


def test_delong_covariance_equals_the_direct_placements_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(np.vstack([labels * 0.3 + rng.random(60), labels * 0.1 + rng.random(60)]), 1)  # many ties
    aucs, covariance = cls.delong_covariance(labels, scores)
    v10 = np.array([_placements(labels, s)[0] for s in scores])
    v01 = np.array([_placements(labels, s)[1] for s in scores])
    m, n = v10.shape[1], v01.shape[1]
    direct = np.zeros((2, 2))
    for r in range(2):
        for s in range(2):
            s10 = np.sum((v10[r] - v10[r].mean()) * (v10[s] - v10[s].mean())) / (m - 1)
            s01 = np.sum((v01[r] - v01[r].mean()) * (v01[s] - v01[s].mean())) / (n - 1)
            direct[r, s] = s10 / m + s01 / n
    assert covariance == pytest.approx(direct, abs=1e-15)
    assert aucs == pytest.approx([roc_auc_score(labels, s) for s in scores], abs=1e-15)
    result = cls.delong(labels, scores[0], scores[1])
    assert result["auc_a"] == pytest.approx(roc_auc_score(labels, scores[0]), abs=1e-15)
    assert result["se"] == pytest.approx(np.sqrt(direct[0, 0] + direct[1, 1] - 2 * direct[0, 1]), rel=1e-12)


def test_delong_by_hand():
    # a: positives 0.9, 0.4; negatives 0.4, 0.1 -> V10 = (1, 3/4), V01 = (3/4, 1), AUC 7/8
    # b: positives 0.8, 0.3; negatives 0.5, 0.2 -> V10 = (1, 1/2), V01 = (1/2, 1), AUC 3/4
    # S10 = [[1/32, 1/16], [1/16, 1/8]] = S01; S = S10/2 + S01/2 = S10; var(diff) = 1/32 + 1/8 - 2/16 = 1/32
    # z = (1/8) / sqrt(1/32) = 1/sqrt(2), p = 2 Φ(-1/sqrt(2)) = 0.4795001221869535
    result = cls.delong([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1], [0.8, 0.3, 0.5, 0.2])
    assert result["auc_a"] == 0.875 and result["auc_b"] == 0.75 and result["difference"] == 0.125
    assert result["se"] == pytest.approx(np.sqrt(1 / 32), rel=1e-14)
    assert result["z"] == pytest.approx(1 / np.sqrt(2), rel=1e-14)
    assert result["p"] == pytest.approx(0.4795001221869535, rel=1e-12)
    assert result["low"] == pytest.approx(0.125 - 1.959963984540054 * np.sqrt(1 / 32), rel=1e-12)
    assert result["high"] == pytest.approx(0.125 + 1.959963984540054 * np.sqrt(1 / 32), rel=1e-12)


def test_delong_of_identical_scores_and_of_one_class():
    labels, scores = np.array([1, 0, 1, 0, 1]), np.array([0.8, 0.3, 0.6, 0.6, 0.2])
    result = cls.delong(labels, scores, scores.copy())
    assert (result["difference"], result["se"], result["z"], result["p"]) == (0.0, 0.0, 0.0, 1.0)
    assert (result["low"], result["high"]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="two positive and two negative"):
        cls.delong(np.ones(5), scores, scores)
    with pytest.raises(ValueError, match="0/1"):
        cls.delong(np.array([2, 0, 1, 0, 1]), scores, scores)


def test_document_renders_the_same_blocks_as_markdown_and_self_contained_html(tmp_path):
    png = tmp_path / "figures" / "a.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\n fake")
    doc = Document("Title")
    doc.banner("SYNTHETIC DATA")
    doc.paragraph("a **bold** `code` <tag>")
    doc.table(["x", "y"], [[1, "2"]])
    doc.figure(png, "a figure")
    md = doc.markdown(tmp_path)
    assert "> **SYNTHETIC DATA**" in md and "| x | y |" in md and "![a figure](figures/a.png)" in md
    page = doc.html()
    assert "<b>bold</b>" in page and "<code>code</code>" in page and "&lt;tag&gt;" in page
    assert "data:image/png;base64," in page and "figures/a.png" not in page  # embedded, not linked


def test_the_synthetic_note_sits_below_the_axis_labels():
    import matplotlib.pyplot as plt

    from cxrexplain.evaluation.figures import add_note

    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("false positive rate (1 - specificity)")
    note = add_note(fig, "synthetic data: not medical evidence")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    label_bottom = ax.xaxis.label.get_window_extent(renderer).y0
    assert note.get_window_extent(renderer).y1 < label_bottom  # no overlap with the x label
    plt.close(fig)
