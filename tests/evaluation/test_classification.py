"""Report metrics: the bootstrap's fast path equals torchmetrics/sklearn, ECE by hand, intervals, the document."""

import numpy as np
import pytest

from cxrexplain.evaluation import classification as cls
from cxrexplain.evaluation.document import Document


def test_fast_metrics_equal_the_torchmetrics_point_estimates():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    probs = np.clip(labels * 0.3 + rng.random(80) * 0.7, 0, 1)
    for threshold in (0.3, 0.5, 0.71):
        slow = cls.point_metrics(labels, probs, threshold)
        fast = cls._fast_metrics(labels, probs.astype(float), threshold)
        assert fast == pytest.approx(slow, abs=1e-6)


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
