"""Tests for the synthetic radiograph renderer (cxrexplain.data.render)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from cxrexplain.data import render
from cxrexplain.data.render import (
    LUNG_BOTTOM,
    LUNG_TOP,
    MIN_SIZE,
    RENDERED_FINDINGS,
    Opacity,
    render_radiograph,
    sample_opacities,
)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _region(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> float:
    """Mean of the image over a rectangle given in image fractions."""
    h, w = img.shape
    return float(img[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)].mean())


def _boxes_mask(opacities: list[Opacity], size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    for op in opacities:
        x, y, w, h = op.box(size)
        mask[y : y + h, x : x + w] = True
    return mask


def _pair(seed: int, size: int, opacities: list[Opacity]) -> np.ndarray:
    """The image with opacities minus the same patient (same rng state) without them, as int."""
    with_ops = render_radiograph(_rng(seed), size, opacities=opacities).astype(np.int32)
    without = render_radiograph(_rng(seed), size).astype(np.int32)
    return with_ops - without


# ------------------------------------------------------------------------------------------------ shape and types


@pytest.mark.parametrize("size", [MIN_SIZE, 16, 64, 128, 255, 256, 300, 512, 640, 1024])
def test_dtype_and_shape(size: int) -> None:
    img = render_radiograph(_rng(size), size, opacities=sample_opacities(_rng(1)))
    assert img.dtype == np.uint8
    assert img.shape == (size, size)
    assert img.flags.c_contiguous


def test_uses_the_dynamic_range() -> None:
    for seed in range(5):
        img = render_radiograph(_rng(seed), 256)
        assert int(img.max()) - int(img.min()) > 120
        assert len(np.unique(img)) > 64


@pytest.mark.parametrize("bad", [0, 1, MIN_SIZE - 1, -256])
def test_rejects_tiny_sizes(bad: int) -> None:
    with pytest.raises(ValueError):
        render_radiograph(_rng(0), bad)


def test_rejects_non_integer_size() -> None:
    with pytest.raises(TypeError):
        render_radiograph(_rng(0), 256.0)  # type: ignore[arg-type]


def test_numpy_integer_size_is_accepted() -> None:
    assert render_radiograph(_rng(0), np.int64(64)).shape == (64, 64)


# ------------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes() -> None:
    ops = sample_opacities(_rng(7), 2)
    kw = {"opacities": ops, "findings": ("Cardiomegaly", "Effusion", "Nodule")}
    a = render_radiograph(_rng(123), 256, **kw)
    b = render_radiograph(_rng(123), 256, **kw)
    assert a.tobytes() == b.tobytes()
    assert render_radiograph(_rng(5), 1024).tobytes() == render_radiograph(_rng(5), 1024).tobytes()


def test_different_seed_differs() -> None:
    a = render_radiograph(_rng(1), 128)
    b = render_radiograph(_rng(2), 128)
    assert not np.array_equal(a, b)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 3


def test_successive_draws_from_one_generator_differ() -> None:
    rng = _rng(0)
    assert not np.array_equal(render_radiograph(rng, 64), render_radiograph(rng, 64))


def test_global_numpy_state_is_untouched() -> None:
    np.random.seed(0)
    expected = np.random.random()
    np.random.seed(0)
    render_radiograph(_rng(3), 64, opacities=sample_opacities(_rng(3)), findings=("Mass",))
    assert np.random.random() == expected


def test_sample_opacities_is_deterministic() -> None:
    assert sample_opacities(_rng(9), 5) == sample_opacities(_rng(9), 5)
    assert sample_opacities(_rng(9), 5) != sample_opacities(_rng(10), 5)


def test_opacities_draw_nothing_from_the_generator() -> None:
    r1, r2 = _rng(11), _rng(11)
    render_radiograph(r1, 64, opacities=sample_opacities(_rng(0), 3))
    render_radiograph(r2, 64)
    assert r1.random() == r2.random()


# --------------------------------------------------------------------------------------------------- opacities


@pytest.mark.parametrize("seed", range(8))
def test_opacities_brighten_only_inside_their_boxes(seed: int) -> None:
    size = 256
    ops = sample_opacities(_rng(1000 + seed))
    diff = _pair(seed, size, ops)
    inside = _boxes_mask(ops, size)
    assert np.all(diff[~inside] == 0), "pixels outside every box changed"
    assert diff[inside].mean() > 8.0
    assert diff[inside].mean() > diff[~inside].mean() + 8.0
    assert (diff >= 0).all(), "an opacity can only add attenuation"


def test_each_box_holds_almost_all_of_its_opacity_and_is_tight() -> None:
    size = 256
    for seed in range(12):
        (op,) = sample_opacities(_rng(2000 + seed), 1)
        diff = _pair(seed, size, [op])
        x, y, w, h = op.box(size)
        total = diff.sum()
        assert total > 0
        assert diff[y : y + h, x : x + w].sum() >= 0.95 * total
        # Tight: the visibly changed pixels reach (within a pixel or two) every edge of the box.
        ys, xs = np.nonzero(diff > 0)
        assert xs.min() - x <= 2 and ys.min() - y <= 2
        assert (x + w - 1) - xs.max() <= 2 and (y + h - 1) - ys.max() <= 2


def test_box_matches_the_rendered_layer() -> None:
    for op in sample_opacities(_rng(5), 20):
        for size in (64, 256):
            x0, y0, values = op.layer(size)
            assert values.dtype == np.float32
            assert values.max() == pytest.approx(op.density, rel=1e-5)
            assert values.min() >= 0.0
            rows, cols = np.nonzero(values)
            assert op.box(size) == (
                x0 + cols.min(),
                y0 + rows.min(),
                cols.max() - cols.min() + 1,
                rows.max() - rows.min() + 1,
            )


@pytest.mark.parametrize("size", [32, 64, 128, 256, 1024])
def test_sampled_boxes_are_inside_the_image_and_non_empty(size: int) -> None:
    for op in sample_opacities(_rng(size), 300):
        x, y, w, h = op.box(size)
        assert all(isinstance(v, int) for v in (x, y, w, h))
        assert w >= 1 and h >= 1
        assert x >= 0 and y >= 0 and x + w <= size and y + h <= size


def test_box_scales_with_size() -> None:
    for op in sample_opacities(_rng(21), 40):
        small = np.array(op.box(256), dtype=float) / 256
        large = np.array(op.box(1024), dtype=float) / 1024
        assert np.abs(small - large).max() <= 3 / 256
        # and it is about where the opacity says it is
        x, y, w, h = small
        assert x <= op.cx <= x + w and y <= op.cy <= y + h
        assert 0.8 * op.rx < w < 3.0 * op.rx and 0.8 * op.ry < h < 3.0 * op.ry


def test_box_is_clipped_to_the_image() -> None:
    op = Opacity(cx=0.99, cy=0.01, rx=0.1, ry=0.1, density=0.7, seed=3)
    x, y, w, h = op.box(128)
    assert x >= 0 and y == 0 and x + w == 128 and h >= 1
    diff = _pair(0, 128, [op])
    assert np.all(diff[_boxes_mask([op], 128) == 0] == 0)


def test_opacity_entirely_outside_gives_an_empty_box() -> None:
    op = Opacity(cx=3.0, cy=0.5, rx=0.05, ry=0.05, density=0.5, seed=1)
    assert op.box(128)[2:] == (0, 0)
    assert np.array_equal(render_radiograph(_rng(0), 64, opacities=[op]), render_radiograph(_rng(0), 64))


def test_tiny_opacity_still_covers_a_pixel() -> None:
    op = Opacity(cx=0.3, cy=0.5, rx=0.001, ry=0.001, density=0.8, seed=1)
    x, y, w, h = op.box(64)
    assert 1 <= w <= 3 and 1 <= h <= 3
    assert x <= int(0.3 * 64) < x + w and y <= int(0.5 * 64) < y + h
    assert _pair(0, 64, [op])[y : y + h, x : x + w].sum() > 0


def test_opacity_shape_is_patchy_not_a_plain_ellipse() -> None:
    _, _, values = sample_opacities(_rng(3), 1)[0].layer(512)
    inner = values[values > 0]
    # heterogeneous: many distinct levels, and the shape fills its box only partially
    assert len(np.unique(np.round(inner, 3))) > 100
    assert (values > 0).mean() < 0.95
    # different seeds give different shapes for the same geometry
    a = Opacity(0.3, 0.6, 0.08, 0.08, 0.6, seed=1).layer(256)[2]
    b = Opacity(0.3, 0.6, 0.08, 0.08, 0.6, seed=2).layer(256)[2]
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_denser_opacity_is_brighter() -> None:
    faint = Opacity(0.3, 0.6, 0.07, 0.07, 0.3, seed=4)
    dense = dataclasses.replace(faint, density=0.9)
    assert _pair(0, 128, [dense]).sum() > 1.5 * _pair(0, 128, [faint]).sum()


@pytest.mark.parametrize(
    "kwargs",
    [{"rx": 0.0}, {"ry": -0.1}, {"density": 1.5}, {"density": -0.1}, {"cx": float("nan")}],
)
def test_opacity_validation(kwargs: dict[str, float]) -> None:
    base = {"cx": 0.3, "cy": 0.5, "rx": 0.05, "ry": 0.05, "density": 0.5, "seed": 0}
    with pytest.raises(ValueError):
        Opacity(**{**base, **kwargs})


def test_opacity_is_frozen_and_hashable() -> None:
    op = Opacity(0.3, 0.5, 0.05, 0.05, 0.5, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.cx = 0.4  # type: ignore[misc]
    assert len({op, dataclasses.replace(op)}) == 1


# ---------------------------------------------------------------------------------------------------- sampling


def test_sample_count() -> None:
    assert sample_opacities(_rng(0), 0) == []
    assert len(sample_opacities(_rng(0), 4)) == 4
    with pytest.raises(ValueError):
        sample_opacities(_rng(0), -1)
    counts = np.bincount([len(sample_opacities(_rng(i))) for i in range(600)], minlength=4)
    assert counts[0] == 0 and counts[1:].sum() == 600
    assert counts[1] > counts[2] > 0 and counts[3] > 0
    assert counts[1] / 600 > 0.55


def test_lower_lobe_bias_and_both_lungs() -> None:
    ops = sample_opacities(_rng(42), 500)
    cy = np.array([o.cy for o in ops])
    cx = np.array([o.cx for o in ops])
    lower = (cy > 0.5 * (LUNG_TOP + LUNG_BOTTOM)).mean()
    assert 0.6 <= lower <= 0.9
    right_of_image = (cx > 0.5).mean()
    assert 0.35 < right_of_image < 0.65
    assert np.all((cy > LUNG_TOP) & (cy < LUNG_BOTTOM))
    assert np.all(np.abs(cx - 0.5) > 0.04), "no opacity centred on the mediastinum"
    assert np.all((cx > 0.1) & (cx < 0.9))


def test_sampled_parameters_vary() -> None:
    ops = sample_opacities(_rng(8), 400)
    rx = np.array([o.rx for o in ops])
    dens = np.array([o.density for o in ops])
    assert rx.min() < 0.045 and rx.max() > 0.115
    assert dens.min() < 0.55 and dens.max() > 0.9 and np.all((dens > 0) & (dens <= 1))
    assert len({o.seed for o in ops}) == len(ops)
    aspect = np.array([o.ry / o.rx for o in ops])
    assert aspect.min() < 0.8 and aspect.max() > 1.2


# ----------------------------------------------------------------------------------------------------- anatomy


def test_images_are_not_noise() -> None:
    for seed in range(12):
        img = render_radiograph(_rng(seed), 128).astype(float)
        lungs = 0.5 * (_region(img, 0.2, 0.35, 0.3, 0.5) + _region(img, 0.65, 0.8, 0.3, 0.5))
        mediastinum = _region(img, 0.47, 0.53, 0.2, 0.6)
        assert mediastinum > lungs + 40
        # below the diaphragm is brighter than the lungs; outside the body (top corners) is darker than the body
        assert _region(img, 0.2, 0.8, 0.9, 1.0) > lungs + 40
        assert _region(img, 0.0, 0.06, 0.0, 0.04) < _region(img, 0.45, 0.55, 0.85, 0.95)
        # neighbouring pixels are strongly correlated (structure, not white noise)
        a = img - img.mean()
        corr = (a[:, 1:] * a[:, :-1]).sum() / np.sqrt((a[:, 1:] ** 2).sum() * (a[:, :-1] ** 2).sum())
        assert corr > 0.9


def test_heart_sits_on_the_image_right() -> None:
    for seed in range(12):
        img = render_radiograph(_rng(seed), 128).astype(float)
        assert _region(img, 0.6, 0.66, 0.55, 0.65) > _region(img, 0.34, 0.4, 0.55, 0.65) + 10


def test_ribs_make_the_lungs_striped_vertically() -> None:
    # posterior ribs cross the lungs as bands: a column profile through a lung oscillates far more than a row profile
    # through the mediastinum would suggest; count brightness peaks along a lateral lung column
    peaks = []
    for seed in range(6):
        img = render_radiograph(_rng(seed), 512).astype(float)
        col = img[int(0.2 * 512) : int(0.65 * 512), int(0.22 * 512) : int(0.26 * 512)].mean(axis=1)
        smooth = np.convolve(col, np.ones(5) / 5, mode="same")
        detrended = smooth - np.convolve(smooth, np.ones(41) / 41, mode="same")
        core = detrended[25:-25]
        peaks.append(int(((core[1:-1] > core[:-2]) & (core[1:-1] >= core[2:]) & (core[1:-1] > 1.0)).sum()))
    assert 3 <= np.median(peaks) <= 12


def test_patients_vary_and_exposures_vary() -> None:
    imgs = np.stack([render_radiograph(_rng(s), 64).astype(float) for s in range(16)])
    assert imgs.mean(axis=(1, 2)).std() > 3
    assert imgs.std(axis=0).mean() > 5


def test_rendering_is_consistent_across_sizes() -> None:
    small = render_radiograph(_rng(4), 64).astype(float)
    big = render_radiograph(_rng(4), 256)
    down = np.asarray(Image.fromarray(big).resize((64, 64), Image.Resampling.BOX), dtype=float)
    assert np.corrcoef(small.ravel(), down.ravel())[0, 1] > 0.9


# ---------------------------------------------------------------------------------------------------- findings


def test_unknown_and_unrendered_findings_are_accepted_and_change_nothing() -> None:
    plain = render_radiograph(_rng(3), 128)
    for findings in (("Infiltration",), ("Consolidation", "Fibrosis"), ("not a label",), ("Pneumonia", "No Finding")):
        assert np.array_equal(render_radiograph(_rng(3), 128, findings=findings), plain)


@pytest.mark.parametrize("finding", sorted(RENDERED_FINDINGS))
def test_rendered_findings_change_the_image(finding: str) -> None:
    plain = render_radiograph(_rng(6), 256).astype(int)
    cued = render_radiograph(_rng(6), 256, findings=(finding,)).astype(int)
    changed = np.abs(cued - plain) > 12
    assert changed.sum() >= 20, "the cue is not visible"
    # findings draw from a side stream: the same patient, so the top corners (outside the body) are unchanged
    assert np.array_equal(cued[:8, :8], plain[:8, :8]) and np.array_equal(cued[:8, -8:], plain[:8, -8:])


def test_finding_names_are_normalised() -> None:
    a = render_radiograph(_rng(2), 64, findings=("Pleural_Thickening",))
    b = render_radiograph(_rng(2), 64, findings=("pleural thickening",))
    assert np.array_equal(a, b)


def test_cardiomegaly_widens_the_heart() -> None:
    wider = 0
    for seed in range(10):
        plain = render_radiograph(_rng(seed), 128).astype(float)
        big = render_radiograph(_rng(seed), 128, findings=("Cardiomegaly",)).astype(float)
        # just lateral to the normal left heart border
        wider += _region(big, 0.68, 0.76, 0.55, 0.65) > _region(plain, 0.68, 0.76, 0.55, 0.65) + 3
    assert wider >= 8


def test_effusion_fills_a_lung_base() -> None:
    for seed in range(6):
        plain = render_radiograph(_rng(seed), 128).astype(float)
        wet = render_radiograph(_rng(seed), 128, findings=("Effusion",)).astype(float)
        base_gain = max(
            _region(wet, 0.15, 0.3, 0.62, 0.7) - _region(plain, 0.15, 0.3, 0.62, 0.7),
            _region(wet, 0.7, 0.85, 0.62, 0.7) - _region(plain, 0.7, 0.85, 0.62, 0.7),
        )
        assert base_gain > 10


def test_patient_draws_include_occasional_markers_and_wires() -> None:
    patients = [render._draw_patient(_rng(s), render._draw_person(_rng(10_000 + s), 64)) for s in range(1000)]
    for flag in ("wires", "side_marker", "label"):
        rate = np.mean([getattr(p, flag) for p in patients])
        assert 0.08 < rate < 0.22, (flag, rate)


# ------------------------------------------------------------------------------------------------- follow-ups


def _follow_up(patient: int, follow_up: int, size: int = 64, **kwargs) -> np.ndarray:
    """Follow-up ``follow_up`` of ``patient``: the patient's generator shared, the image's own."""
    image_rng = np.random.default_rng([patient, follow_up])
    return render_radiograph(image_rng, size, patient=np.random.default_rng([patient, 2**32 - 1]), **kwargs)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_follow_ups_of_one_patient_look_alike_and_other_patients_do_not() -> None:
    # 24 patients, two follow-ups each, no opacities or findings. Raw images of any two chests correlate (the same
    # anatomy drawn twice); what identifies a person is how the image departs from the average chest: those
    # residuals correlate 0.70 between a patient's follow-ups and not at all between two patients (measured: means
    # 0.703 and -0.032; worst follow-up pair 0.44, most alike strangers 0.63), and the nearest neighbour of a second
    # image's residual among the first images' is the same patient for 21 of the 24.
    n = 24
    first = np.stack([_follow_up(p, 0).astype(float) for p in range(n)])
    second = np.stack([_follow_up(p, 1).astype(float) for p in range(n)])
    mean = np.concatenate([first, second]).mean(axis=0)
    resid = np.array([[_correlation(second[i] - mean, first[j] - mean) for j in range(n)] for i in range(n)])
    same, other = np.diag(resid), resid[~np.eye(n, dtype=bool)]
    assert same.mean() > 0.65 and abs(other.mean()) < 0.05
    assert same.mean() - other.mean() > 0.65
    assert (resid.argmax(axis=1) == np.arange(n)).sum() >= 20
    raw_same = np.mean([_correlation(first[i], second[i]) for i in range(n)])
    raw_other = np.mean([_correlation(first[i], second[(i + 1) % n]) for i in range(n)])
    assert raw_same > raw_other + 0.08  # measured: 0.952 vs 0.834
    # yet no two follow-ups are the same image: positioning, exposure and noise change (smallest mean |difference|: 7.7)
    assert all(np.abs(first[i] - second[i]).mean() > 3 for i in range(n))


def test_follow_ups_are_reproducible_and_the_patient_generator_fixes_the_person() -> None:
    ops = sample_opacities(_rng(4), 2)
    a = _follow_up(7, 3, 128, opacities=ops, findings=("Effusion",))
    assert a.tobytes() == _follow_up(7, 3, 128, opacities=ops, findings=("Effusion",)).tobytes()
    assert not np.array_equal(_follow_up(7, 3, 128), _follow_up(7, 4, 128))
    # the person is a function of the patient generator's state alone
    one, two = render._draw_person(_rng(5), 64), render._draw_person(_rng(5), 64)
    for field in dataclasses.fields(one):
        assert np.array_equal(getattr(one, field.name), getattr(two, field.name)), field.name
    # and the image's variation of the image generator's alone
    assert render._draw_patient(_rng(6), one) == render._draw_patient(_rng(6), two)


def test_follow_ups_are_the_same_bytes_in_another_process() -> None:
    import hashlib
    import subprocess
    import sys

    def digest(image: np.ndarray) -> str:
        return hashlib.md5(image.tobytes()).hexdigest()

    code = (
        "import hashlib, numpy as np; from cxrexplain.data.render import render_radiograph, sample_opacities\n"
        "for f in (0, 1):\n"
        "    img = render_radiograph(np.random.default_rng([7, f]), 96, patient=np.random.default_rng([7, 2**32 - 1]),"
        " opacities=sample_opacities(np.random.default_rng(4), 2), findings=('Nodule',))\n"
        "    print(hashlib.md5(img.tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    ops = sample_opacities(_rng(4), 2)
    assert out == [digest(_follow_up(7, f, 96, opacities=ops, findings=("Nodule",))) for f in (0, 1)]


def test_the_patient_generator_keeps_the_renderers_guarantees() -> None:
    # opacities draw from neither generator and change only their boxes' pixels; findings leave the rest alone
    ops = sample_opacities(_rng(12), 2)
    diff = _follow_up(3, 1, 128, opacities=ops).astype(int) - _follow_up(3, 1, 128).astype(int)
    assert np.all(diff[~_boxes_mask(ops, 128)] == 0) and diff.sum() > 0
    image_rng, patient_rng = np.random.default_rng([3, 1]), np.random.default_rng([3, 2**32 - 1])
    render_radiograph(image_rng, 64, patient=patient_rng, opacities=ops)
    plain_image, plain_patient = np.random.default_rng([3, 1]), np.random.default_rng([3, 2**32 - 1])
    render_radiograph(plain_image, 64, patient=plain_patient)
    assert image_rng.random() == plain_image.random() and patient_rng.random() == plain_patient.random()
    cued, plain = _follow_up(3, 1, 128, findings=("Mass",)), _follow_up(3, 1, 128)
    assert not np.array_equal(cued, plain)
    assert np.array_equal(cued[:8, :8], plain[:8, :8]) and np.array_equal(cued[:8, -8:], plain[:8, -8:])


def test_devices_and_markers_come_and_go_between_follow_ups() -> None:
    # a monitored patient's leads are on about WIRES_SHOWN of their images; a hospital's markers on MARKER_SHOWN
    people = [render._draw_person(_rng(s), 64) for s in range(400)]
    monitored = [q for q in people if q.leads][:40]
    marked = [q for q in people if q.markers][:40]
    assert len(monitored) == 40 and len(marked) == 40
    shown = np.mean([render._draw_patient(_rng([i, f]), q).wires for i, q in enumerate(monitored) for f in range(10)])
    assert abs(shown - render.WIRES_SHOWN) < 0.06
    kept = [
        len(render._draw_patient(_rng([i, f]), q).markers) / len(q.markers)
        for i, q in enumerate(marked)
        for f in range(10)
    ]
    assert abs(np.mean(kept) - render.MARKER_SHOWN) < 0.05
    assert not any(render._draw_patient(_rng(s), q).wires for s, q in enumerate(people) if not q.leads)
