"""What the image readers share: the source type, the result records, opening + sniffing, the pixel guard.

Internal to :mod:`medlens.data.io` (the public API, which re-exports these names) and
:mod:`medlens.data.dicom`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from medlens.errors import UPLOAD_NAME, ConfigError, ImageReadError, ImageTooLargeError

if TYPE_CHECKING:
    import pydicom

MAX_PIXELS: int = 64_000_000  # decompression-bomb guard; env MEDLENS_MAX_PIXELS overrides
MAX_PIXELS_VARIABLE = "MEDLENS_MAX_PIXELS"  # read here only (max_pixels_from_env)

Source = str | Path | bytes | bytearray | memoryview


@dataclass
class ImageRecord:
    """A decoded image with what is known about its source."""

    array: np.ndarray  # (H, W, C) uint8, C in {1, 3}
    spacing_mm: tuple[float, float] | None  # (row, col) pixel spacing when known
    source_format: str  # "png", "jpeg", "tiff", "bmp", "dicom" ("array": handed over as pixels)
    dicom: pydicom.Dataset | None = None  # the source dataset without PixelData; never logged
    notes: list[str] = field(default_factory=list)  # what reading changed (transparency flattened, size)
    original_size: tuple[int, int] | None = None  # (height, width) of the file when it was decoded reduced

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


def max_pixels_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """``$MEDLENS_MAX_PIXELS`` of ``environ`` (default ``os.environ``; "64e6" reads as 64000000), None when
    unset; ConfigError naming the variable when it is not a positive number."""
    raw = (os.environ if environ is None else environ).get(MAX_PIXELS_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_PIXELS_VARIABLE} must be a positive number of pixels, got {raw!r}")
    return value


def max_pixels_limit(override: int | None = None) -> int:
    """The pixel-count limit: ``override``, else env ``MEDLENS_MAX_PIXELS``, else :data:`MAX_PIXELS`."""
    if override is not None:
        return int(override)
    return max_pixels_from_env() or MAX_PIXELS


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


def _source_name(source: Source, name: str | None = None) -> str:
    if isinstance(source, str | Path):
        return str(source)
    return name or UPLOAD_NAME


@contextmanager
def open_source(source: Source, name: str | None = None) -> Iterator[tuple[IO[bytes], str, str]]:
    """Yield ``(binary file object, display name, sniffed format)``; raises ImageReadError when unusable.
    ``name``: what bytes are called in messages (an upload's file name; default ``"<upload>"``)."""
    name = _source_name(source, name)
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


def check_pixels(name: str, width: int, height: int, limit: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"invalid image size {width}x{height}")
    if width * height > limit:
        raise ImageTooLargeError(name, width, height, limit)


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
