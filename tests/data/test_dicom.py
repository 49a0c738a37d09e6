"""DICOM radiographs to 8-bit gray: hand-computed pixels, pydicom's own functions as the oracle, hostile files, and a
cache from a folder of DICOM files (files generated here with pydicom, 2 × 7 to 24 × 24 pixels)."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from cxrexplain.data import dicom
from cxrexplain.data.sample import INDEX_COLUMNS, load_cache, robust_gray8, to_gray8
from cxrexplain.errors import CxrError
from dicomfiles import compress_dicom, make_dicom


def gray(data: bytes) -> np.ndarray:
    return dicom.dicom_gray8(dicom.read_dataset(data, "x.dcm"), "x.dcm")


def pydicom_gray(data: bytes, y_min: float, y_max: float) -> np.ndarray:
    """The oracle: pydicom's modality and VOI functions, then the display range [y_min, y_max] onto 0..255."""
    ds = pydicom.dcmread(io.BytesIO(data))
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    g = np.rint(np.clip((shown - y_min) / (y_max - y_min), 0, 1) * 255).astype(np.uint8)
    return 255 - g if ds.PhotometricInterpretation == "MONOCHROME1" else g


# LINEAR window (PS3.3 C.11.2.1.2.1), centre 2048, width 1024, on 12 bits: x <= 1536 -> 0, x > 2559 -> 255, between
# g = round(((x - 2047.5) / 1023 + 0.5) * 255): 1537 -> 0.25 -> 0; 1800 -> 65.81 -> 66; 2048 -> 127.62 -> 128
WINDOW_12 = np.array([[1000, 1536, 1537, 1800, 2048, 2559, 2560, 4095]], dtype=np.uint16)
WINDOW_12_GRAY = np.array([[0, 0, 0, 66, 128, 255, 255, 255]], dtype=np.uint8)


def test_window_on_12_bits_in_16_matches_the_hand_computed_values_and_drops_the_high_bits():
    garbage = WINDOW_12 | np.uint16(0xA000)  # bits 13-16 set: overlays or noise, not part of the 12-bit value
    data = make_dicom(WINDOW_12, raw=garbage, WindowCenter=2048, WindowWidth=1024)
    np.testing.assert_array_equal(gray(data), WINDOW_12_GRAY)
    np.testing.assert_array_equal(gray(data), pydicom_gray(data, 0, 4095))


def test_monochrome1_is_inverted_after_the_window():
    data = make_dicom(WINDOW_12, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=1024)
    np.testing.assert_array_equal(gray(data), 255 - WINDOW_12_GRAY)
    np.testing.assert_array_equal(gray(data), pydicom_gray(data, 0, 4095))


def test_signed_16_bits_with_rescale_then_window():
    # modality value = 2 x stored - 1000; window centre 0, width 2000 (LINEAR): m <= -1000 -> 0, m > 999 -> 255,
    # between g = round(((m + 0.5) / 1999 + 0.5) * 255): -200 -> 102.05 -> 102; 0 -> 127.56 -> 128; 200 -> 153.08 -> 153
    stored = np.array([[-32768, 0, 400, 500, 600, 1000, 32767]], dtype=np.int16)
    data = make_dicom(
        stored,
        bits_stored=16,
        signed=True,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=0,
        WindowWidth=2000,
    )
    np.testing.assert_array_equal(gray(data), [[0, 0, 102, 128, 153, 255, 255]])
    # pydicom's y_min and y_max for signed 16 bits after the rescale
    np.testing.assert_array_equal(gray(data), pydicom_gray(data, -32768 * 2 - 1000, 32767 * 2 - 1000))


def test_multi_valued_window_uses_the_first_view():
    first = make_dicom(WINDOW_12, WindowCenter=[2048, 1000], WindowWidth=[1024, 500])
    np.testing.assert_array_equal(gray(first), WINDOW_12_GRAY)
    second = gray(make_dicom(WINDOW_12, WindowCenter=1000, WindowWidth=500))
    assert not np.array_equal(gray(first), second)


def voi_lut(descriptor, data) -> Sequence:
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUT Descriptor
    item.add_new(0x00283006, "OW", np.asarray(data, dtype="<u2").tobytes())  # LUT Data, as scanners write it
    return Sequence([item])


