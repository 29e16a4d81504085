"""Errors medlens raises, by kind: bad input (:class:`MedlensError` and its subclasses; a client error,
4xx, whose message names the file or field and the reason) versus a fault inside medlens
(:class:`InternalError`; 500, logged with an id, never shown to a client in detail)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class MedlensError(ValueError):
    """Base class of every error medlens raises for bad user input."""


UPLOAD_NAME = "<upload>"  # what bytes without a file name are called in messages


class ImageReadError(MedlensError):
    """An image (or mask) could not be read."""

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = str(path) if path is not None else UPLOAD_NAME
        self.reason = reason
        super().__init__(f"cannot read {self.path}: {reason}")


class ImageTooLargeError(ImageReadError):
    """An image whose declared size exceeds the pixel limit (refused before decoding; HTTP 413)."""

    def __init__(self, path: str | Path | None, width: int, height: int, limit: int) -> None:
        self.width, self.height, self.limit = width, height, limit
        super().__init__(
            path, f"{width}x{height} pixels exceeds the limit of {limit} pixels (MEDLENS_MAX_PIXELS)"
        )


class InternalError(RuntimeError):
    """A fault inside medlens or its libraries, not caused by the input (HTTP 500)."""


class DatasetError(MedlensError):
    """A data set folder does not have the expected layout or content."""


class ConfigError(MedlensError):
    """A configuration value is missing or invalid."""


class BundleError(MedlensError):
    """A model bundle is missing files or has an unknown format version."""


class UnknownNameError(MedlensError):
    """A name (architecture, encoder, loss, pipeline...) is not one medlens knows."""

    def __init__(self, kind: str, name: str, valid: Sequence[str]) -> None:
        self.kind, self.name, self.valid = kind, name, list(valid)
        shown = ", ".join(sorted(self.valid)[:60])
        more = f" (and {len(self.valid) - 60} more)" if len(self.valid) > 60 else ""
        super().__init__(f"unknown {kind} {name!r}; valid names: {shown}{more}")
