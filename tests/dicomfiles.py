"""DICOM files for the tests, written with pydicom (tests/data/test_dicom.py, tests/stages/test_explain_stage.py)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLossless,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
    generate_uid,
)


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
    """A DICOM Part 10 file of one grayscale frame; ``raw``: the stored words as given (garbage in high bits).

    Float pixels (``float32`` or ``float64``) go into Float or Double Float Pixel Data, without ``BitsStored``,
    ``HighBit`` nor ``PixelRepresentation`` (the Floating Point Image Pixel module)."""
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
    if pixels.dtype.kind == "f":
        ds.BitsAllocated = 8 * pixels.dtype.itemsize
        key = {32: "FloatPixelData", 64: "DoubleFloatPixelData"}[ds.BitsAllocated]
        setattr(ds, key, np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes())
    else:
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


def compress_dicom(data: bytes, syntax: str) -> bytes:
    """``data`` re-encoded losslessly in ``syntax``: pydicom's ``Dataset.compress`` (RLE natively, JPEG-LS with
    pyjpegls, JPEG 2000 with pylibjpeg-openjpeg, which needs at least 32 × 32 pixels), or GDCM for JPEG Lossless
    (process 14), for which pydicom has no encoder."""
    if syntax in (JPEGLossless, JPEGLosslessSV1):
        return _gdcm_compress(data, syntax)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.compress(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _gdcm_compress(data: bytes, syntax: str) -> bytes:
    import gdcm

    target = {
        JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14,
        JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    }
    with tempfile.TemporaryDirectory() as folder:
        source, packed = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
        source.write_bytes(data)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(source))
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(target[syntax]))
        if not reader.Read() or not (change.SetInput(reader.GetImage()) or change.Change()):
            raise RuntimeError(f"GDCM could not re-encode the file as {syntax}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(packed))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"GDCM could not write the {syntax} file")
        return packed.read_bytes()