def test_voi_lut_sequence_is_preferred_to_the_window_and_spans_its_own_entries():
    # LUT of 4 entries from stored value 100 (declared 16 bits, entries up to 4000): below 100 the first entry, above
    # 103 the last; its entries 0..4000 become 0..255: 1000 -> 63.75 -> 64, 3000 -> 191.25 -> 191
    pixels = np.array([[50, 100, 101, 102, 103, 500]], dtype=np.uint16)
    data = make_dicom(
        pixels,
        VOILUTSequence=voi_lut([4, 100, 16], [0, 1000, 3000, 4000]),
        WindowCenter=2048,
        WindowWidth=1024,
        RescaleSlope=1,  # float modality values: the LUT is still indexed by whole numbers, without a warning
        RescaleIntercept=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(gray(data), [[0, 0, 64, 191, 255, 255]])
    with pytest.warns(UserWarning, match="VOI LUT on a float input"):  # pydicom's own path truncates: the same values
        np.testing.assert_array_equal(gray(data), pydicom_gray(data, 0, 4000))


def test_without_window_the_modality_values_are_windowed_like_a_16_bit_png():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4096, size=(24, 24), dtype=np.uint16)
    data = make_dicom(values)
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buffer, format="PNG")
    np.testing.assert_array_equal(gray(data), to_gray8(buffer.getvalue(), 24)[0])
    np.testing.assert_array_equal(gray(data), robust_gray8(values))


def test_random_windows_agree_with_pydicom():
    rng = np.random.default_rng(1)
    for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        for _ in range(5):
            values = rng.integers(0, 4096, size=(8, 8), dtype=np.uint16)
            centre, width = float(rng.uniform(500, 3500)), float(rng.uniform(2, 3000))
            data = make_dicom(values, WindowCenter=centre, WindowWidth=width, VOILUTFunction=function)
            np.testing.assert_array_equal(gray(data), pydicom_gray(data, 0, 4095))


def test_decode_dicom_resizes_like_every_other_image_and_reports_the_size():
    values = np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) * 16
    data = make_dicom(values, WindowCenter=2048, WindowWidth=4096)
    out, size = dicom.decode_dicom(data, 8, "x.dcm")
    assert out.shape == (8, 8) and out.dtype == np.uint8 and size == (20, 12)
    expected = Image.fromarray(gray(data)).resize((8, 8), Image.Resampling.BILINEAR, reducing_gap=2.0)
    np.testing.assert_array_equal(out, np.asarray(expected))


# ----------------------------------------------------------------------------------------------------------------------
# Float pixels, padding, Presentation LUT Shape (pydicom has no function for the last two: hand-computed values)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_pixels_are_windowed_like_integers(dtype):
    # LINEAR, centre 0, width 2: x <= -1 -> 0, x > 0 -> 255, between g = round(((x + 0.5) / 1 + 0.5) * 255):
    # -0.75 -> 63.75 -> 64; -0.25 -> 191.25 -> 191; 0 -> 255. Padding 3.0 (the value alone) -> 0 instead of 255
    values = np.array([[-1.5, -1.0, -0.75, -0.25, 0.0, 3.0, 7.0]], dtype=dtype)
    padding = "FloatPixelPaddingValue" if dtype == np.float32 else "DoubleFloatPixelPaddingValue"
    data = make_dicom(values, WindowCenter=0, WindowWidth=2, **{padding: 3.0})
    assert dicom.read_dataset(data, "x.dcm").BitsAllocated == 8 * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(gray(data), [[0, 0, 64, 191, 255, 0, 255]])


def test_float_pixels_of_whole_numbers_give_the_integer_files_gray():
    """The 16-bit stand-in range of a float file's window cancels: the same gray as the 12-bit file with the same
    values, which pydicom's functions give (the oracle), on random windows of the three VOI LUT functions."""
    rng = np.random.default_rng(3)
    for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        values = rng.integers(0, 4096, size=(8, 8), dtype=np.uint16)
        window = {"WindowCenter": float(rng.uniform(500, 3500)), "WindowWidth": float(rng.uniform(2, 3000))}
        integer = make_dicom(values, VOILUTFunction=function, **window)
        floating = make_dicom(values.astype(np.float32), VOILUTFunction=function, **window)
        np.testing.assert_array_equal(gray(floating), pydicom_gray(integer, 0, 4095))
    floating = make_dicom(values.astype(np.float64))
    np.testing.assert_array_equal(gray(floating), robust_gray8(values))


