"""DICOM radiographs to 8-bit gray: hand-computed pixels, pydicom's own functions as the oracle, hostile files, and a
cache from a folder of DICOM files (files generated here with pydicom, 2 × 7 to 24 × 24 pixels)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, SecondaryCaptureImageStorage, generate_uid

from cxrexplain.data import dicom
from cxrexplain.data.sample import robust_gray8, to_gray8
from cxrexplain.errors import CxrError


def make_dicom(
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    bits_allocated: int = 16,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    raw: np.ndarray | None = None,
    samples: int = 1,
    **attributes,
) -> bytes:
    """A DICOM Part 10 file of one grayscale frame; ``raw``: the stored words as given (garbage in high bits)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if samples > 1 else pixels.shape[-2:]
    ds.SamplesPerPixel = samples
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    words = raw if raw is not None else pixels
    dtype = {8: "u1", 16: "<i2" if signed else "<u2"}[bits_allocated]
    ds.PixelData = np.ascontiguousarray(words).astype(dtype).tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


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
# Hostile files


def compressed_without_decoder() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(WINDOW_12)))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8 not a real JPEG \xff\xd9"])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
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
        "jpeg.dcm": (compressed_without_decoder(), r"compressed with JPEG Lossless.* no decoder for it is installed"),
        "frames.dcm": (frames, r"2 frames; one radiograph per file"),
        "colour.dcm": (colour, r"a colour image \(RGB, 3 samples per pixel\)"),
        "narrow.dcm": (
            make_dicom(WINDOW_12, WindowCenter=2048, WindowWidth=0),
            r"modality or VOI attributes unusable \(ValueError: The \(0028,1051\) Window Width must be",
        ),
    }


@pytest.mark.parametrize("name", list(hostile_files()))
def test_hostile_files_are_one_clear_error_naming_the_file(tmp_path, name):
    data, message = hostile_files()[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CxrError, match=rf"{name}: {message}"):
        dicom.decode_dicom(dicom.read_file(path), 32, path)


def test_a_huge_file_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "huge.dcm"
    path.write_bytes(b"\0" * 2048)
    monkeypatch.setattr(dicom, "MAX_DICOM_BYTES", 1024)
    with pytest.raises(CxrError, match=r"huge.dcm: 2,048 bytes, more than the 1,024 a radiograph needs: not read"):
        dicom.read_file(path)
    with pytest.raises(CxrError, match=r"absent.dcm: image not found"):
        dicom.read_file(tmp_path / "absent.dcm")
