"""Helpers for the web-app tests: a fast fake pipeline, test images (valid and hostile) and a live server."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from typing import Any

import numpy as np
from PIL import Image

from medlens.pipelines.advice import Finding
from medlens.pipelines.analysis import Analysis
from medlens.pipelines.groups import group_scores
from medlens.pipelines.overlay import KeyEntry
from medlens.spec import ClassGroup

FAKE_FINDINGS = [
    Finding("The model looked elsewhere.", "high", "evidence_outside"),
    Finding("Big.", "low", "big"),
]


class FakePipeline:
    """Thresholds brightness (segmentation) and maps mean intensity to two classes; fast and deterministic.

    It refuses to be entered by two threads at once (like a pipeline with Grad-CAM hooks), so a test fails if
    the service does not serialise calls. ``fail=True`` raises an unexpected error carrying a secret marker.
    """

    description = "fake pipeline for tests"

    def __init__(
        self, name: str = "skin", classes: tuple[str, ...] = ("benign", "malignant"), fail: bool = False
    ):
        self.name, self.classes, self.fail = name, classes, fail
        self.calls = 0
        self.last_tta: bool | None = None
        self.groups: list[dict] = []  # class groups to report, as a bundle with spec.groups would
        self._busy = threading.Lock()

    def analyze(
        self, image: Any, clahe: bool = False, gradcam: bool = True, tta: bool | None = None
    ) -> Analysis:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("FakePipeline entered by two threads at once")
        try:
            self.calls += 1
            self.last_tta = tta
            if self.fail:
                raise RuntimeError("SECRET-TRACEBACK-MARKER /srv/internal/path.py")
            arr = image.array if hasattr(image, "array") else image
            grey = arr.mean(axis=2) if arr.ndim == 3 else arr.astype(np.float32)
            mask = (grey > grey.mean()).astype(np.uint8)
            rgb = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr
            overlay = rgb.copy()
            overlay[mask > 0] = (0.5 * overlay[mask > 0] + [0, 127, 0]).astype(np.uint8)
            p = float(np.clip(grey.mean() / 255.0, 0.01, 0.99))
            probs = {self.classes[0]: 1 - p, self.classes[1]: p}
            label = max(probs, key=probs.get)
            time.sleep(0.005)  # widen the window in which a second thread would collide
            return Analysis(
                id=None, pipeline=self.name, image_size=(arr.shape[0], arr.shape[1]), mask=mask,
                overlay=overlay,
                area_fraction=float(mask.mean()), components=[{"area_px": int(mask.sum())}], label=label,
                probabilities=probs, uncertainty=0.1, out_of_scope=False,
                features={"mean_intensity": float(grey.mean()), "clahe": clahe, "shape": {"h": arr.shape[0]}},
                recommendation="Routine follow-up." if label == self.classes[0] else "Refer for review.",
                notice="Research tool, not a diagnosis.",
                gradcam=rgb[..., ::-1].copy() if gradcam else None,
                timings_ms={"segmentation": 1.0, "classification": 1.0},
                tta=tta is not False,  # None: as each model recorded; these fakes record nothing (on)
                groups=group_scores(probs, list(map(ClassGroup.from_dict, self.groups))),
                class_names={self.classes[1]: "Malignant lesion"},
                findings=list(FAKE_FINDINGS), gradcam_inside_region=0.3 if gradcam else None,
                learnt_from={c: f"{c} films of one clinic" for c in self.classes},
                mask_classes=["background", "region"], colour_key=[KeyEntry("region", "#00e640", "region")],
                input_notes=list(getattr(image, "notes", [])),  # as a Pipeline carries the record's
                original_size=getattr(image, "original_size", None),
            )  # fmt: skip
        finally:
            self._busy.release()


# ----------------------------------------------------------------------------------------------- images
def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def rgb_image(size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 120, size=(size, size, 3), dtype=np.uint8)
    img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] += 120
    return img


def rgba_png(size: int = 32) -> bytes:
    rgba = np.dstack([rgb_image(size), np.full((size, size), 200, np.uint8)])
    return png_bytes(rgba)


def png16_bytes(size: int = 32) -> bytes:
    arr = (np.arange(size * size, dtype=np.uint16).reshape(size, size) * 60).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # PIL writes mode I;16 as a 16-bit grey PNG
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` 8-bit grey pixels; the data holds one row."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * min(width, 1024))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def corrupt_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_image(64)).save(buf, format="JPEG")
    data = buf.getvalue()
    return data[: len(data) // 3] + b"\x00" * 50  # valid header, truncated and garbled scan data


def _fake_patient_dicom() -> Any:
    """A Secondary Capture DICOM data set with fake patient fields and no pixels."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "SECRET-PATIENT-123", "OT"
    return ds


def _dicom_bytes(ds: Any) -> bytes:
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def dicom_without_pixels() -> bytes:
    """A valid DICOM file (with fake patient fields) that has no PixelData."""
    return _dicom_bytes(_fake_patient_dicom())


def dicom_with_pixels(size: int = 32) -> bytes:
    """A grey 8-bit DICOM image carrying fake patient fields."""
    ds = _fake_patient_dicom()
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb_image(size)[..., 0].tobytes()
    return _dicom_bytes(ds)


# ----------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """Run an ASGI app with uvicorn on 127.0.0.1:<free port> in a daemon thread (context manager)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
