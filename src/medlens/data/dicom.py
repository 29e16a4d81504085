"""DICOM reading (modality LUT / rescale, VOI LUT or window, MONOCHROME1, spacing) and de-identification.

Public names are re-exported by :mod:`medlens.data.io`, which also routes DICOM files here from
:func:`~medlens.data.io.read_image` and :func:`~medlens.data.io.probe_image`. DICOM patient fields are never
logged.
"""

from __future__ import annotations

import logging
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from medlens.data._common import (
    ImageInfo,
    ImageRecord,
    Source,
    check_pixels,
    max_pixels_limit,
    open_source,
    scale_to_uint8,
)
from medlens.errors import ImageReadError

if TYPE_CHECKING:
    import pydicom

logger = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom(source: Source, max_pixels: int | None = None, *, name: str | None = None) -> ImageRecord:
    """Read a single-frame DICOM image to an :class:`ImageRecord` (array (H, W, 1) or (H, W, 3) uint8).

    Grey images: modality LUT / rescale slope+intercept, then the first VOI LUT or window centre/width (else
    the min/max of the rescaled values) maps to 0..255; MONOCHROME1 is inverted so that bright means dense as
    usual. Colour (RGB/YBR) images are converted to RGB. ``record.dicom`` keeps the dataset without pixel
    data. ``name``: what bytes are called in errors (an upload's file name; default ``"<upload>"``).
    """
    limit = max_pixels_limit(max_pixels)
    with open_source(source, name) as (fp, name, fmt):
        if fmt != "dicom":
            raise ImageReadError(name, f"not a DICOM file (looks like {fmt.upper()})")
        return read_dicom_fp(fp, name, limit)


def _dcmread(fp: IO[bytes], name: str, stop_before_pixels: bool = False) -> pydicom.Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(fp, force=True, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise ImageReadError(name, f"not a valid DICOM file ({type(e).__name__})") from e
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        _set_transfer_syntax(ds)
    return ds


def _set_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Raw DICOM without file meta (old files): record the encoding pydicom detected so pixels can decode."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = getattr(ds, "original_encoding", (True, True))
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    ds.file_meta.TransferSyntaxUID = syntax


def _dicom_geometry(ds: pydicom.Dataset, name: str, limit: int, need_pixels: bool = True) -> None:
    if need_pixels and not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ImageReadError(name, "DICOM file has no pixel data (PixelData element missing)")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(name, "DICOM file has no Rows/Columns")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            name, f"multi-frame DICOM ({frames} frames) is not supported; use one 2D image per file"
        )
    check_pixels(name, int(ds.Columns), int(ds.Rows), limit)


def probe_dicom_fp(fp: IO[bytes], name: str, limit: int, verify: bool) -> ImageInfo:
    """Header facts of an open DICOM file (``verify=True`` also decodes the pixels); for ``probe_image``."""
    ds = _dcmread(fp, name, stop_before_pixels=not verify)
    _dicom_geometry(ds, name, limit, need_pixels=verify)
    if verify:
        _dicom_pixels(ds, name)
    return ImageInfo(int(ds.Columns), int(ds.Rows), "dicom", "DICOM")


def _dicom_pixels(ds: pydicom.Dataset, name: str) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except Exception as e:  # pydicom raises many types for unsupported or broken pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageReadError(name, f"cannot decode DICOM pixel data (transfer syntax {syntax}): {e}") from e


def read_dicom_fp(fp: IO[bytes], name: str, limit: int) -> ImageRecord:
    """Decode an open DICOM file (``name`` for errors, ``limit`` pixels at most); used by ``read_image``."""
    ds = _dcmread(fp, name)
    _dicom_geometry(ds, name, limit)
    pixels = _dicom_pixels(ds, name)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3 or pixels.ndim == 3:
        arr = pixels if pixels.dtype == np.uint8 else scale_to_uint8(pixels)
    else:
        arr = _dicom_grey_to_uint8(pixels, ds, name)[..., None]
    return ImageRecord(np.ascontiguousarray(arr), dicom_spacing_mm(ds), "dicom", _without_pixels(ds))


