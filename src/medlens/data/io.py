"""Image readers: PNG, JPEG, TIFF, BMP and DICOM files (or uploaded bytes) to ``uint8`` arrays.

Every reader sniffs the file type from its first bytes, never from the extension, refuses decompression bombs
from the header before decoding, and raises :class:`~medlens.errors.ImageReadError` naming the file and the
reason.

Images come back as ``numpy.uint8`` arrays ``(H, W, C)`` with ``C`` in ``{1, 3}`` ("HWC uint8"); masks as raw
``(H, W)`` ``uint8`` values. DICOM patient fields are never logged.

This module is the public API: the DICOM code lives in :mod:`medlens.data.dicom` and the shared source
handling in :mod:`medlens.data._common`; their public names are re-exported here.
"""

from __future__ import annotations

import logging
import math
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from medlens.data._common import (
    MAX_PIXELS,
    MAX_PIXELS_VARIABLE,
    ImageInfo,
    ImageRecord,
    Source,
    check_pixels,
    max_pixels_from_env,
    max_pixels_limit,
    open_source,
    scale_to_uint8,
    sniff_format,
)
from medlens.data.dicom import deidentify, dicom_spacing_mm, probe_dicom_fp, read_dicom, read_dicom_fp
from medlens.errors import ImageReadError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "MAX_PIXELS_VARIABLE",
    "ImageInfo",
    "ImageReadError",
    "ImageRecord",
    "Source",
    "convert_channels",
    "deidentify",
    "dicom_spacing_mm",
    "flatten_alpha",
    "load_image",
    "max_pixels_from_env",
    "max_pixels_limit",
    "probe_image",
    "read_dicom",
    "read_image",
    "read_mask",
    "read_mask_with_format",
    "robust_scale_to_uint8",
    "scale_to_uint8",
    "sniff_format",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP"}
_EXIF_ORIENTATION = 0x0112
_SWAPPED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90 degrees


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
    check_pixels(name, im.size[0], im.size[1], limit)
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


