"""DICOM SEG round trips on sources made here with pydicom (MONOCHROME2 X-ray and RGB secondary capture)."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medlens.data.io import read_dicom
from medlens.errors import ImageReadError, MedlensError, UnknownNameError
from medlens.pipelines.dicom_seg import (
    deidentified_copy,
    dicom_seg_bytes,
    read_dicom_seg_mask,
    safe_summary,
    scrub_mapping,
    write_dicom_seg,
)

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def make_source(path: Path, rgb: bool, patient: bool = True, size: int = 64, spacing: bool = True) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage if rgb else DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "XC" if rgb else "DX"
    if patient:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "P-17", "19700101", "F"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240102", "101500", "ACC1", "S1"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if spacing:
        ds.PixelSpacing = [0.2, 0.2]
    shape = (size, size, 3) if rgb else (size, size)
    ds.PixelData = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def lesion_mask(size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[10:30, 20:45] = 1
    m[40:50, 5:12] = 1
    return m


@pytest.mark.parametrize("rgb", [False, True], ids=["monochrome2", "rgb-secondary-capture"])
def test_round_trip_keeps_mask_reference_and_patient(tmp_path, rgb):
    src_path = make_source(tmp_path / "src.dcm", rgb=rgb)
    src = pydicom.dcmread(src_path)
    mask = lesion_mask()
    out = write_dicom_seg(mask, src_path, tmp_path / "out" / "seg.dcm", segment="lesion")
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert str(seg.PatientName) == str(src.PatientName) and seg.PatientID == src.PatientID
    item = seg.SegmentSequence[0]
    assert item.SegmentAlgorithmName == "medlens"
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    np.testing.assert_array_equal(read_dicom_seg_mask(out, src.SOPInstanceUID), mask)


def test_source_without_patient_fields_stays_empty_and_record_dataset_works(tmp_path):
    src_path = make_source(tmp_path / "anon.dcm", rgb=False, patient=False, spacing=False)
    record = read_dicom(src_path)  # ImageRecord.dicom: the source without its pixel data
    assert "PixelData" not in record.dicom
    data = dicom_seg_bytes(lesion_mask(), record.dicom, segment="lung")
    seg = pydicom.dcmread(io.BytesIO(data))
    assert str(seg.get("PatientName", "")) == "" and str(seg.get("PatientID", "")) == ""
    assert str(seg.get("PatientBirthDate", "")) == ""
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lung"
    np.testing.assert_array_equal(read_dicom_seg_mask(data, record.dicom.SOPInstanceUID), lesion_mask())
    # highdicom reads it too (its reader wants SliceThickness whenever there is a pixel spacing)
    hd_seg = hd.seg.Segmentation.from_dataset(seg)
    pixels = hd_seg.get_pixels_by_source_instance([record.dicom.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, ..., 0], lesion_mask())


def test_label_mask_gives_one_coded_segment_per_class(tmp_path):
    src_path = make_source(tmp_path / "cxr.dcm", rgb=False)
    uid = pydicom.dcmread(src_path).SOPInstanceUID
    labels = np.zeros((64, 64), np.uint8)
    labels[10:50, 6:28], labels[10:50, 36:58], labels[30:50, 28:36] = 2, 1, 3
    classes = ["background", "left_lung", "right_lung", "heart"]
    data = dicom_seg_bytes(labels, src_path, segment="lung", classes=classes)
    seg = pydicom.dcmread(io.BytesIO(data))
    meanings = [item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for item in seg.SegmentSequence]
    assert meanings == ["Left lung", "Right lung", "Heart"]
    assert [item.SegmentLabel for item in seg.SegmentSequence] == classes[1:]
    for number in (1, 2, 3):
        np.testing.assert_array_equal(read_dicom_seg_mask(data, uid, segment_number=number), labels == number)
    # a class name that is no known structure is coded as the pipeline's structure kind
    other = dicom_seg_bytes(labels.clip(0, 2), src_path, segment="lesion", classes=["bg", "a", "b"])
    types = [
        i.SegmentedPropertyTypeCodeSequence[0].CodeMeaning
        for i in pydicom.dcmread(io.BytesIO(other)).SegmentSequence
    ]
    assert types == ["Lesion", "Lesion"]
    with pytest.raises(MedlensError, match="label 3 is not one of the 2 classes"):
        dicom_seg_bytes(labels, src_path, classes=["bg", "a", "b"])


def test_empty_mask_is_written(tmp_path):
    src_path = make_source(tmp_path / "s.dcm", rgb=True)
    data = dicom_seg_bytes(np.zeros((64, 64), np.uint8), src_path)
    uid = pydicom.dcmread(src_path).SOPInstanceUID
    assert not read_dicom_seg_mask(data, uid).any()


def test_bad_inputs_name_the_file(tmp_path):
    src_path = make_source(tmp_path / "s.dcm", rgb=False)
    with pytest.raises(MedlensError, match="does not match"):
        dicom_seg_bytes(np.zeros((32, 32), np.uint8), src_path)
    with pytest.raises(UnknownNameError, match="lung"):
        dicom_seg_bytes(lesion_mask(), src_path, segment="kidney")
    no_pixels = pydicom.dcmread(src_path)
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"nopix\.dcm.*no pixel data"):
        dicom_seg_bytes(lesion_mask(), tmp_path / "nopix.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(ImageReadError, match=r"junk\.dcm"):
        dicom_seg_bytes(lesion_mask(), tmp_path / "junk.dcm")


def test_a_source_given_as_bytes_is_named_by_its_file_name(tmp_path):
    """Bytes have no path: errors call them by the name given (an upload's file name), "<upload>" without."""
    no_pixels = pydicom.dcmread(make_source(tmp_path / "s.dcm", rgb=False))
    del no_pixels.PixelData
    buf = io.BytesIO()
    no_pixels.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"^cannot read scan\.dcm: DICOM file has no pixel data"):
        dicom_seg_bytes(lesion_mask(), buf.getvalue(), name="scan.dcm")
    with pytest.raises(ImageReadError, match=r"^cannot read scan\.dcm: not a readable DICOM file"):
        dicom_seg_bytes(lesion_mask(), b"not a dicom file at all", name="scan.dcm")
    with pytest.raises(ImageReadError, match=r"^cannot read <upload>: DICOM file has no pixel data"):
        dicom_seg_bytes(lesion_mask(), buf.getvalue())
    with pytest.raises(ImageReadError, match=r"^cannot read scan\.dcm: DICOM file has no pixel data"):
        read_dicom(buf.getvalue(), name="scan.dcm")  # the reader takes the name too


def test_deidentification_helpers(tmp_path):
    ds = pydicom.dcmread(make_source(tmp_path / "s.dcm", rgb=False))
    clean = deidentified_copy(ds)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
        assert keyword not in clean and keyword in ds  # the original is untouched
    assert clean.SOPInstanceUID == ds.SOPInstanceUID
    summary = safe_summary(ds)
    assert summary["Modality"] == "DX" and summary["Rows"] == 64 and summary["PixelSpacing"] == [0.2, 0.2]
    assert "Doe" not in repr(summary) and "P-17" not in repr(summary)
    meta = {"patient_name": "x", "PatientID": "y", "Modality": "DX", "nested": {"patientAge": "40Y", "k": 1}}
    assert scrub_mapping(meta) == {"Modality": "DX", "nested": {"k": 1}}
