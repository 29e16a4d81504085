"""DICOM SEG output (highdicom) for a predicted 2D mask; helpers keeping patient identifiers out of storage.

`make_dicom_seg` builds a BINARY ``Segmentation`` with one segment whose algorithm identification names
medlens and its version, referencing its single-frame source image (MONOCHROME1/2 X-ray, RGB secondary
capture, ...). Patient and study fields come from the source only: highdicom copies them; Type 2 fields the
source lacks are written empty, never invented. The source may be a path / bytes (read with pydicom; it must
hold pixel data) or a ``pydicom.Dataset``, including ``ImageRecord.dicom`` whose pixel data was dropped on
reading (its image attributes Rows, Columns, SamplesPerPixel... remain, which is all the SEG needs).

`deidentified_copy` (= `medlens.data.io.deidentify`), `safe_summary` and `scrub_mapping` are what to use
before storing or logging anything derived from a DICOM header.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import medlens
from medlens.data.io import deidentify
from medlens.errors import ImageReadError, MedlensError, UnknownNameError

if TYPE_CHECKING:
    import highdicom as hd
    import pydicom

logger = logging.getLogger(__name__)

#: Type 2 attributes highdicom copies from the source; written empty when the source lacks them.
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_IMAGE_KEYWORDS = (
    "Rows",
    "Columns",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)
#: Header fields that identify nobody and may be logged or stored.
SAFE_KEYWORDS = (
    "Modality",
    "SOPClassUID",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsStored",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "NumberOfFrames",
)


# SNOMED CT codes of the anatomical structures a multi-class model's classes may be named after.
ANATOMY_CODES = {
    "lung": ("39607008", "Lung"),
    "left_lung": ("44029006", "Left lung"),
    "right_lung": ("3341006", "Right lung"),
    "heart": ("80891009", "Heart"),
}


def segment_types() -> dict[str, tuple[Any, Any]]:
    """``name -> (segmented property category, segmented property type)`` SNOMED CT codes by structure."""
    from pydicom.sr.codedict import codes

    abnormal = codes.SCT.MorphologicallyAbnormalStructure
    return {
        "lesion": (abnormal, codes.SCT.Lesion),
        "skin_lesion": (abnormal, codes.SCT.SkinLesion),
        "polyp": (abnormal, codes.SCT.PolypOfColon),
        "lung": (codes.SCT.AnatomicalStructure, codes.SCT.Lung),
    }


def deidentified_copy(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Deep copy of ``ds`` without patient/person identifiers and private tags (= data.io.deidentify)."""
    return deidentify(ds)


def safe_summary(ds: pydicom.Dataset) -> dict[str, Any]:
    """Non-identifying header facts (`SAFE_KEYWORDS`) as JSON-safe values, for logs and stored metadata."""
    out: dict[str, Any] = {}
    for keyword in SAFE_KEYWORDS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, int | float):
            out[keyword] = value
        elif hasattr(value, "__iter__") and not isinstance(value, str):
            out[keyword] = [float(v) for v in value]
        else:
            out[keyword] = str(value)
    return out


def _norm(key: str) -> str:
    return re.sub(r"[^a-z]", "", key.lower())


_IDENTIFYING_KEYS = {
    _norm(k)
    for k in (
        *TYPE2_PATIENT_STUDY,
        "PatientAge",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientMotherBirthName",
        "InstitutionName",
        "InstitutionAddress",
        "OperatorsName",
        "PerformingPhysicianName",
        "PhysiciansOfRecord",
        "StationName",
        "DeviceSerialNumber",
    )
}


def scrub_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of a (nested) mapping without patient/person keys in any spelling ("PatientName", "patient_name").

    Meant for metadata about to be stored or logged (e.g. a JSON header dump or form fields).
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        if _norm(str(key)) in _IDENTIFYING_KEYS or _norm(str(key)).startswith("patient"):
            continue
        out[key] = scrub_mapping(value) if isinstance(value, Mapping) else value
    return out


def read_source(source: str | Path | bytes | pydicom.Dataset, name: str | None = None) -> pydicom.Dataset:
    """The source image dataset, read with pydicom from a path or bytes (it must hold pixel data) or given.

    Raises `ImageReadError` naming the file for a non-DICOM file, missing pixel data or image attributes, or a
    multi-frame image: a path by itself; bytes, and a dataset without a file name, by ``name`` (an upload's
    file name; without one ``"<upload>"`` and ``"<dataset>"``).
    """
    import pydicom

    if isinstance(source, pydicom.Dataset):
        name, ds = str(getattr(source, "filename", None) or name or "<dataset>"), source
    else:
        name = name if isinstance(source, bytes) else str(source)  # None: ImageReadError's "<upload>"
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            ds = pydicom.dcmread(fp)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError) as e:
            raise ImageReadError(name, f"not a readable DICOM file ({type(e).__name__})") from e
        if not any(k in ds for k in _PIXEL_KEYWORDS):
            raise ImageReadError(name, "DICOM file has no pixel data; a SEG needs an image as its source")
    missing = [k for k in _IMAGE_KEYWORDS if k not in ds]
    if missing:
        raise ImageReadError(name, f"DICOM source lacks {', '.join(missing)}")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageReadError(name, "multi-frame DICOM sources are not supported; use one 2D image per file")
    return ds