def robust_scale_to_uint8(arr: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Scale a high-bit-depth image to ``uint8`` between robust percentiles (min/max if they coincide)."""
    finite = np.nan_to_num(np.asarray(arr, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return scale_to_uint8(finite, lo, hi)


#: What transparent pixels are laid on before the analysis (see :func:`flatten_alpha`): white.
TRANSPARENCY_BACKGROUND = 255


def flatten_alpha(arr: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(H, W, C)`` uint8 whose last channel is alpha (C = 2: grey + alpha, C = 4: RGBA) -> the other
    channels composited on :data:`TRANSPARENCY_BACKGROUND`, and the note for the result when some pixel was
    not opaque (None when all were).

    White, whatever the modality: an image is decoded before anything knows its modality (``pipeline=auto``
    decides it from these pixels), so one background must serve all. White is what the user most likely
    saw (most viewers and browsers show transparency over a light page), and it passes for no anatomy in
    any shipped modality: on a radiograph white is the unexposed border outside the collimation, where black
    would read as air in the lungs; on a dermoscopy or endoscopy photo black is the dark vignette of the
    lens, so a black fill would pass for part of the photo.
    """
    colour, alpha = arr[..., :-1].astype(np.float32), arr[..., -1:].astype(np.float32) / 255.0
    flat = np.rint(colour * alpha + TRANSPARENCY_BACKGROUND * (1.0 - alpha)).astype(np.uint8)
    share = float(np.count_nonzero(arr[..., -1] < 255)) / max(1, arr.shape[0] * arr.shape[1])
    if share == 0:
        return flat, None
    shown = f"{100 * share:.0f}%" if share >= 0.01 else "under 1%"
    return flat, (
        f"the image is partly transparent ({shown} of its pixels): it was laid on a white background "
        "(transparency flattened) before the analysis"
    )


def _pil_to_hwc(im: Image.Image) -> tuple[np.ndarray, str | None]:
    """Any PIL mode -> ((H, W, C) uint8 with C in {1, 3}, note or None); alpha is flattened on white
    (:func:`flatten_alpha`, whose note says so)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return robust_scale_to_uint8(np.asarray(im))[..., None], None
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")
    arr = np.array(im)  # a writable copy (PIL-backed arrays are read-only)
    if arr.ndim == 2:
        return arr[..., None], None
    if im.mode in ("LA", "RGBA"):
        return flatten_alpha(arr)
    return np.ascontiguousarray(arr), None


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


def read_image(
    source: Source,
    channels: int | None = None,
    max_pixels: int | None = None,
    max_side: int | None = None,
    *,
    name: str | None = None,
) -> ImageRecord:
    """Read an image file path or uploaded bytes (shown as ``name``, default ``"<upload>"``, in errors).

    Returns an :class:`ImageRecord` whose ``array`` is ``(H, W, C)`` uint8, ``C`` in {1, 3} (``channels``
    converts). EXIF orientation is honoured; RGBA/LA are flattened on white (:func:`flatten_alpha`); palette
    images become RGB; 16-bit PNG/TIFF are scaled to uint8 between robust (0.5, 99.5) percentiles. DICOM
    goes through :func:`read_dicom`. ``max_side``: decode reduced so that the longer side is at most about
    that (JPEG in the decoder itself, others by an integer box reduction right after decoding, before any
    copy); the pixel spacing is scaled to match and ``original_size`` keeps the file's. What reading changed
    (transparency flattened, size reduced) is said in the record's ``notes``.
    """
    limit = max_pixels_limit(max_pixels)
    with open_source(source, name) as (fp, shown, fmt):
        if fmt == "dicom":
            record = read_dicom_fp(fp, shown, limit)
            full = record.array.shape[:2]
            record.array, factor = _reduce_array(record.array, max_side)
        else:
            header = _open_pil(fp, shown, fmt, limit)
            full = header.size[::-1]
            if max_side and fmt == "jpeg":
                header.draft(header.mode, _reduced_size(header.size, max_side))  # DCT scaling: 1/2, 1/4, 1/8
            im = _decode(header, shown, fmt)
            spacing = _pil_spacing_mm(im)
            im, _ = _reduce_pil(im, max_side)
            factor = max(full) / max(im.size)
            if factor != 1 and _exif_orientation(header) in _SWAPPED_ORIENTATIONS:
                full = full[::-1]  # the file's size as displayed, like the array's
            array, note = _pil_to_hwc(im)
            record = ImageRecord(array, spacing, fmt, None, notes=[note] if note else [])
    if factor != 1:
        record.original_size = (int(full[0]), int(full[1]))
        record.notes.append(_reduced_note(record.original_size, record.array.shape[:2], max_side))
    if record.spacing_mm is not None and factor != 1:
        record.spacing_mm = (record.spacing_mm[0] * factor, record.spacing_mm[1] * factor)
    record.array = convert_channels(record.array, channels)
    return record


def _reduced_note(original: tuple[int, int], analysed: tuple[int, ...], max_side: int | None) -> str:
    """What the result says of an image decoded reduced: both sizes (width x height) and why."""
    (h, w), (h2, w2) = original, analysed[:2]
    return (
        f"the image ({w}x{h} pixels) is larger than {max_side} pixels a side, so it was decoded reduced to "
        f"{w2}x{h2} and analysed at that size; sizes in pixels refer to the reduced image"
    )


def _reduction(size: tuple[int, int], max_side: int | None) -> int:
    """The integer factor that brings the longer side of ``size`` to at most ``max_side`` (1: none)."""
    return 1 if not max_side else max(1, math.ceil(max(size) / max_side))


def _reduced_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    factor = _reduction(size, max_side)
    return max(1, size[0] // factor), max(1, size[1] // factor)


def _reduce_pil(im: Image.Image, max_side: int | None) -> tuple[Image.Image, int]:
    """``(im.reduce(k), k)`` with the box-average factor ``k`` of :func:`_reduction` (P and 1 converted)."""
    factor = _reduction(im.size, max_side)
    if factor == 1:
        return im, 1
    if im.mode in ("P", "PA", "1"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    return im.reduce(factor), factor


def _reduce_array(arr: np.ndarray, max_side: int | None) -> tuple[np.ndarray, int]:
    """An (H, W, C) uint8 array box-reduced like :func:`_reduce_pil`."""
    factor = _reduction((arr.shape[1], arr.shape[0]), max_side)
    if factor == 1:
        return arr, 1
    planes = [np.asarray(Image.fromarray(arr[..., c]).reduce(factor)) for c in range(arr.shape[2])]
    return np.ascontiguousarray(np.stack(planes, axis=-1)), factor


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
    with open_source(path) as (fp, name, fmt):
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


def probe_image(
    source: Source, verify: bool = False, max_pixels: int | None = None, *, name: str | None = None
) -> ImageInfo:
    """Read the header of an image (size after EXIF orientation, format, mode) without decoding the pixels.

    ``verify=True`` also decodes the pixel data (JPEG cheaply in 1/8-scale draft mode; DICOM through pydicom),
    which catches truncated and corrupt files. ``name``: what bytes are called in errors (see
    :func:`read_image`).
    """
    limit = max_pixels_limit(max_pixels)
    with open_source(source, name) as (fp, name, fmt):
        if fmt == "dicom":
            return probe_dicom_fp(fp, name, limit, verify)
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
