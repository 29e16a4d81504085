"""Image readers: PNG, JPEG, TIFF, BMP and DICOM files (or uploaded bytes) to ``uint8`` arrays.

Every reader sniffs the file type from its first bytes, never from the extension, refuses decompression bombs
from the header before decoding, and raises :class:`~medlens.errors.ImageReadError` naming the file and the
reason.

Images come back as ``numpy.uint8`` arrays ``(H, W, C)`` with ``C`` in ``{1, 3}`` ("HWC uint8"); masks as raw
``(H, W)`` ``uint8`` values. DICOM patient fields are never logged.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from medlens.errors import ImageReadError

if TYPE_CHECKING:
    import pydicom

logger = logging.getLogger(__name__)

MAX_PIXELS: int = 64_000_000  # decompression-bomb guard; env MEDLENS_MAX_PIXELS overrides
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")

Source = str | Path | bytes | bytearray | memoryview
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP"}
_EXIF_ORIENTATION = 0x0112
_SWAPPED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90 degrees


@dataclass
class ImageRecord:
    """A decoded image with what is known about its source."""

    array: np.ndarray  # (H, W, C) uint8, C in {1, 3}
    spacing_mm: tuple[float, float] | None  # (row, col) pixel spacing when known
    source_format: str  # "png", "jpeg", "tiff", "bmp", "dicom"
    dicom: pydicom.Dataset | None = None  # the source dataset without PixelData; never logged

    def __repr__(self) -> str:  # keep the DICOM dataset (patient fields) out of logs and tracebacks
        shape = tuple(self.array.shape)
        return f"ImageRecord(shape={shape}, format={self.source_format!r}, spacing_mm={self.spacing_mm})"


@dataclass(frozen=True)
class ImageInfo:
    """Header facts of an image file, read without decoding the pixels (see :func:`probe_image`)."""

    width: int  # after EXIF orientation
    height: int
    source_format: str
    mode: str  # PIL mode ("L", "RGB", "I;16", ...) or "DICOM"


def max_pixels_limit(override: int | None = None) -> int:
    """The pixel-count limit: ``override``, else env ``MEDLENS_MAX_PIXELS``, else :data:`MAX_PIXELS`."""
    if override is not None:
        return int(override)
    env = os.environ.get("MEDLENS_MAX_PIXELS")
    return int(float(env)) if env else MAX_PIXELS


def sniff_format(head: bytes) -> str | None:
    """Guess the file type from its first 132 bytes: "png", "jpeg", "tiff", "bmp", "dicom" or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head[128:132] == b"DICM":
        return "dicom"
    # DICOM without the 128-byte preamble starts with a group 0x0002 or 0x0008 tag (little endian)
    if head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00":
        return "dicom"
    return None


def _source_name(source: Source) -> str:
    return str(source) if isinstance(source, str | Path) else "<upload>"


@contextmanager
def _open_source(source: Source) -> Iterator[tuple[IO[bytes], str, str]]:
    """Yield ``(binary file object, display name, sniffed format)``; raises ImageReadError when unusable."""
    name = _source_name(source)
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise ImageReadError(name, "file not found")
        if path.is_dir():
            raise ImageReadError(name, "is a directory, not an image file")
        fp: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    else:
        fp = io.BytesIO(bytes(source))
    try:
        head = fp.read(132)
        if not head:
            raise ImageReadError(name, "empty file")
        fmt = sniff_format(head)
        if fmt is None:
            raise ImageReadError(name, "unknown file type (not PNG, JPEG, TIFF, BMP or DICOM)")
        fp.seek(0)
        yield fp, name, fmt
    finally:
        fp.close()


def _check_pixels(name: str, width: int, height: int, limit: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"invalid image size {width}x{height}")
    if width * height > limit:
        raise ImageReadError(
            name, f"{width}x{height} pixels exceeds the limit of {limit} pixels (MEDLENS_MAX_PIXELS)"
        )