def _with_type2(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Shallow copy of ``ds`` where missing Type 2 patient/study attributes are present and empty."""
    import copy

    out = copy.copy(ds)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in out:
            setattr(out, keyword, None)
    return out


def _anatomy_code(name: str) -> Any:
    """The SNOMED CT code of a class named after an anatomical structure (`ANATOMY_CODES`), else None."""
    from pydicom.sr.coding import Code

    known = ANATOMY_CODES.get(name.lower())
    return Code(known[0], "SCT", known[1]) if known else None


def make_dicom_seg(
    mask: np.ndarray,
    source: str | Path | bytes | pydicom.Dataset,
    segment: str = "lesion",
    label: str | None = None,
    series_number: int = 100,
    series_description: str = "medlens segmentation",
    classes: Sequence[str] | None = None,
    *,
    name: str | None = None,
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of ``mask`` over its source image: one segment, or one per class of a label mask.

    Args:
        mask: ``(H, W)`` mask at the source's Rows x Columns; any non-zero value is the segment, or with
            more than two ``classes`` the class index of each pixel.
        source: the source image (path, bytes or ``pydicom.Dataset``), see `read_source`.
        segment: structure kind, a key of `segment_types`: ``"lesion"``, ``"skin_lesion"``, ``"polyp"``,
            ``"lung"``.
        label: segment label (default: ``segment``).
        series_number / series_description: of the new SEG series.
        classes: a multi-class model's class names, background first: segment ``k`` is class ``k``, labelled
            with its name and coded as that structure when the name is one (`ANATOMY_CODES`: left lung,
            heart...), else as ``segment``.
        name: what errors call a source given as bytes (the upload's file name), see `read_source`.
    Returns:
        the ``highdicom.seg.Segmentation`` (a ``pydicom.Dataset``), new Series/SOP Instance UIDs, same study.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    kinds = segment_types()
    if segment not in kinds:
        raise UnknownNameError("segment type", segment, list(kinds))
    src = read_source(source, name)
    mask = np.asarray(mask)
    shape = (int(src.Rows), int(src.Columns))
    if mask.ndim != 2 or mask.shape != shape:
        raise MedlensError(
            f"mask shape {mask.shape} does not match the DICOM source's Rows x Columns {shape}"
        )
    category, prop_type = kinds[segment]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medlens", family=codes.DCM.ArtificialIntelligence, version=medlens.__version__
    )
    names = list(classes)[1:] if classes is not None and len(classes) > 2 else [label or segment]
    if len(names) > 1 and int(mask.max(initial=0)) > len(names):
        raise MedlensError(f"mask label {int(mask.max())} is not one of the {len(names)} classes {names}")
    descriptions = []
    for number, name in enumerate(names, start=1):
        anatomy = _anatomy_code(name) if len(names) > 1 else None
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=codes.SCT.AnatomicalStructure if anatomy else category,
                segmented_property_type=anatomy or prop_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=[_with_type2(src)],
        # a label map: highdicom writes pixel value k into segment k
        pixel_array=mask.astype(np.uint8) if len(names) > 1 else (mask > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medlens",
        manufacturer_model_name="medlens",
        software_versions=medlens.__version__,
        device_serial_number="none",
        omit_empty_frames=False,  # an empty prediction is still a result worth storing
        series_description=series_description,
    )
    logger.info("DICOM SEG built: %s, %d foreground pixels", safe_summary(src), int((mask > 0).sum()))
    return seg


def write_dicom_seg(
    mask: np.ndarray, source: str | Path | bytes | pydicom.Dataset, out: str | Path, **kwargs: Any
) -> Path:
    """Write `make_dicom_seg` (same arguments) to ``out``; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    make_dicom_seg(mask, source, **kwargs).save_as(out, enforce_file_format=True)
    return out


def dicom_seg_bytes(mask: np.ndarray, source: str | Path | bytes | pydicom.Dataset, **kwargs: Any) -> bytes:
    """`make_dicom_seg` (same arguments) as the bytes of a DICOM file, e.g. for a download."""
    buf = io.BytesIO()
    make_dicom_seg(mask, source, **kwargs).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read_dicom_seg_mask(
    seg: str | Path | bytes | pydicom.Dataset, source_sop_instance_uid: str, segment_number: int = 1
) -> np.ndarray:
    """The ``(H, W)`` uint8 0/1 mask a SEG holds for one source image and segment (zeros when it has none).

    Read with pydicom: highdicom's reader insists on SliceThickness in the Pixel Measures macro, which the
    standard requires only with a Frame of Reference (3D), so it refuses valid SEGs of 2D projection images
    with a spacing.
    """
    import pydicom
    from pydicom.dataset import Dataset

    if not isinstance(seg, pydicom.Dataset):
        seg = pydicom.dcmread(io.BytesIO(seg) if isinstance(seg, bytes) else seg)
    if seg.get("Modality") != "SEG":
        raise MedlensError(
            f"{getattr(seg, 'filename', '<dataset>')}: not a DICOM SEG (Modality {seg.get('Modality')})"
        )
    frames = np.asarray(seg.pixel_array, dtype=np.uint8).reshape(-1, int(seg.Rows), int(seg.Columns))
    out = np.zeros((int(seg.Rows), int(seg.Columns)), np.uint8)
    shared = seg.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ident = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        number = int(ident[0].ReferencedSegmentNumber)
        refs = {
            src.ReferencedSOPInstanceUID
            for derivation in item.get("DerivationImageSequence", [])
            for src in derivation.get("SourceImageSequence", [])
        }
        if number == segment_number and source_sop_instance_uid in refs:
            out |= (frame > 0).astype(np.uint8)
    return out
