"""Errors that medlens raises for bad input. Each message names the file (or field) and the reason."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class MedlensError(ValueError):
    """Base class of every error medlens raises for bad user input."""


class ImageReadError(MedlensError):
    """An image (or mask) could not be read."""

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = str(path) if path is not None else "<upload>"
        self.reason = reason
        super().__init__(f"cannot read {self.path}: {reason}")


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
