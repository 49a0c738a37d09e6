"""Pixels of the synthetic NIH ChestX-ray14 mirror: frontal chest radiographs with Pneumonia-like opacities.

The real NIH images cannot be downloaded here, so the mirror draws its own: 8-bit grayscale posterior-anterior chest
radiographs in radiograph convention (air dark, bone and soft tissue bright), built from a crude but recognisable
anatomy (body silhouette, shoulders and arms, two lung fields, heart, mediastinum, trachea, spine with vertebrae,
clavicles, posterior and anterior ribs, diaphragm domes, gastric bubble, lung vessels) with patient-to-patient variation
(size, position, a few degrees of rotation, rib spacing), exposure variation (window and gamma), film noise and grid
lines, and occasional burned-in text markers and ECG leads.

A patient's follow-ups look alike, as real ones do: given the patient's own generator (``render_radiograph(...,
patient=...)``), everything that belongs to the person or their hospital (anatomy, lung markings, habitual positioning,
tone curve, grid, text markers, ECG leads) is the same on every image, and each image varies only what varies between
real follow-ups (a small shift and rotation, inspiration, exposure and noise, devices and markers coming and going,
its findings and opacities). That is what lets an image-level split leak patients, as on NIH.

Pneumonia is drawn as :class:`Opacity` objects: patchy, ill-defined, textured brightenings made of several blended
blobs. Each opacity is a layer that is exactly zero outside :meth:`Opacity.box`, and it is added after everything else
that depends on the random generator, so an image rendered with opacities differs from the same image rendered without
them only inside the union of their boxes.

Coordinates are image fractions: ``x`` grows to the image right (the patient's left), ``y`` grows downwards.

Everything is vectorised numpy on the final grid (or on a ``MAX_RENDER_SIZE`` grid upsampled with PIL for larger
images); a 256 px image takes a few milliseconds on one core.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "LUNG_BOTTOM",
    "LUNG_TOP",
    "MAX_RENDER_SIZE",
    "MIN_SIZE",
    "OPACITY_CONTRAST",
    "RENDERED_FINDINGS",
    "Opacity",
    "render_radiograph",
    "sample_opacities",
]

OPACITY_CONTRAST = 0.45
"""Attenuation that an opacity of density 1 adds: the lung-to-bone contrast of the renderer's linear scale."""
MAX_RENDER_SIZE = 512
"""Anatomy is drawn at ``min(size, MAX_RENDER_SIZE)`` and upsampled; opacities, noise and markers at full size."""
MIN_SIZE = 8
"""Smallest image size that :func:`render_radiograph` accepts."""
RENDERED_FINDINGS = frozenset(
    {
        "Atelectasis",
        "Cardiomegaly",
        "Edema",
        "Effusion",
        "Emphysema",
        "Hernia",
        "Mass",
        "Nodule",
        "Pleural_Thickening",
        "Pneumothorax",
    }
)
"""NIH labels that :func:`render_radiograph` draws a cue for; any other string is accepted and ignored."""

_OPACITY_THRESHOLD = 0.25  # blob-field level where an opacity's visible extent ends
_RIGHT, _LEFT = 0, 1  # index of the patient's right lung (image left) and left lung (image right) in per-side pairs

# Canonical geometry (no patient variation), shared by the renderer and the opacity sampler. ``px`` is the distance
# from the midline in image widths, per side (right lung, left lung); heights are in anatomy units, which map to image
# heights through _to_image_y (a vertical stretch about a pivot).
_APEX = (0.135, 0.145)  # top of the lung ellipse
_BASE = (0.725, 0.745)  # lowest point of the lung (lateral costophrenic angle)
_DOME_H = (0.11, 0.09)  # height of the diaphragm dome above the base
_DOME_C = 0.17  # px of the dome's top
_DOME_W = (0.3, 0.2)  # half-width of the dome parabola medially and laterally of its top
_LATERAL = (0.365, 0.36)  # px of the lateral chest wall / lung border at its widest
_MEDIAL = 0.048  # px of the medial lung border (mediastinum half-width)
_HEART = (0.04, 0.615, 0.2, 0.13, 0.38)  # centre x (from midline), centre y, semi-axes a and b, tilt (radians)
_HEART_RIGHT = 0.62  # the right (image-left) half of the heart is narrower: semi-axis a × this
_STRETCH = 1.1  # image height per anatomy height
_PIVOT_ANATOMY, _PIVOT_IMAGE = 0.40, 0.43  # the anatomy height that lands on the image height


def _to_image_y(y: float) -> float:
    """Canonical anatomy height -> image height fraction."""
    return _PIVOT_IMAGE + (y - _PIVOT_ANATOMY) * _STRETCH


def _to_anatomy_y(y: float) -> float:
    """Image height fraction -> canonical anatomy height."""
    return _PIVOT_ANATOMY + (y - _PIVOT_IMAGE) / _STRETCH


LUNG_TOP = _to_image_y(min(_APEX))
"""Canonical top of the lung fields (apices), as a fraction of the image height."""
LUNG_BOTTOM = _to_image_y(max(_BASE))
"""Canonical bottom of the lung fields (deepest costophrenic angle), as a fraction of the image height."""


# --------------------------------------------------------------------------------------------------------- opacities