def _dicom_grey_to_uint8(pixels: np.ndarray, ds: pydicom.Dataset, name: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    values = apply_modality_lut(pixels, ds)
    out: np.ndarray | None = None
    try:
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
            lut = apply_voi(_lut_inputs(ds.VOILUTSequence[0]), ds, index=0)  # the table, decoded by pydicom
            out = scale_to_uint8(apply_voi(values, ds, index=0), lut.min(), lut.max())
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            lo, hi = _window_output_range(ds)
            out = scale_to_uint8(apply_windowing(values, ds, index=0), lo, hi)
    except (ValueError, TypeError, IndexError, AttributeError) as e:
        logger.warning("ignoring invalid VOI LUT / window in %s (%s); using min/max", name, e)
        out = None
    if out is None:
        out = scale_to_uint8(values)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        out = 255 - out
    return out


def _lut_inputs(item: Any) -> np.ndarray:
    """Every input value a LUT maps (PS3.3 C.11.1.1.1: entries, first mapped value; 0 entries means 65536)."""
    entries, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
    return np.arange(first, first + entries)


def _window_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Output range of pydicom's ``apply_windowing`` (PS3.3 C.11.2.1.2): the modality-LUT output range."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def dicom_spacing_mm(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(row, col) pixel spacing in mm from PixelSpacing, else ImagerPixelSpacing, else None."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value: Any = ds.get(keyword)
        if value is not None:
            try:
                row, col = (float(v) for v in value)
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return (row, col)
    return None


def _without_pixels(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A shallow copy of ``ds`` without the pixel data elements (keeps file meta for SEG references)."""
    from pydicom.dataset import Dataset, FileMetaDataset

    ref = Dataset()
    for elem in ds:
        if elem.keyword not in _PIXEL_KEYWORDS:
            ref.add(elem)
    ref.file_meta = FileMetaDataset(getattr(ds, "file_meta", Dataset()))
    ref.preamble = getattr(ds, "preamble", None)
    return ref


_KEEP_PATIENT_KEYWORDS = {"PatientOrientation", "PatientPosition"}  # image geometry, not identity
# fmt: off
_REMOVE_KEYWORDS = {
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "ReferringPhysicianName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "AccessionNumber",
    "MedicalRecordLocator", "ResponsiblePerson", "ResponsibleOrganization", "PersonName", "PersonAddress",
    "PersonTelephoneNumbers", "MilitaryRank", "BranchOfService", "EthnicGroup", "Occupation",
    "CountryOfResidence", "RegionOfResidence", "MedicalAlerts", "Allergies", "AdditionalPatientHistory",
    "PregnancyStatus", "DeviceSerialNumber"
}
# fmt: on


def _is_identifying(elem: Any) -> bool:
    keyword = elem.keyword or ""
    if elem.tag.is_private or elem.VR == "PN":
        return True
    if keyword in _KEEP_PATIENT_KEYWORDS:
        return False
    return (
        keyword.startswith("Patient")
        or ("Patient" in keyword and keyword.endswith(("ID", "IDs", "Name", "Names")))
        or keyword.endswith(("PhysicianName", "PhysiciansName", "OperatorsName", "PhysiciansOfRecord"))
        or keyword in _REMOVE_KEYWORDS
    )


def deidentify(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A deep copy of ``ds`` without patient/person identifiers, also inside sequences.

    Removed: every element whose keyword starts with "Patient" (except the geometry elements
    PatientOrientation and PatientPosition), every person-name (PN) element (physicians, operators...), other
    patient IDs/names, institution, station, accession number and similar fields, and all private tags.
    PatientIdentityRemoved is set to "YES". Dates and UIDs are kept (they are needed to reference the source
    images).
    """
    import copy

    out = copy.deepcopy(ds)

    def _strip(dataset: Any, elem: Any) -> None:
        if _is_identifying(elem):
            del dataset[elem.tag]

    out.walk(_strip)
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = "medlens: patient identifiers and private tags removed"
    return out