def test_padding_pixels_are_black_after_the_window_and_the_inversion():
    # MONOCHROME1 of WINDOW_12: 255 - [0, 0, 0, 66, 128, 255, 255, 255]; padding 1000 (shown 255) comes out 0
    data = make_dicom(WINDOW_12, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=1024, PixelPaddingValue=1000)
    np.testing.assert_array_equal(gray(data), [[0, 255, 255, 189, 127, 0, 0, 0]])
    # a range, limit below the value (PS3.3 allows either order): 1000, 1536 and 1537 are padding, 1800 is not
    data = make_dicom(
        WINDOW_12, WindowCenter=2048, WindowWidth=1024, PixelPaddingValue=1537, PixelPaddingRangeLimit=1000
    )
    np.testing.assert_array_equal(gray(data), [[0, 0, 0, 66, 128, 255, 255, 255]])
    data = make_dicom(
        WINDOW_12, WindowCenter=2048, WindowWidth=1024, PixelPaddingValue=4095, PixelPaddingRangeLimit=2559
    )
    np.testing.assert_array_equal(gray(data), [[0, 0, 0, 66, 128, 0, 0, 0]])


def test_padding_takes_no_part_in_the_percentile_window():
    """Half the image is padding at 0: the window is the other half's 0.5th to 99.5th percentile (here 1000 to 2000
    but for the interpolation of np.percentile), not 0 to 2000 as it would be with the padding counted."""
    anatomy = np.linspace(1000, 2000, 50).round().astype(np.uint16).reshape(5, 10)
    values = np.vstack([np.zeros((5, 10), dtype=np.uint16), anatomy])
    data = make_dicom(values, PixelPaddingValue=0)
    out = gray(data)
    np.testing.assert_array_equal(out[:5], 0)
    np.testing.assert_array_equal(out[5:], robust_gray8(anatomy))
    assert out[5:].min() == 0 and out[5:].max() == 255
    # counted, the padding makes the window 0 to about 1990 (99.5th percentile), and 1000 mid-gray: 128.1 -> 128
    assert gray(make_dicom(values))[5, 0] == 128


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted", "warned"),
    [
        ("MONOCHROME2", None, False, False),
        ("MONOCHROME2", "IDENTITY", False, False),
        ("MONOCHROME1", None, True, False),
        ("MONOCHROME1", "INVERSE", True, False),  # the DX pairing: one inversion, not two
        ("MONOCHROME2", "INVERSE", True, True),
        ("MONOCHROME1", "IDENTITY", False, True),
    ],
)
def test_presentation_lut_shape_decides_the_inversion(photometric, shape, inverted, warned, caplog):
    extra = {} if shape is None else {"PresentationLUTShape": shape}
    data = make_dicom(WINDOW_12, photometric=photometric, WindowCenter=2048, WindowWidth=1024, **extra)
    expected = 255 - WINDOW_12_GRAY if inverted else WINDOW_12_GRAY
    with caplog.at_level("WARNING", logger="cxrexplain.dicom"):
        np.testing.assert_array_equal(gray(data), expected)
    assert any("the shape decides" in r.getMessage() for r in caplog.records) == warned


# ----------------------------------------------------------------------------------------------------------------------
# Compressed transfer syntaxes: each one decoded to the stored values (lossless: pydicom's result is the input itself)


@pytest.mark.parametrize(
    ("syntax", "photometric", "signed"),
    [
        (RLELossless, "MONOCHROME2", False),
        (RLELossless, "MONOCHROME1", True),
        (JPEGLSLossless, "MONOCHROME2", False),
        (JPEG2000Lossless, "MONOCHROME1", False),
        (JPEG2000Lossless, "MONOCHROME2", True),
        (JPEGLossless, "MONOCHROME2", False),
        (JPEGLosslessSV1, "MONOCHROME1", False),
    ],
)
def test_compressed_files_give_the_pixels_of_their_uncompressed_twin(syntax, photometric, signed):
    """RLE, JPEG-LS and JPEG 2000 encoded by pydicom (its own RLE encoder, pyjpegls, pylibjpeg-openjpeg), JPEG Lossless
    by GDCM (pydicom has no encoder for it); 12-bit random values at 32 × 40 (OpenJPEG needs at least 32 × 32)."""
    rng = np.random.default_rng(7)
    values = rng.integers(-2048 if signed else 0, 2048 if signed else 4096, size=(32, 40)).astype(np.int16)
    centre = 0 if signed else 2048
    plain = make_dicom(values, signed=signed, photometric=photometric, WindowCenter=centre, WindowWidth=3000)
    packed = compress_dicom(plain, syntax)
    ds = dicom.read_dataset(packed, "x.dcm")
    assert ds.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(ds.pixel_array, values)
    lo, hi = (-2048, 2047) if signed else (0, 4095)
    np.testing.assert_array_equal(gray(packed), gray(plain))
    np.testing.assert_array_equal(gray(packed), pydicom_gray(packed, lo, hi))