def _open_pil(fp: IO[bytes], name: str, fmt: str, limit: int) -> Image.Image:
    """Parse the header with the format's PIL plugin (no pixel decoding) and apply the pixel guard.

    The plugin factory is called directly instead of ``Image.open`` so that medlens' own limit (and message,
    with the width and height) applies instead of PIL's global ``MAX_IMAGE_PIXELS``.
    """
    Image.init()
    factory, _accept = Image.OPEN[_PIL_FORMATS[fmt]]
    try:
        im = factory(fp, name)
    except (SyntaxError, OSError, ValueError, IndexError, TypeError, EOFError) as e:
        raise ImageReadError(name, f"corrupt or unsupported {fmt.upper()} header ({e})") from e
    _check_pixels(name, im.size[0], im.size[1], limit)
    n_frames = getattr(im, "n_frames", 1)
    if fmt == "tiff" and n_frames > 1:
        raise ImageReadError(
            name, f"multi-page TIFF ({n_frames} pages) is not supported; save one page per file"
        )
    return im


def _decode(im: Image.Image, name: str, fmt: str) -> Image.Image:
    """Decode the pixels and apply the EXIF orientation."""
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise ImageReadError(name, f"corrupt or truncated {fmt.upper()} data ({e})") from e
    try:
        return ImageOps.exif_transpose(im)
    except Exception as e:  # a broken EXIF block must not make a readable image unreadable
        logger.warning("ignoring unreadable EXIF orientation in %s (%s)", name, e)
        return im