@dataclass(frozen=True)
class Opacity:
    """One Pneumonia-like patchy opacity.

    Attributes:
        cx: Centre, as a fraction of the image width (0 left edge, 1 right edge).
        cy: Centre, as a fraction of the image height (0 top, 1 bottom).
        rx: Horizontal radius as a fraction of the width; the visible extent is about ``cx ± 1.2 rx``.
        ry: Vertical radius as a fraction of the height.
        density: Peak added attenuation, 0..1, as a fraction of the lung-to-bone contrast (``OPACITY_CONTRAST``).
        seed: Drives the opacity's patchy, non-elliptic shape and texture (blob layout, mottling).
    """

    cx: float
    cy: float
    rx: float
    ry: float
    density: float
    seed: int

    def __post_init__(self) -> None:
        if not (self.rx > 0 and self.ry > 0):
            raise ValueError(f"opacity radii must be positive, got rx={self.rx}, ry={self.ry}")
        if not 0.0 <= self.density <= 1.0:
            raise ValueError(f"opacity density must be within 0..1, got {self.density}")
        if not (math.isfinite(self.cx) and math.isfinite(self.cy)):
            raise ValueError(f"opacity centre must be finite, got ({self.cx}, {self.cy})")

    def layer(self, size: int) -> tuple[int, int, np.ndarray]:
        """The opacity as rendered on a ``size``×``size`` image, before scaling by ``OPACITY_CONTRAST``.

        Returns:
            ``(x0, y0, values)``: a read-only float32 patch whose top-left pixel is ``(x0, y0)``, holding the added
            density (0..``density``) per pixel; every pixel outside the patch gets nothing.
        """
        return _opacity_patch(self, _check_size(size))

    def box(self, size: int) -> tuple[int, int, int, int]:
        """Bounding box ``(x, y, w, h)`` in pixels of a ``size``×``size`` image, clipped to the image.

        The box is tight around every pixel the renderer brightens (the same threshold, the same pixels): the opacity
        adds nothing outside it and something on each of its four edges. An opacity whose extent misses the image
        entirely gets ``w = h = 0``.
        """
        x0, y0, patch = _opacity_patch(self, _check_size(size))
        rows = np.flatnonzero(patch.any(axis=1))
        if rows.size == 0:
            return (min(max(x0, 0), size - 1), min(max(y0, 0), size - 1), 0, 0)
        cols = np.flatnonzero(patch.any(axis=0))
        return (x0 + int(cols[0]), y0 + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


@functools.lru_cache(maxsize=256)
def _opacity_shape(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed's blob layout and texture waves, in units of the opacity's radii.

    Returns ``blobs`` (k, 6): offset x, offset y, sigma along its axis 1, sigma along axis 2, tilt, weight; and
    ``waves`` (m, 4): frequency x, frequency y (cycles per radius), phase, amplitude (amplitudes sum to 1).
    """
    g = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, 0x0FAC17])  # any int, negative ones included
    k = int(g.integers(3, 8))
    angle = g.uniform(0, 2 * np.pi, k)
    dist = 0.58 * np.sqrt(g.uniform(0, 1, k))
    dist[0] *= 0.25  # one blob near the centre keeps the opacity anchored where it claims to be
    blobs = np.empty((k, 6))
    blobs[:, 0] = dist * np.cos(angle)
    blobs[:, 1] = dist * np.sin(angle)
    blobs[:, 2] = g.uniform(0.22, 0.48, k)
    blobs[:, 3] = blobs[:, 2] * g.uniform(0.55, 1.0, k)
    blobs[:, 4] = g.uniform(0, np.pi, k)
    blobs[:, 5] = g.uniform(0.55, 1.0, k)
    m = 6
    direction = g.uniform(0, 2 * np.pi, m)
    freq = np.concatenate([g.uniform(0.7, 1.6, 2), g.uniform(1.8, 3.0, 2), g.uniform(3.5, 5.5, 2)])
    amp = np.array([0.32, 0.26, 0.16, 0.12, 0.08, 0.06]) * g.uniform(0.7, 1.3, m)
    waves = np.empty((m, 4))
    waves[:, 0] = freq * np.cos(direction)
    waves[:, 1] = freq * np.sin(direction)
    waves[:, 2] = g.uniform(0, 2 * np.pi, m)
    waves[:, 3] = amp / amp.sum()
    blobs.flags.writeable = False
    waves.flags.writeable = False
    return blobs, waves


@functools.lru_cache(maxsize=64)
def _opacity_patch(op: Opacity, size: int) -> tuple[int, int, np.ndarray]:
    """Render ``op`` on a ``size`` grid: ``(x0, y0, patch)`` with the added density, zero below the threshold."""
    blobs, waves = _opacity_shape(op.seed)
    cxp, cyp = op.cx * size, op.cy * size  # centre in pixels
    rxp, ryp = op.rx * size, op.ry * size  # radii in pixels
    # Blob sigmas in radius units, never below ~0.6 px so a tiny opacity still lands on a pixel centre.
    s1 = np.maximum(blobs[:, 2], 0.6 / min(rxp, ryp))
    s2 = np.maximum(blobs[:, 3], 0.6 / min(rxp, ryp))
    tilt, weight = blobs[:, 4], blobs[:, 5]
    # Conservative window: the field (≤ the blob sum, texture ≤ 1) can exceed the lowest threshold used below,
    # _OPACITY_THRESHOLD / 4, only where some blob j exceeds that / k, i.e. within ``reach`` sigmas of its centre.
    reach = np.sqrt(2.0 * np.log(np.maximum(4.0 * len(blobs) * weight / _OPACITY_THRESHOLD, 1.0)))
    hx = reach * np.hypot(s1 * np.cos(tilt), s2 * np.sin(tilt))
    hy = reach * np.hypot(s1 * np.sin(tilt), s2 * np.cos(tilt))
    x_lo = math.floor(cxp + float(np.min((blobs[:, 0] - hx) * rxp)) - 1)
    x_hi = math.ceil(cxp + float(np.max((blobs[:, 0] + hx) * rxp)) + 1)
    y_lo = math.floor(cyp + float(np.min((blobs[:, 1] - hy) * ryp)) - 1)
    y_hi = math.ceil(cyp + float(np.max((blobs[:, 1] + hy) * ryp)) + 1)
    x0, x1 = max(x_lo, 0), min(x_hi, size)
    y0, y1 = max(y_lo, 0), min(y_hi, size)
    if x1 <= x0 or y1 <= y0:
        empty = np.zeros((0, 0), np.float32)
        empty.flags.writeable = False
        return x0, y0, empty
    a = ((np.arange(x0, x1, dtype=np.float64) + 0.5 - cxp) / rxp)[None, :]
    b = ((np.arange(y0, y1, dtype=np.float64) + 0.5 - cyp) / ryp)[:, None]
    raw = np.zeros((y1 - y0, x1 - x0))
    for (ox, oy, _, _, th, w), sa, sb in zip(blobs, s1, s2, strict=True):
        da, db = a - ox, b - oy
        c, s = math.cos(th), math.sin(th)
        raw += w * np.exp(-0.5 * (((c * da + s * db) / sa) ** 2 + ((c * db - s * da) / sb) ** 2))
    texture = np.zeros_like(raw)
    fine = min(1.0, max(0.35, math.sqrt(0.5 * (op.rx + op.ry) / 0.12)))  # small patches: coarser mottling
    for fx, fy, ph, amp in waves:
        texture += amp * np.cos(2 * np.pi * fine * (fx * a + fy * b) + ph)
    field = raw * (0.7 + 0.3 * texture)  # texture in [-1, 1] -> factor in [0.4, 1.0]
    peak = float(field.max())
    thr = max(min(_OPACITY_THRESHOLD, 0.5 * peak), 0.25 * _OPACITY_THRESHOLD)
    if peak <= thr:
        values = np.zeros(field.shape, np.float32)
    else:
        values = (op.density * np.clip((field - thr) / (peak - thr), 0.0, 1.0) ** 0.65).astype(np.float32)
    values.flags.writeable = False
    return x0, y0, values


def sample_opacities(rng: np.random.Generator, n: int | None = None) -> list[Opacity]:
    """Draw ``n`` Pneumonia-like opacities inside the canonical lung fields.

    Args:
        rng: The only source of randomness.
        n: How many; ``None`` draws 1 (70 %), 2 (22 %) or 3 (8 %).

    Returns:
        Opacities in either lung, about 75 % in the lower zones (below the hila, ``cy`` in the lower half of
        ``LUNG_TOP..LUNG_BOTTOM``), from small patches (radius ~4 % of the image) to a large fraction of a lobe
        (~13 %), with density 0.5..0.95 and a seed for each one's patchy shape.
    """
    if n is None:
        n = int(rng.choice(3, p=[0.70, 0.22, 0.08])) + 1
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    out = []
    for _ in range(n):
        side = int(rng.integers(2))
        lower = bool(rng.random() < 0.75)
        rx = float(math.exp(rng.uniform(math.log(0.04), math.log(0.13))))
        ry = rx * float(rng.uniform(0.7, 1.35))
        density = float(rng.uniform(0.5, 0.95))
        seed = int(rng.integers(0, 2**31 - 1))
        height = LUNG_BOTTOM - LUNG_TOP
        zone = (0.54, 0.84) if lower else (0.14, 0.46)
        cy = LUNG_TOP + height * float(rng.uniform(*zone))
        medial, lateral = _canonical_lung_span(side, cy)
        lo, hi = medial + 0.55 * rx, lateral - 0.7 * rx
        if hi < lo:
            lo = hi = 0.5 * (medial + lateral)
        px = float(rng.uniform(lo, hi))
        if lower:  # stay above the diaphragm dome below this point
            cy = max(min(cy, _canonical_dome(side, px) - 0.6 * ry - 0.025), LUNG_TOP + 0.52 * height)
        cx = 0.5 + (px if side == _LEFT else -px)
        out.append(Opacity(cx=cx, cy=cy, rx=rx, ry=ry, density=density, seed=seed))
    return out


def _canonical_dome(side: int, px: float) -> float:
    """Canonical diaphragm height (image fraction) under the lung ``side`` at distance ``px`` from the midline."""
    half = _DOME_W[0] if px < _DOME_C else _DOME_W[1]
    return _to_image_y(_BASE[side] - _DOME_H[side] * (1.0 - ((px - _DOME_C) / half) ** 2))


def _canonical_lung_span(side: int, y_image: float) -> tuple[float, float]:
    """Canonical medial and lateral border (distance from the midline) of lung ``side`` at image height ``y_image``."""
    y = _to_anatomy_y(y_image)
    pcx, ax, pcy, ay = _lung_ellipse(_MEDIAL, _LATERAL[side], _APEX[side], _BASE[side])
    dy = min(y - pcy, 0.0) / ay
    half = ax * math.sqrt(max(1.0 - dy * dy, 0.0))
    medial = max(_MEDIAL, pcx - half)
    if side == _LEFT:  # the heart covers the medial part of the left lower lung
        hcx, hcy, ha, hb, _ = _HEART
        t = (y - hcy) / hb
        if abs(t) < 1.0:
            medial = max(medial, hcx + 0.75 * ha * math.sqrt(1.0 - t * t))
    return medial, pcx + half


def _lung_ellipse(medial: float, lateral: float, apex: float, base: float) -> tuple[float, float, float, float]:
    """Centre x, semi-axis x, centre y, semi-axis y of the ellipse whose upper half outlines a lung."""
    inner = medial - 0.07  # the ellipse's medial side hides behind the mediastinum
    pcy = base - 0.03
    return 0.5 * (lateral + inner), 0.5 * (lateral - inner), pcy, pcy - apex


# ------------------------------------------------------------------------------------------------------- radiograph


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, got {size}")
    return int(size)


@functools.lru_cache(maxsize=32)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as image fractions: a (1, n) row and an (n, 1) column, float32, read-only."""
    c = (np.arange(n, dtype=np.float32) + np.float32(0.5)) / np.float32(n)
    c.flags.writeable = False
    return c[None, :], c[:, None]


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    """0 where ``d <= -width/2``, 1 where ``d >= width/2``, linear between (an anti-aliased step)."""
    return np.clip(d * np.float32(1.0 / width) + np.float32(0.5), np.float32(0.0), np.float32(1.0))


def _pick(left: np.ndarray, pair: tuple[float, float]) -> np.ndarray:
    """Per-pixel choice between the patient's right (``left`` 0) and left (``left`` 1, float32) value."""
    return left * np.float32(pair[1] - pair[0]) + np.float32(pair[0])


def _coarse_noise(rng: np.random.Generator, cells: tuple[int, int]) -> np.ndarray:
    """Unit Gaussian noise on a coarse ``cells`` grid (rows, cols), float32: :func:`_upsample` makes it smooth."""
    return rng.standard_normal(cells, dtype=np.float32)


def _upsample(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``coarse`` bicubically upsampled to ``shape`` (rows, cols): unit-ish, smooth noise."""
    return np.asarray(Image.fromarray(coarse).resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def _pair(rng: np.random.Generator, base: tuple[float, float], common: float, each: float) -> tuple[float, float]:
    """Per-side values: the canonical ``base`` plus a shared and a per-side uniform jitter."""
    shared = rng.uniform(-common, common)
    return (base[0] + shared + rng.uniform(-each, each), base[1] + shared + rng.uniform(-each, each))


_Lead = tuple[float, float, float, float, float, float, float]  # electrode x, y; cable end x, y; bend x, y; radius
_Marker = tuple[str, float, float, float, int, bool]  # text, x, y, glyph-cell size (image fraction), grey, framed

WIRES_SHOWN = 0.75
"""Chance that a monitored patient's ECG leads are on a given follow-up (devices come and go between images)."""
MARKER_SHOWN = 0.9
"""Chance that each of the hospital's burned-in text markers is on a given follow-up."""


@dataclass(frozen=True, eq=False)
class _Person:
    """What every radiograph of one patient shares: the person (body habitus, lung fields, diaphragm, heart, spine,
    ribs, clavicles, the lung markings' pattern, breast shadows), their habitual positioning, and their hospital
    (tone curve, detector noise and heel effect, anti-scatter grid, the burned-in text markers it prints, whether the
    patient is monitored with ECG leads and where the electrodes sit). Drawn in a fixed order from the patient's
    generator by :func:`_draw_person`; :func:`_draw_patient` adds one radiograph's variation."""

    rot: float
    shift_x: float
    shift_y: float
    scale_x: float
    scale_y: float
    neck_w: float
    torso_w: float
    shoulder_y: float
    tissue: float
    apex: tuple[float, float]
    base: tuple[float, float]
    dome_h: tuple[float, float]
    lateral: tuple[float, float]
    medial: float
    knob: float
    heart: tuple[float, float, float, float, float]
    air: float
    spine_w: float
    spine_amp: float
    vert_period: float
    vert_phase: float
    rib_y0: float
    rib_sp: float
    rib_k: float
    rib_a1: float
    rib_a2: float
    rib_w: float
    rib_amp: float
    arib_amp: float
    arib_y0: float
    arib_sp: float
    clav_y: float
    clav_slope: float
    clav_amp: float
    vessel_amp: float
    hilum_y: tuple[float, float]
    breasts: float
    bg: float
    heel: float
    mottle: float
    lo: float
    hi: float
    gamma: float
    noise: float
    grid_amp: float
    grid_period: float
    leads: tuple[_Lead, ...]  # empty: not monitored
    markers: tuple[_Marker, ...]
    warp: np.ndarray  # coarse noise of the lung markings (see _anatomy), the person's own
    polar: np.ndarray
    parenchyma: np.ndarray


def _draw_person(rng: np.random.Generator, n: int) -> _Person:
    """One patient's :class:`_Person`, for images drawn at ``n`` px (the parenchymal noise's grid follows ``n``)."""
    u = rng.uniform
    person = dict(
        rot=float(np.clip(rng.normal(0.0, 1.3), -3.5, 3.5)) * math.pi / 180.0,
        shift_x=u(-0.016, 0.016),
        shift_y=u(-0.022, 0.017),
        scale_x=u(0.94, 1.05),
        scale_y=u(0.94, 1.05),
        neck_w=u(0.09, 0.13),
        torso_w=u(0.385, 0.43),
        shoulder_y=u(0.06, 0.12),
        tissue=u(0.85, 1.15),
        apex=_pair(rng, _APEX, 0.012, 0.006),
        base=_pair(rng, _BASE, 0.025, 0.01),
        dome_h=_pair(rng, _DOME_H, 0.015, 0.01),
        lateral=_pair(rng, _LATERAL, 0.015, 0.008),
        medial=_MEDIAL + u(-0.006, 0.008),
        knob=u(0.015, 0.04),
        heart=(
            _HEART[0] + u(-0.015, 0.015),
            _HEART[1] + u(-0.02, 0.02),
            _HEART[2] * u(0.9, 1.1),
            _HEART[3] * u(0.92, 1.08),
            _HEART[4] + u(-0.12, 0.12),
        ),
        air=u(0.34, 0.41),
        spine_w=u(0.028, 0.036),
        spine_amp=u(0.03, 0.05),
        vert_period=u(0.036, 0.044),
        vert_phase=u(0.0, 1.0),
        rib_y0=u(0.085, 0.115),
        rib_sp=u(0.05, 0.06),
        rib_k=u(0.004, 0.014),
        rib_a1=u(-0.4, -0.25),
        rib_a2=u(1.7, 2.3),
        rib_w=u(0.36, 0.48),
        rib_amp=u(0.05, 0.09),
        arib_amp=u(0.025, 0.045),
        arib_y0=u(0.2, 0.25),
        arib_sp=u(0.065, 0.08),
        clav_y=u(0.15, 0.2),
        clav_slope=u(0.1, 0.22),
        clav_amp=u(0.09, 0.14),
        vessel_amp=u(0.045, 0.08),
        hilum_y=_pair(rng, (0.41, 0.39), 0.02, 0.01),
        breasts=u(0.0, 1.0),
        bg=u(0.0, 0.08),
        heel=u(-0.05, 0.05),
        mottle=u(0.008, 0.02),
        lo=u(-0.01, 0.06),
        hi=u(0.72, 0.9),
        gamma=u(0.8, 1.22),
        noise=u(0.005, 0.012),
        grid_amp=u(0.004, 0.012) if rng.random() < 0.25 else 0.0,
        grid_period=u(2.2, 3.4),
    )
    monitored, side_marker, label = (bool(rng.random() < q) for q in (0.2, 0.15, 0.12))
    return _Person(
        **person,
        leads=_plan_leads(rng) if monitored else (),
        markers=_plan_markers(rng, side_marker, label),
        warp=_coarse_noise(rng, (9, 9)),
        polar=_coarse_noise(rng, (80, 7)),
        parenchyma=_coarse_noise(rng, (max(4, n // 6), max(4, n // 6))),
    )


@dataclass
class _Patient:
    """Everything random about one radiograph but its noise fields: the :class:`_Person` as positioned, inspired and
    exposed this time (:func:`_draw_patient`), and which of their devices and markers it shows."""

    rot: float
    shift_x: float
    shift_y: float
    scale_x: float
    scale_y: float
    neck_w: float
    torso_w: float
    shoulder_y: float
    tissue: float
    arm_gap: float
    apex: tuple[float, float]
    base: tuple[float, float]
    dome_h: tuple[float, float]
    lateral: tuple[float, float]
    medial: float
    knob: float
    heart: tuple[float, float, float, float, float]
    air: float
    spine_w: float
    spine_amp: float
    vert_period: float
    vert_phase: float
    rib_y0: float
    rib_sp: float
    rib_k: float
    rib_a1: float
    rib_a2: float
    rib_w: float
    rib_amp: float
    arib_amp: float
    arib_y0: float
    arib_sp: float
    clav_y: float
    clav_slope: float
    clav_amp: float
    vessel_amp: float
    hilum_y: tuple[float, float]
    bubble: float
    breasts: float
    bg: float
    heel: float
    mottle: float
    lo: float
    hi: float
    gamma: float
    noise: float
    grid_amp: float
    grid_period: float
    leads: tuple[_Lead, ...]  # shown on this image
    markers: tuple[_Marker, ...]  # shown on this image

    @property
    def wires(self) -> bool:
        return bool(self.leads)

    @property
    def side_marker(self) -> bool:
        return any(len(m[0]) == 1 for m in self.markers)

    @property
    def label(self) -> bool:
        return any(len(m[0]) > 1 for m in self.markers)


def _draw_patient(rng: np.random.Generator, person: _Person) -> _Patient:
    """One follow-up of ``person``: positioning (a shift of about ±1 % and a rotation of about ±1° around their
    habitual one, a magnification within ±1.5 %, the arms), depth of inspiration (the diaphragm ±1.2 % of the image
    height, lung air ±5 %), exposure (window ±1.5-3 %, gamma ±6 %, noise ±20 %, heel effect), the gastric bubble,
    whether their ECG leads are on (:data:`WIRES_SHOWN`, electrodes re-placed within about ±1 %) and each of their
    hospital's markers (:data:`MARKER_SHOWN`, moved within ±0.8 %). A fixed number of draws from ``rng`` before the
    devices and markers, whose draws depend only on the person."""
    u = rng.uniform
    q = person
    breath = u(-0.012, 0.012)
    p = _Patient(
        rot=q.rot + float(np.clip(rng.normal(0.0, 0.7), -1.5, 1.5)) * math.pi / 180.0,
        shift_x=q.shift_x + u(-0.009, 0.009),
        shift_y=q.shift_y + u(-0.008, 0.008),
        scale_x=q.scale_x * u(0.985, 1.015),
        scale_y=q.scale_y * u(0.985, 1.015),
        neck_w=q.neck_w,
        torso_w=q.torso_w,
        shoulder_y=q.shoulder_y + u(-0.006, 0.006),
        tissue=q.tissue,
        arm_gap=u(-0.01, 0.05),
        apex=q.apex,
        base=(q.base[0] + breath, q.base[1] + breath),
        dome_h=q.dome_h,
        lateral=q.lateral,
        medial=q.medial,
        knob=q.knob,
        heart=q.heart,
        air=q.air * u(0.95, 1.05),
        spine_w=q.spine_w,
        spine_amp=q.spine_amp,
        vert_period=q.vert_period,
        vert_phase=q.vert_phase,
        rib_y0=q.rib_y0,
        rib_sp=q.rib_sp,
        rib_k=q.rib_k,
        rib_a1=q.rib_a1,
        rib_a2=q.rib_a2,
        rib_w=q.rib_w,
        rib_amp=q.rib_amp,
        arib_amp=q.arib_amp,
        arib_y0=q.arib_y0,
        arib_sp=q.arib_sp,
        clav_y=q.clav_y,
        clav_slope=q.clav_slope,
        clav_amp=q.clav_amp,
        vessel_amp=q.vessel_amp,
        hilum_y=q.hilum_y,
        bubble=u(0.0, 1.0),
        breasts=q.breasts,
        bg=q.bg,
        heel=q.heel + u(-0.015, 0.015),
        mottle=q.mottle,
        lo=q.lo + u(-0.015, 0.015),
        hi=q.hi + u(-0.03, 0.03),
        gamma=q.gamma * u(0.94, 1.06),
        noise=q.noise * u(0.8, 1.2),
        grid_amp=q.grid_amp,
        grid_period=q.grid_period,
        leads=(),
        markers=(),
    )
    if q.leads and rng.random() < WIRES_SHOWN:
        p.leads = tuple(
            (
                ex + u(-0.012, 0.012),
                ey + u(-0.012, 0.012),
                tx + u(-0.02, 0.02),
                ty + u(-0.02, 0.02),
                mx + u(-0.03, 0.03),
                my + u(-0.03, 0.03),
                rad,
            )
            for ex, ey, tx, ty, mx, my, rad in q.leads
        )
    shown = []
    for text, x, y, cell, level, framed in q.markers:
        dx, dy = u(-0.008, 0.008), u(-0.008, 0.008)
        if rng.random() < MARKER_SHOWN:
            shown.append((text, x + dx, y + dy, cell, level, framed))
    p.markers = tuple(shown)
    return p


def _normalise_findings(findings: Sequence[str]) -> frozenset[str]:
    by_key = {name.lower(): name for name in RENDERED_FINDINGS}
    if isinstance(findings, str):
        findings = (findings,)
    out = set()
    for f in findings:
        key = str(f).strip().lower().replace(" ", "_")
        if key in by_key:
            out.add(by_key[key])
    return frozenset(out)


def render_radiograph(
    rng: np.random.Generator,
    size: int,
    *,
    patient: np.random.Generator | None = None,
    opacities: Sequence[Opacity] = (),
    findings: Sequence[str] = (),
    opacity_contrast: float = 1.0,
) -> np.ndarray:
    """Draw one synthetic frontal chest radiograph.

    Args:
        rng: The image's source of randomness (besides ``patient`` and each opacity's own ``seed``); the same
            generator states and arguments give identical bytes. Opacities draw nothing from it, so the same state
            rendered with and without opacities gives the same patient and differs only inside the opacities' boxes.
        size: Width and height in pixels (at least ``MIN_SIZE``).
        patient: The patient's generator: who they are and where they are imaged (anatomy, lung markings, habitual
            positioning, the hospital's tone curve, grid and text markers, ECG leads if monitored: see
            :class:`_Person`) is drawn from it, in a fixed order, so follow-ups rendered with generators in the same
            state show the same person, as real follow-up series do; ``rng`` then varies positioning, inspiration,
            exposure, noise and which devices and markers this image shows (:func:`_draw_patient`). ``None``: the
            person is drawn from ``rng`` first (a new person for every image).
        opacities: Pneumonia-like opacities to add; each brightens only pixels inside its ``box(size)``.
        findings: NIH labels present besides Pneumonia / No Finding. Those in ``RENDERED_FINDINGS`` get a visual cue
            (e.g. Cardiomegaly: a larger heart; Effusion: a basal opacity with a meniscus; Nodule / Mass: a small /
            large round dense spot); anything else is accepted and ignored. They draw from a child of ``rng`` split
            off up front, so adding findings does not change the rest of the patient.
        opacity_contrast: Multiplies every opacity's added attenuation (1: ``OPACITY_CONTRAST``, the renderer's
            realistic faintness; reduced profiles use more, so that a network trained for minutes on a CPU sees them).

    Returns:
        A ``(size, size)`` uint8 array, air dark and bone bright.
    """
    size = _check_size(size)
    wanted = _normalise_findings(findings)
    finding_rng = np.random.default_rng(rng.integers(0, 2**63, dtype=np.uint64))  # always drawn: stable stream
    n = min(size, MAX_RENDER_SIZE)
    person = _draw_person(rng if patient is None else patient, n)
    p = _draw_patient(rng, person)
    cue = _FindingCues.draw(finding_rng, wanted, p)
    attenuation = _anatomy(rng, n, p, person, cue)
    if p.leads:
        attenuation += _ecg_leads(p.leads, n)
    if n != size:
        up = Image.fromarray(attenuation).resize((size, size), Image.Resampling.BICUBIC)
        attenuation = np.array(up)
    u, _ = _grid(size)
    if p.grid_amp:
        attenuation += np.float32(p.grid_amp) * np.cos(u * np.float32(2 * math.pi * size / p.grid_period))
    attenuation += rng.standard_normal((size, size), dtype=np.float32) * np.float32(p.noise)
    # Opacities last: they use no rng, and only the pixels of their patches change.
    for op in opacities:
        x0, y0, patch = _opacity_patch(op, size)
        h, w = patch.shape
        attenuation[y0 : y0 + h, x0 : x0 + w] += patch * np.float32(OPACITY_CONTRAST * opacity_contrast)
    image = _tone_map(attenuation, p)
    _burn_markers(image, p.markers)
    return image


def _tone_map(att: np.ndarray, p: _Patient) -> np.ndarray:
    """Window ``[lo, hi]`` and gamma through a 4096-entry lookup table into uint8."""
    levels = 4095
    t = att - np.float32(p.lo)
    t *= np.float32(levels / (p.hi - p.lo))
    np.clip(t, 0, levels, out=t)
    lut = np.rint(255.0 * (np.arange(levels + 1) / levels) ** p.gamma).astype(np.uint8)
    return lut[t.astype(np.uint16)]


@dataclass
class _FindingCues:
    """Geometry changes and extra layers for the rendered non-Pneumonia findings."""

    items: dict[str, tuple[float, ...]]

    @classmethod
    def draw(cls, rng: np.random.Generator, wanted: frozenset[str], p: _Patient) -> _FindingCues:
        items: dict[str, tuple[float, ...]] = {}
        u = rng.uniform
        for name in sorted(wanted):
            side = float(rng.integers(2))
            if name == "Cardiomegaly":
                hcx, hcy, ha, hb, tilt = p.heart
                p.heart = (hcx + u(0.01, 0.03), hcy + u(0.0, 0.02), ha * u(1.25, 1.4), hb * u(1.08, 1.18), tilt)
            elif name == "Emphysema":
                p.dome_h = (p.dome_h[0] * u(0.25, 0.5), p.dome_h[1] * u(0.25, 0.5))
                extra = u(0.02, 0.04)
                p.base = (p.base[0] + extra, p.base[1] + extra)
                p.air *= u(1.1, 1.2)
                p.vessel_amp *= 0.6
                p.heart = (p.heart[0], p.heart[1] + 0.02, p.heart[2] * 0.88, p.heart[3], p.heart[4])
            elif name == "Atelectasis":
                i = int(side)
                lift = u(0.02, 0.045)
                p.base = (p.base[0] - lift * (i == 0), p.base[1] - lift * (i == 1))
                items[name] = (side, u(0.2, 0.28), u(0.52, 0.6), u(0.05, 0.09), u(0.005, 0.009), u(-0.25, 0.25))
            elif name == "Effusion":
                items[name] = (side, u(0.02, 0.12), u(0.06, 0.12))
            elif name == "Pneumothorax":
                items[name] = (side, u(0.03, 0.07))
            elif name == "Nodule":
                count = 1 + int(rng.random() < 0.3)
                spots = []
                for _ in range(count):
                    s = int(rng.integers(2))
                    y = u(0.25, 0.58)
                    m, lat = _canonical_lung_span(s, _to_image_y(y))
                    spots += [float(s), u(m + 0.03, max(lat - 0.03, m + 0.031)), y, u(0.01, 0.02)]
                items[name] = tuple(spots)
            elif name == "Mass":
                y = u(0.25, 0.55)
                m, lat = _canonical_lung_span(int(side), _to_image_y(y))
                items[name] = (side, u(m + 0.05, max(lat - 0.06, m + 0.051)), y, u(0.035, 0.07), u(0, 2 * math.pi))
            elif name == "Pleural_Thickening":
                items[name] = (side, u(0.008, 0.02))
            elif name == "Hernia":
                items[name] = (u(-0.01, 0.05), u(0.045, 0.065))
            elif name == "Edema":
                items[name] = (u(0.06, 0.1),)
        return cls(items)


_POLAR = (256, 64)  # angle × radius samples of the lung-marking noise, per lung


def _anatomy(rng: np.random.Generator, n: int, p: _Patient, person: _Person, cue: _FindingCues) -> np.ndarray:
    """Linear attenuation map (float32, about 0..1) of the patient on an ``n``×``n`` grid.

    The lung markings' noise is the person's (the same vessels and parenchyma on every follow-up); the film mottle is
    this image's, drawn from ``rng``. The geometry is then evaluated in strips of rows small enough (≤ 64 KiB per
    temporary) to keep the many temporaries cache-resident.
    """
    u, v = _grid(n)
    na, nr = _POLAR
    noise = _Noise(
        warp=_upsample(person.warp, (n, n)),
        polar=_upsample(person.polar, (2 * na, nr)),
        mottle=_upsample(person.parenchyma, (n, n)),
        film=_upsample(_coarse_noise(rng, (6, 6)), (n, n)),
    )
    att = np.empty((n, n), np.float32)
    step = max(8, 16384 // n)
    for r0 in range(0, n, step):
        rows = slice(r0, min(n, r0 + step))
        att[rows] = _anatomy_rows(u, v[rows], n, rows, p, cue, noise)
    return att


@dataclass(frozen=True)
class _Noise:
    """The random fields one radiograph uses, drawn before any geometry."""

    warp: np.ndarray
    polar: np.ndarray
    mottle: np.ndarray
    film: np.ndarray


def _anatomy_rows(
    u: np.ndarray, v: np.ndarray, n: int, rows: slice, p: _Patient, cue: _FindingCues, noise: _Noise
) -> np.ndarray:
    """The attenuation of the image rows ``rows`` (``v`` their centres, ``u`` all column centres)."""
    f32 = np.float32
    ew = max(0.006, 1.5 / n)  # width of anti-aliased edges, image fractions
    ca, sa = math.cos(p.rot), math.sin(p.rot)
    du = u - f32(0.5 + p.shift_x)
    dv = v - f32(_PIVOT_IMAGE + p.shift_y)
    X = (du * f32(ca) + dv * f32(sa)) * f32(1.0 / p.scale_x)
    Y = (dv * f32(ca) - du * f32(sa)) * f32(1.0 / (p.scale_y * _STRETCH)) + f32(_PIVOT_ANATOMY)
    px = np.abs(X)
    is_left = X > 0  # the patient's left, image right
    left = is_left.astype(np.float32)

    # Body: neck widening into shoulders, torso whose thickness falls towards the edges, arms at the sides.
    s = f32(1) - np.square(f32(1) - np.clip((Y - f32(p.shoulder_y - 0.12)) * f32(1 / 0.2), 0, 1))
    hw = f32(p.neck_w) + f32(p.torso_w - p.neck_w) * s + f32(0.04) * np.clip(Y - f32(0.25), 0, f32(0.4))
    thick = np.sqrt(np.clip(f32(1) - np.square(px / hw), 0, 1))
    body = _ramp(hw - px, ew)
    arm_c = f32(p.torso_w + 0.075 + p.arm_gap)
    arm_top = np.square(np.clip(f32(p.shoulder_y + 0.02) - Y, 0, None) * f32(1 / 0.1))
    arm = np.clip(f32(1) - np.square((px - arm_c) * f32(1 / 0.07)) - arm_top, 0, 1)
    arm = np.sqrt(arm) * (f32(1.1) - f32(0.5) * np.clip(Y - f32(p.shoulder_y), 0, 1))
    att = f32(p.bg) + f32(p.tissue) * (body * (f32(0.13) + f32(0.36) * thick) + f32(0.12) * arm)

    # Lungs: the upper part of an ellipse, cut medially by the mediastinum and below by the diaphragm dome.
    apex, base, lateral = _pick(left, p.apex), _pick(left, p.base), _pick(left, p.lateral)
    inner = f32(p.medial - 0.07)
    pcx, ax = (lateral + inner) * f32(0.5), (lateral - inner) * f32(0.5)
    pcy = base - f32(0.03)
    ay = pcy - apex
    dy = np.minimum(Y - pcy, 0) / ay
    q = np.square((px - pcx) / ax) + np.square(dy)
    d_ell = (f32(1) - q) * ax * f32(0.5)
    bump = np.clip(f32(1) - np.square((Y - f32(0.29)) * f32(1 / 0.045)), 0, 1)
    medial = f32(p.medial) + f32(0.03) * np.clip((f32(0.24) - Y) * f32(10), 0, 1) + f32(p.knob) * bump * left
    dpx = px - f32(_DOME_C)
    dpx *= f32(1 / _DOME_W[0]) + f32(1 / _DOME_W[1] - 1 / _DOME_W[0]) * (dpx >= 0)
    dome = base - _pick(left, p.dome_h) * (f32(1) - np.square(dpx))
    lung = _ramp(d_ell, ew * 1.5) * _ramp(px - medial, ew) * _ramp(dome - Y, ew)
    depth = (f32(0.5) + f32(0.5) * np.clip(d_ell * f32(1 / 0.06), 0, 1)) * (
        f32(0.7) + f32(0.3) * np.clip((Y - apex) * f32(1 / 0.25), 0, 1)
    )

    # Heart: a tilted ellipse displacing the medial lower lungs (mostly the left).
    hcx, hcy, ha, hb, tilt = p.heart
    hx, hy = X - f32(hcx), Y - f32(hcy)
    ct, st = f32(math.cos(tilt)), f32(math.sin(tilt))
    along = hx * ct + hy * st
    along *= f32(1 / (ha * _HEART_RIGHT)) + f32(1 / ha - 1 / (ha * _HEART_RIGHT)) * (along >= 0)
    qh = np.square(along) + np.square((hy * ct - hx * st) * f32(1 / hb))
    heart = _ramp((f32(1) - qh) * f32(0.5 * hb), 2 * ew)
    air = lung * depth * (f32(1) - f32(0.85) * heart)
    below = _ramp(Y - dome, 0.03)
    att += f32(0.08) * heart * (f32(1) - below) + f32(0.05) * below * body  # heart and upper abdomen density

    # Lung markings: radial vessel streaks fading from the hila, plus parenchymal mottle.
    hil_x = f32(0.09)
    dxh, dyh = px - hil_x, Y - _pick(left, p.hilum_y)
    r = np.sqrt(np.square(dxh) + np.square(dyh))
    warp = noise.warp[rows]
    # Pseudo-angle in [0, 4) (monotone in the true angle, far cheaper than arctan2), slightly warped.
    t = dyh / (np.abs(dxh) + np.abs(dyh) + f32(1e-6))
    ang = t + (dxh < 0) * (f32(2) - f32(2) * t) + f32(0.05) * warp
    na, nr = _POLAR
    polar = noise.polar
    ia = (np.mod(ang, f32(4)) * f32((na - 1) / 4)).astype(np.int32) + is_left * na
    ir = np.minimum(r * f32(nr / 0.5), nr - 1).astype(np.int32)
    streak = polar[ia, ir]
    # Ridges of the noise are radial lines; sharper with distance so they taper, broken up into branch-like segments.
    mottle = noise.mottle[rows]
    vessels = np.exp(-np.square(streak * (f32(1.6) + f32(14) * r))) * np.clip(f32(1) - r * f32(1 / 0.3), 0, 1)
    vessels *= np.clip(r * f32(1 / 0.07), 0, 1) * np.clip(f32(0.45) + f32(0.6) * mottle + f32(0.3) * warp, 0, 1)
    vessels += f32(1.2) * np.exp(-np.square(r * f32(1 / 0.05)))  # hilar vessels
    lung_tex = f32(p.vessel_amp) * vessels + f32(0.012) * mottle

    # Findings that change the lungs before they are composed.
    air, lung_tex, att = _apply_cues(cue, X, Y, px, left, lung, air, lung_tex, att, ew, d_ell, p)
    att += lung * (f32(1) - f32(0.8) * heart) * lung_tex - f32(p.air) * air

    # Gastric bubble under the left hemidiaphragm.
    if p.bubble < 0.65:
        gx, gy = f32(0.17 + 0.04 * p.bubble), f32(p.base[1] - p.dome_h[1] + 0.055)
        qg = np.square((X - gx) * f32(1 / 0.045)) + np.square(np.minimum(Y - gy, 0) * f32(1 / 0.03))
        att -= f32(0.07) * _ramp(f32(1) - qg, 0.5) * _ramp(gy + f32(0.008) - Y, 2 * ew) * _ramp(Y - dome, 2 * ew)

    # Breast shadows: soft-tissue density over the lower lateral lungs with a curved lower border.
    if p.breasts < 0.35:
        qb = np.square((px - f32(0.22)) * f32(1 / 0.2)) + np.square((Y - f32(0.64)) * f32(1 / 0.14))
        att += f32(0.07) * _ramp(f32(1) - qb, 0.25) * body

    # Ribs, clavicles, spine and airways.
    att += _ribs(X, Y, px, d_ell, ew, p) * (f32(1) - f32(0.6) * below) * (f32(1) - f32(0.5) * heart)
    _clavicles(att, X, Y, v, ew, p)
    _spine_and_airways(att, X, Y, u, ew, p)

    # Film: slow exposure drift (heel effect) and mottle.
    att += f32(p.heel) * (v - f32(0.5)) + f32(p.mottle) * noise.film[rows]
    return att


def _apply_cues(
    cue: _FindingCues,
    X: np.ndarray,
    Y: np.ndarray,
    px: np.ndarray,
    left: np.ndarray,
    lung: np.ndarray,
    air: np.ndarray,
    lung_tex: np.ndarray,
    att: np.ndarray,
    ew: float,
    d_ell: np.ndarray,
    p: _Patient,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the cues of the requested findings into the lung air, lung texture and attenuation maps."""
    f32 = np.float32
    for name, par in cue.items.items():
        if name == "Effusion":  # homogeneous basal opacity whose upper edge (meniscus) rises laterally
            side = left if par[0] else f32(1) - left
            level = f32(p.base[int(par[0])] - p.dome_h[int(par[0])] - par[1] + 0.03)
            meniscus = level - f32(par[2]) * np.square(np.clip((px - f32(p.medial)) * f32(1 / 0.3), 0, 1.3))
            fluid = _ramp(Y - meniscus, 0.04) * side
            air = air * (f32(1) - f32(0.9) * fluid)
            lung_tex = lung_tex * (f32(1) - fluid)
            att = att + f32(0.03) * fluid * lung
        elif name == "Pneumothorax":  # collapsed lung edge (thin pleural line), no markings peripheral to it
            side = (left if par[0] else f32(1) - left) * _ramp(px - f32(0.13), 0.06)  # lateral and apical only
            gap = f32(par[1])  # width of the air rim between the chest wall and the collapsed lung's edge
            outside = _ramp(gap - d_ell, ew) * lung * side
            lung_tex = lung_tex * (f32(1) - outside)
            air = air + f32(0.3) * outside
            line = np.clip(f32(1) - np.abs(d_ell - gap) * f32(1 / max(ew, 0.004)), 0, 1)
            att = att + f32(0.09) * line * lung * side
        elif name == "Atelectasis":  # plate-like linear band in a lower zone
            side, bx, by, half_len, th, slope = par
            sx = X - f32(bx if side else -bx)
            d = np.abs(Y - f32(by) - f32(slope) * sx)
            plate = _ramp(f32(th) - d, ew) * _ramp(f32(half_len) - np.abs(sx), 0.03) * lung
            att = att + f32(0.16) * plate
        elif name in ("Nodule", "Mass"):
            step = 4 if name == "Nodule" else 5
            for i in range(0, len(par), step):
                side, bx, by, rad = par[i : i + 4]
                cx = f32(bx if side else -bx)
                d2 = np.square(X - cx) + np.square(Y - f32(by))
                spot = _ramp(f32(rad * rad) - d2, 2 * rad * ew)
                if name == "Mass":  # lobulated: two satellite lobes
                    ang = par[i + 4]
                    for k in (0, 1):
                        ox = f32(0.6 * rad * math.cos(ang + 2.2 * k))
                        oy = f32(0.6 * rad * math.sin(ang + 2.2 * k))
                        d2 = np.square(X - cx - ox) + np.square(Y - f32(by) - oy)
                        spot = np.maximum(spot, _ramp(f32(0.45 * rad * rad) - d2, 2 * rad * ew))
                att = att + f32(0.22 if name == "Nodule" else 0.26) * spot
        elif name == "Pleural_Thickening":  # a bright rind along the lateral and apical lung border
            side = left if par[0] else f32(1) - left
            rind = _ramp(f32(par[1]) - d_ell, ew) * lung * side
            air = air * (f32(1) - f32(0.8) * rind)
        elif name == "Hernia":  # hiatal hernia: round retrocardiac density with an air-fluid level
            hx, rad = par
            cy = f32(p.base[1] - p.dome_h[1] - 0.05)
            d2 = np.square(X - f32(hx)) + np.square(Y - cy)
            ball = _ramp(f32(rad * rad) - d2, 2 * rad * ew)
            gas = _ramp(f32(0.8 * rad * rad) - d2, 2 * rad * ew) * _ramp(cy - Y, ew)
            att = att + f32(0.1) * ball - f32(0.2) * gas
        elif name == "Edema":  # bilateral perihilar (bat-wing) haze
            r2 = np.square(px - f32(0.1)) + np.square(Y - f32(0.42))
            air = air * (f32(1) - f32(par[0] * 4) * np.exp(-r2 * f32(1 / 0.012)) * lung)
    return air, lung_tex, att


def _ribs(X: np.ndarray, Y: np.ndarray, px: np.ndarray, d_ell: np.ndarray, ew: float, p: _Patient) -> np.ndarray:
    """Posterior ribs (curved bright bands with brighter cortices) and faint anterior ribs, both sides at once."""
    f32 = np.float32
    # Posterior ribs: all share one arch shape; the band index is the floor of a phase that grows downwards.
    arch = f32(p.rib_a1) * px + f32(p.rib_a2) * np.square(px)
    z = (Y - arch - f32(p.rib_y0)) * f32(1 / p.rib_sp)
    phase = z - f32(p.rib_k) * np.square(np.maximum(z, 0))
    frac = phase - np.floor(phase)
    e = ew / p.rib_sp
    rib = _ramp(frac - f32(e / 2), e) * _ramp(f32(p.rib_w - e / 2) - frac, e)
    cortex = f32(0.6) + f32(0.4) * np.square(np.square(frac * f32(2 / p.rib_w) - f32(1)))
    cage = _ramp(phase + f32(0.3), 0.6) * _ramp(f32(10) - phase, 0.3)
    extent = np.clip((px - f32(0.03)) * f32(1 / 0.09), 0, 1) * _ramp(d_ell + f32(0.012), 0.025)
    out = f32(p.rib_amp) * rib * cortex * cage * extent
    # Anterior ribs: fainter, wider bands running down towards the midline, fading before the sternum.
    za = (Y - f32(p.arib_y0) - f32(0.5) * (f32(0.36) - px) + f32(0.9) * np.square(f32(0.36) - px)) * f32(1 / p.arib_sp)
    fa = za - np.floor(za)
    ea = ew / p.arib_sp
    arib = _ramp(fa - f32(ea / 2), ea) * _ramp(f32(0.42) - fa, ea)
    aextent = _ramp(px - f32(0.12), 0.08) * _ramp(d_ell, 0.03) * _ramp(f32(6) - za, 0.5) * _ramp(za, 0.5)
    out += f32(p.arib_amp) * arib * aextent
    return out


def _clavicles(att: np.ndarray, X: np.ndarray, Y: np.ndarray, v: np.ndarray, ew: float, p: _Patient) -> None:
    """Add both clavicles (S-curved bands rising laterally) to ``att`` in place, on the rows that can hold them."""
    f32 = np.float32
    rows = np.flatnonzero((v[:, 0] > 0.0) & (v[:, 0] < 0.34))
    if rows.size == 0:
        return
    sl = slice(int(rows[0]), int(rows[-1]) + 1)
    x, y = X[sl], Y[sl]
    px = np.abs(x)
    centre = f32(p.clav_y) - f32(p.clav_slope) * px + f32(1.1) * np.square(px - f32(0.15)) - f32(0.012)
    half = f32(0.011) + f32(0.004) * np.clip((f32(0.1) - px) * f32(20), 0, 1)  # thicker medial head
    d = np.abs(y - centre)
    band = _ramp(half - d, ew) * _ramp(px - f32(0.04), 0.02) * _ramp(f32(0.3) - px, 0.04)
    cortex = f32(0.7) + f32(0.3) * np.clip(d / half, 0, 1)
    att[sl] += f32(p.clav_amp) * band * cortex


def _spine_and_airways(att: np.ndarray, X: np.ndarray, Y: np.ndarray, u: np.ndarray, ew: float, p: _Patient) -> None:
    """Add the spine (vertebral bodies, disc spaces, pedicles) and the dark trachea and main bronchi, in place."""
    f32 = np.float32
    cols = np.flatnonzero(np.abs(u[0] - f32(0.5 + p.shift_x)) < 0.12)
    if cols.size == 0:
        return
    sl = (slice(None), slice(int(cols[0]), int(cols[-1]) + 1))
    x, y = X[sl], Y[sl]
    ax_ = np.abs(x)
    w = f32(p.spine_w)
    column = _ramp(w - ax_, max(2.5 * ew, 0.01))
    ph = (y - f32(0.0)) * f32(1 / p.vert_period) + f32(p.vert_phase)
    fr = ph - np.floor(ph)
    e = ew / p.vert_period
    vbody = _ramp(fr - f32(0.12), e) * _ramp(f32(0.9) - fr, e)
    ped = np.clip(
        f32(1) - np.square((ax_ - w * f32(0.72)) * f32(1 / (0.22 * p.spine_w))) - np.square((fr - f32(0.4)) * f32(4)),
        0,
        1,
    )
    spine = column * (f32(0.8) + f32(0.2) * vbody) + f32(0.35) * np.sqrt(ped)
    att[sl] += f32(p.spine_amp) * spine
    # Trachea down to the carina, then the two main bronchi (the right one steeper).
    carina = f32(0.31)
    tw = f32(0.014)
    trachea = _ramp(tw - np.abs(x - f32(0.004)), ew) * _ramp(carina - y, 0.02) * _ramp(y - f32(0.02), 0.05)
    bronchi = np.zeros_like(x)
    for ex, ey in ((-0.075, 0.385), (0.085, 0.4)):
        dx_, dy_ = f32(ex), f32(ey - 0.31)
        t = np.clip(((x - f32(0.004)) * dx_ + (y - carina) * dy_) * f32(1 / (ex * ex + (ey - 0.31) ** 2)), 0, 1)
        dist = np.sqrt(np.square(x - f32(0.004) - t * dx_) + np.square(y - carina - t * dy_))
        bronchi = np.maximum(bronchi, _ramp(f32(0.009) - dist, ew) * (f32(1) - f32(0.7) * t))
    att[sl] -= f32(0.08) * np.maximum(trachea, bronchi)


def _plan_leads(rng: np.random.Generator) -> tuple[_Lead, ...]:
    """Two to four ECG leads: where each electrode sits on the chest and where its cable runs off the image."""
    leads = []
    for _ in range(int(rng.integers(2, 5))):
        ex, ey = rng.uniform(0.22, 0.78), rng.uniform(0.2, 0.62)
        tx = float(rng.choice([rng.uniform(-0.05, 0.15), rng.uniform(0.85, 1.05)]))
        ty = rng.uniform(-0.05, 0.4)
        mx, my = 0.5 * (ex + tx) + rng.uniform(-0.15, 0.15), 0.5 * (ey + ty) + rng.uniform(-0.15, 0.15)
        leads.append((float(ex), float(ey), tx, float(ty), float(mx), float(my), float(rng.uniform(0.014, 0.02))))
    return tuple(leads)


def _ecg_leads(leads: Sequence[_Lead], n: int) -> np.ndarray:
    """Thin bright wires curving off the chest to round electrodes, drawn 2× supersampled, as attenuation."""
    big = 2 * n
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(big * 0.004))
    for ex, ey, tx, ty, mx, my, radius in leads:
        t = np.linspace(0.0, 1.0, 40)
        bx = (1 - t) ** 2 * ex + 2 * (1 - t) * t * mx + t**2 * tx
        by = (1 - t) ** 2 * ey + 2 * (1 - t) * t * my + t**2 * ty
        draw.line(list(zip((bx * big).tolist(), (by * big).tolist(), strict=True)), fill=200, width=width)
        rad = big * radius
        cx, cy = ex * big, ey * big
        draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), outline=255, width=max(2, round(rad * 0.3)))
        draw.ellipse((cx - rad * 0.35, cy - rad * 0.35, cx + rad * 0.35, cy + rad * 0.35), fill=255)
    small = np.asarray(canvas.reduce(2), dtype=np.float32)
    return small * np.float32(0.55 / 255.0)


# 5×7 block glyphs for burned-in labels.
_GLYPHS = {
    "A": ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),
    "B": ("11110", "10001", "10001", "11110", "10001", "10001", "11110"),
    "C": ("01111", "10000", "10000", "10000", "10000", "10000", "01111"),
    "E": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "I": ("11111", "00100", "00100", "00100", "00100", "00100", "11111"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "N": ("10001", "11001", "10101", "10011", "10001", "10001", "10001"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    "P": ("11110", "10001", "10001", "11110", "10000", "10000", "10000"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "S": ("01111", "10000", "10000", "01110", "00001", "00001", "11110"),
    "T": ("11111", "00100", "00100", "00100", "00100", "00100", "00100"),
    "U": ("10001", "10001", "10001", "10001", "10001", "10001", "01110"),
    " ": ("00000",) * 7,
}
_LABELS = ("PA", "AP", "ERECT", "PORTABLE", "SUPINE", "PA ERECT", "AP PORTABLE", "AP SUPINE")


def _text_bitmap(text: str) -> np.ndarray:
    cols = []
    for ch in text:
        cols.append(np.array([[c == "1" for c in row] for row in _GLYPHS[ch]], dtype=bool))
        cols.append(np.zeros((7, 1), dtype=bool))
    return np.concatenate(cols[:-1], axis=1)


def _plan_markers(rng: np.random.Generator, side_marker: bool, label: bool) -> tuple[_Marker, ...]:
    """A hospital's burned-in text: (text, x, y, glyph-cell size as image fraction, grey level, framed)."""
    plan: list[_Marker] = []
    if side_marker:
        letter = "R" if rng.random() < 0.6 else "L"
        x = rng.uniform(0.03, 0.14) if letter == "R" else rng.uniform(0.84, 0.93)
        plan.append((letter, x, rng.uniform(0.03, 0.2), rng.uniform(0.006, 0.01), int(rng.integers(220, 256)), True))
    if label:
        text = _LABELS[int(rng.integers(len(_LABELS)))]
        cell = rng.uniform(0.004, 0.007)
        width = (6 * len(text) - 1) * cell
        x = rng.uniform(0.02, 0.1) if rng.random() < 0.5 else rng.uniform(0.9 - width, 0.97 - width)
        y = rng.uniform(0.02, 0.06) if rng.random() < 0.7 else rng.uniform(0.9, 0.94)
        plan.append((text, x, y, cell, int(rng.integers(200, 256)), bool(rng.random() < 0.3)))
    return tuple(plan)


def _burn_markers(image: np.ndarray, plan: Sequence[_Marker]) -> None:
    """Draw the planned text as bright blocky glyphs (optionally inside a bright frame), in place."""
    size = image.shape[0]
    for text, fx, fy, fcell, level, framed in plan:
        cell = max(1, round(fcell * size))
        bitmap = np.kron(_text_bitmap(text), np.ones((cell, cell), dtype=bool))
        if framed:
            pad = 2 * cell
            h, w = bitmap.shape
            framed_bitmap = np.zeros((h + 2 * pad, w + 2 * pad), dtype=bool)
            framed_bitmap[pad : pad + h, pad : pad + w] = bitmap
            t = max(1, cell // 2)
            framed_bitmap[:t], framed_bitmap[-t:], framed_bitmap[:, :t], framed_bitmap[:, -t:] = True, True, True, True
            bitmap = framed_bitmap
        x0, y0 = round(fx * size), round(fy * size)
        h, w = bitmap.shape
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
        if xb <= xa or yb <= ya:
            continue
        region = image[ya:yb, xa:xb]
        sub = bitmap[ya - y0 : yb - y0, xa - x0 : xb - x0]
        region[sub] = np.maximum(region[sub], level)