def test_a_syntax_without_installed_decoder_names_the_packages(tmp_path, monkeypatch):
    """Every image syntax pydicom can decode has a decoder among the dependencies: a machine without GDCM (JPEG
    Lossless' only one here) is simulated by emptying the decoder's list of available plugins."""
    path = tmp_path / "lossless.dcm"
    path.write_bytes(compress_dicom(make_dicom(WINDOW_12), JPEGLosslessSV1))
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})
    with pytest.raises(
        CxrError,
        match=r"lossless.dcm: compressed with JPEG Lossless.* no decoder for it is installed \(pylibjpeg.*reinstall",
    ):
        dicom.decode_dicom(dicom.read_file(path), 32, path)


# ----------------------------------------------------------------------------------------------------------------------
# Hostile files


def compressed_with(syntax: str) -> bytes:
    """A file that claims ``syntax`` but whose one fragment is no JPEG stream."""
    ds = pydicom.dcmread(io.BytesIO(make_dicom(WINDOW_12)))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8 not a real JPEG \xff\xd9"])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def unknown_syntax() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(WINDOW_12)))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"  # a private UID, no transfer syntax pydicom knows
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def hostile_files() -> dict[str, tuple[bytes, str]]:
    good = make_dicom(WINDOW_12, WindowCenter=2048, WindowWidth=1024)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    colour = make_dicom(rgb, bits_stored=8, bits_allocated=8, photometric="RGB", samples=3)
    frames = make_dicom(np.zeros((2, 2, 4), dtype=np.uint16), NumberOfFrames=2)
    return {
        "text.dcm": (b"I am a PNG, honestly" * 20, r"not a DICOM file"),
        "cut-pixels.dcm": (good[:-5], r"pixel data unreadable \(Explicit VR Little Endian; .*less than expected"),
        "cut-header.dcm": (good[:200], r"no pixel data \(truncated, or not an image\)"),
        "jpeg.dcm": (compressed_with(JPEGLosslessSV1), r"pixel data unreadable \(JPEG Lossless.*gdcm"),
        "j2k-mc.dcm": (
            compressed_with(JPEG2000MCLossless),
            r"compressed with JPEG 2000 Part 2 .*pydicom cannot decode",
        ),
        "frames.dcm": (frames, r"2 frames; one radiograph per file"),
        "private.dcm": (unknown_syntax(), r"invalid DICOM header \(ValueError: UID is not a transfer syntax"),
        "colour.dcm": (colour, r"a colour image \(RGB, 3 samples per pixel\)"),
        "narrow.dcm": (
            make_dicom(WINDOW_12, WindowCenter=2048, WindowWidth=0),
            r"modality or VOI attributes unusable \(ValueError: The \(0028,1051\) Window Width must be",
        ),
    }


@pytest.mark.parametrize("name", list(hostile_files()))
def test_hostile_files_are_one_clear_error_naming_the_file(tmp_path, name, caplog):
    data, message = hostile_files()[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CxrError, match=rf"{name}: {message}"):
        dicom.decode_dicom(dicom.read_file(path), 32, path)
    assert not [r for r in caplog.records if r.exc_info], "a decoder's traceback reached the log"


def test_a_huge_file_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "huge.dcm"
    path.write_bytes(b"\0" * 2048)
    monkeypatch.setattr(dicom, "MAX_DICOM_BYTES", 1024)
    with pytest.raises(CxrError, match=r"huge.dcm: 2,048 bytes, more than the 1,024 a radiograph needs: not read"):
        dicom.read_file(path)
    with pytest.raises(CxrError, match=r"absent.dcm: image not found"):
        dicom.read_file(tmp_path / "absent.dcm")


# ----------------------------------------------------------------------------------------------------------------------
# A cache from a folder of DICOM files