def scale_to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map ``arr`` linearly from ``[lo, hi]`` (default: its min/max) to ``uint8`` 0..255, clipping outside.

    A constant image becomes all zeros.
    """
    arr = np.asarray(arr, dtype=np.float64)
    lo = float(np.min(arr)) if lo is None else float(lo)
    hi = float(np.max(arr)) if hi is None else float(hi)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def robust_scale_to_uint8(arr: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Scale a high-bit-depth image to ``uint8`` between robust percentiles (min/max if they coincide)."""
    finite = np.nan_to_num(np.asarray(arr, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return scale_to_uint8(finite, lo, hi)


def _pil_to_hwc(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, C) uint8 with C in {1, 3}; alpha is composited on black."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return robust_scale_to_uint8(np.asarray(im))[..., None]
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "LA":
        im = im.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGB")
    arr = np.array(im)  # a writable copy (PIL-backed arrays are read-only)
    if arr.ndim == 2:
        return arr[..., None]
    if arr.shape[-1] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        rgb = np.rint(arr[..., :3].astype(np.float32) * alpha).astype(np.uint8)
        if mode == "LA":
            return rgb[..., :1].copy()
        return rgb
    return np.ascontiguousarray(arr)


def convert_channels(arr: np.ndarray, channels: int | None) -> np.ndarray:
    """Convert (H, W, C) uint8 to ``channels`` (1: ITU-R 601 luma, 3: grey repeated; None: unchanged)."""
    if channels is None or arr.shape[-1] == channels:
        return arr
    if channels == 1:
        rgb = arr[..., :3].astype(np.float32)
        luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    if channels == 3:
        return np.repeat(arr[..., :1], 3, axis=-1)
    raise ValueError(f"channels must be 1, 3 or None, got {channels}")


def read_image(source: Source, channels: int | None = None, max_pixels: int | None = None) -> ImageRecord:
    """Read an image file path or uploaded bytes (shown as ``"<upload>"`` in errors).

    Returns an :class:`ImageRecord` whose ``array`` is ``(H, W, C)`` uint8, ``C`` in {1, 3} (``channels``
    converts). EXIF orientation is honoured; RGBA/LA are composited on black; palette images become RGB;
    16-bit PNG/TIFF are scaled to uint8 between robust (0.5, 99.5) percentiles. DICOM goes through
    :func:`read_dicom`.
    """
    limit = max_pixels_limit(max_pixels)
    with _open_source(source) as (fp, name, fmt):
        if fmt == "dicom":
            record = _read_dicom_fp(fp, name, limit)
        else:
            im = _decode(_open_pil(fp, name, fmt, limit), name, fmt)
            record = ImageRecord(_pil_to_hwc(im), _pil_spacing_mm(im), fmt, None)
    record.array = convert_channels(record.array, channels)
    return record


def load_image(path: Source, channels: int | None = None) -> np.ndarray:
    """``read_image(path, channels).array``: (H, W, C) uint8."""
    return read_image(path, channels=channels).array


def _pil_spacing_mm(im: Image.Image) -> tuple[float, float] | None:
    """Pixel spacing from a TIFF resolution tag in centimetres; other formats carry no trustworthy spacing."""
    if im.format != "TIFF":
        return None
    try:
        unit = im.tag_v2.get(296, 2)  # ResolutionUnit: 2 inch, 3 centimetre
        xres, yres = float(im.tag_v2[282]), float(im.tag_v2[283])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if unit != 3 or xres <= 0 or yres <= 0:
        return None  # an inch DPI is usually a screen default, not a physical pixel size
    return (10.0 / yres, 10.0 / xres)


def read_mask(path: Source) -> np.ndarray:
    """Read a mask file as raw ``(H, W)`` uint8 values (no binarisation, palette indices kept).

    An RGB(A) mask is reduced to one channel when all colour channels are equal, else ImageReadError. 16-bit
    masks must hold values <= 255.
    """
    arr, _fmt = read_mask_with_format(path)
    return arr


def read_mask_with_format(path: Source, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """:func:`read_mask` plus the sniffed file format (JPEG masks are lossy and need thresholding)."""
    limit = max_pixels_limit(max_pixels)
    with _open_source(path) as (fp, name, fmt):
        if fmt == "dicom":
            raise ImageReadError(name, "DICOM masks are not supported; save the mask as PNG")
        im = _decode(_open_pil(fp, name, fmt, limit), name, fmt)
        return _mask_array(im, name), fmt


def _mask_array(im: Image.Image, name: str) -> np.ndarray:
    if im.mode in ("LA", "PA"):
        im = im.getchannel(0)
    arr = np.array(im)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.ndim == 3:
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ImageReadError(
                name, "colour mask whose channels differ; save masks as single-channel label images"
            )
        arr = rgb[..., 0]
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ImageReadError(name, f"mask values {arr.min()}..{arr.max()} do not fit in 0..255")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def probe_image(source: Source, verify: bool = False, max_pixels: int | None = None) -> ImageInfo:
    """Read the header of an image (size after EXIF orientation, format, mode) without decoding the pixels.

    ``verify=True`` also decodes the pixel data (JPEG cheaply in 1/8-scale draft mode; DICOM through pydicom),
    which catches truncated and corrupt files.
    """
    limit = max_pixels_limit(max_pixels)
    with _open_source(source) as (fp, name, fmt):
        if fmt == "dicom":
            return _probe_dicom(fp, name, limit, verify)
        im = _open_pil(fp, name, fmt, limit)
        (width, height), mode = im.size, im.mode
        if verify:
            _verify_pil(im, name, fmt)
        if _exif_orientation(im, decoded=verify) in _SWAPPED_ORIENTATIONS:
            width, height = height, width
        return ImageInfo(width, height, fmt, mode)


def _exif_orientation(im: Image.Image, decoded: bool = True) -> int:
    # PIL's PNG getexif() decodes the whole image to look for an eXIf chunk after the pixel data; an undecoded
    # PNG probe only looks at an eXIf chunk before the pixels (where the PNG specification recommends it).
    if im.format == "PNG" and not decoded and "exif" not in im.info:
        return 1
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # broken EXIF: treated as "no orientation", like _decode does
        return 1


def _verify_pil(im: Image.Image, name: str, fmt: str) -> None:
    try:
        if fmt == "jpeg":  # DCT scaling decodes every coefficient (so truncation shows) at 1/8 of the cost
            im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise ImageReadError(name, f"corrupt or truncated {fmt.upper()} data ({e})") from e


# ------------------------------------------------------------------------------------------------------ DICOM
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom(source: Source, max_pixels: int | None = None) -> ImageRecord:
    """Read a single-frame DICOM image to an :class:`ImageRecord` (array (H, W, 1) or (H, W, 3) uint8).

    Grey images: modality LUT / rescale slope+intercept, then the first VOI LUT or window centre/width (else
    the min/max of the rescaled values) maps to 0..255; MONOCHROME1 is inverted so that bright means dense as
    usual. Colour (RGB/YBR) images are converted to RGB. ``record.dicom`` keeps the dataset without pixel
    data.
    """
    limit = max_pixels_limit(max_pixels)
    with _open_source(source) as (fp, name, fmt):
        if fmt != "dicom":
            raise ImageReadError(name, f"not a DICOM file (looks like {fmt.upper()})")
        return _read_dicom_fp(fp, name, limit)


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
    _check_pixels(name, int(ds.Columns), int(ds.Rows), limit)


def _probe_dicom(fp: IO[bytes], name: str, limit: int, verify: bool) -> ImageInfo:
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


def _read_dicom_fp(fp: IO[bytes], name: str, limit: int) -> ImageRecord:
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
    out.DeidentificationMethod = "medlens: patient/person identifiers and private tags removed"
    return out