@pytest.fixture
def folder(tmp_path):
    """Five radiographs (16 wide, 8 high), one truncated, one listed outside the folder, and their labels and boxes."""
    rng = np.random.default_rng(2)
    root = tmp_path / "dicom"
    (root / "sub").mkdir(parents=True)
    files = {}
    for i, (name, photometric) in enumerate(
        [
            ("a.dcm", "MONOCHROME2"),
            ("sub/b.dcm", "MONOCHROME2"),
            ("c.dcm", "MONOCHROME1"),
            ("d.dcm", "MONOCHROME2"),
            ("e.dcm", "MONOCHROME2"),
        ]
    ):
        values = rng.integers(0, 4096, size=(8, 16), dtype=np.uint16)
        files[name] = make_dicom(
            values, photometric=photometric, PatientID=f"dicom-{i // 2}", WindowCenter=2048, WindowWidth=4096
        )
        (root / name).write_bytes(files[name])
    (root / "broken.dcm").write_bytes(files["a.dcm"][:-7])
    (tmp_path / "outside.dcm").write_bytes(files["a.dcm"])
    labels = pd.DataFrame(
        {
            "file": ["a.dcm", "sub/b.dcm", "c.dcm", "d.dcm", "e.dcm", "broken.dcm", "../outside.dcm"],
            "label": ["Pneumonia", "0", "1", "No Finding", "1", "1", "0"],
            "patient": ["p1", "", "p2", "p2", "", "p3", "p4"],
        }
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    pd.DataFrame(
        {"file": ["a.dcm", "a.dcm", "d.dcm"], "x": [2, 14, 1], "y": [1, 6, 1], "w": [4, 4, 2], "h": [2, 4, 2]}
    ).to_csv(tmp_path / "boxes.csv", index=False)
    return root, files


def test_a_folder_becomes_the_cache_format_with_skipped_files_listed(folder, tmp_path):
    root, files = folder
    out = tmp_path / "cache"
    out.mkdir()
    result = dicom.sample_from_dicom(
        root, tmp_path / "labels.csv", tmp_path / "boxes.csv", out, image_size=32, max_skipped=0.5, show_progress=False
    )
    images, index = load_cache(out)
    assert list(index.columns) == list(INDEX_COLUMNS) and list(index["row"]) == [0, 1, 2, 3, 4]
    assert list(index["image"]) == ["a.dcm", "sub/b.dcm", "c.dcm", "d.dcm", "e.dcm"]
    assert list(index["label"]) == [1, 0, 1, 0, 1] and list(index["labels"])[:2] == ["Pneumonia", "No Finding"]
    # the labels' patient when given, else the DICOM PatientID
    assert list(index["patient"]) == ["p1", "dicom-0", "p2", "p2", "dicom-2"]
    assert set(index["width"]) == {16} and set(index["height"]) == {8}
    for row, name in enumerate(index["image"]):
        np.testing.assert_array_equal(images[row], dicom.decode_dicom(files[name], 32, name)[0])
    # boxes in DICOM pixels scaled by 32/16 and 32/8; the second one clipped to the image; d.dcm is No Finding
    assert json.loads(index["boxes"][0]) == [[4.0, 4.0, 8.0, 8.0], [28.0, 24.0, 4.0, 8.0]]
    assert index["boxes"][1:].tolist() == ["[]"] * 4
    assert (result.cache.boxes.kept, result.cache.boxes.clipped) == (1, 1)
    rejects = pd.read_csv(out / "rejects.csv")
    assert list(rejects["image"]) == ["../outside.dcm", "broken.dcm"]
    assert rejects["reason"][0] == f"outside {root}"
    assert rejects["reason"][1].startswith("pixel data unreadable (Explicit VR Little Endian; ValueError")
    metrics = result.metrics(32, root, tmp_path / "labels.csv")
    assert metrics["source"] == "dicom" and metrics["listed"] == 7 and metrics["rejected"] == 2
    assert metrics["cached"] == {"images": 5, "pneumonia": 3, "negative": 2, "patients": 4, "pneumonia_with_boxes": 1}


def test_too_many_skipped_files_fail_naming_them(folder, tmp_path):
    root, _ = folder
    out = tmp_path / "cache"
    out.mkdir()
    with pytest.raises(
        CxrError,
        match=r"dicom: 2 of the 7 listed DICOM files cannot be cached \(28.6%; at most 1.0% may be skipped, "
        r"--max-skipped\), e.g. broken.dcm: pixel data unreadable .*; \.\./outside.dcm: outside ",
    ):
        dicom.sample_from_dicom(root, tmp_path / "labels.csv", None, out, image_size=32, show_progress=False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na.dcm,maybe\n", r"line 2: label 'maybe', expected 1, 0, Pneumonia or No Finding"),
        ("file,label\na.dcm,1\na.dcm,0\n", r"a.dcm is listed twice"),
        ("name,label\na.dcm,1\n", r"lacks column\(s\) file \(has name, label\)"),
        ("file,label\n", r"no image listed"),
    ],
)
def test_a_bad_labels_file_is_refused_naming_the_line(tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(CxrError, match=rf"labels.csv: {message}"):
        dicom.read_labels(tmp_path / "labels.csv")
