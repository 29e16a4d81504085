"""Readers on files the tests write: PNG/JPEG/TIFF/BMP/DICOM, bad files, bombs, de-identification."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medlens.data.io import (
    deidentify,
    load_image,
    probe_image,
    read_dicom,
    read_image,
    read_mask,
    sniff_format,
)
from medlens.errors import ImageReadError


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))


# ------------------------------------------------------------------------------------------- raster formats
def test_png_grey_rgb_rgba_and_palette(tmp_path: Path) -> None:
    grey = _gradient()
    Image.fromarray(grey).save(tmp_path / "g.png")
    rec = read_image(tmp_path / "g.png")
    assert rec.array.shape == (24, 32, 1) and rec.array.dtype == np.uint8
    assert rec.source_format == "png" and rec.spacing_mm is None and rec.dicom is None
    np.testing.assert_array_equal(rec.array[..., 0], grey)

    rgb = np.stack([grey, 255 - grey, np.full_like(grey, 7)], -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(load_image(tmp_path / "c.png"), rgb)

    rgba = np.dstack([rgb, np.full_like(grey, 255)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    assert read_image(tmp_path / "opaque.png").notes == []  # an alpha channel that hides nothing: no note
    rgba[:, :4, 3] = 0  # transparent strip -> white after compositing
    rgba[:, 4:8, 3] = 128  # half transparent: half way to white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rec = read_image(tmp_path / "a.png")
    out = rec.array
    assert out.shape == (24, 32, 3)
    assert out[:, :4].min() == 255
    expected = np.rint(rgb[:, 4:8] * (128 / 255) + 255 * (1 - 128 / 255)).astype(np.uint8)
    np.testing.assert_array_equal(out[:, 4:8], expected)
    np.testing.assert_array_equal(out[:, 8:], rgb[:, 8:])
    assert len(rec.notes) == 1 and "transparent (25% of its pixels)" in rec.notes[0]
    assert "white background" in rec.notes[0] and rec.original_size is None

    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (24, 32, 3)


def test_la_and_16_bit_png_and_channel_conversion(tmp_path: Path) -> None:
    la = Image.merge("LA", [Image.fromarray(_gradient()), Image.new("L", (32, 24), 255)])
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png")[..., 0], _gradient())
    alpha = np.full((24, 32), 255, np.uint8)
    alpha[0, 0] = 0  # one see-through pixel of 768
    Image.merge("LA", [Image.fromarray(_gradient()), Image.fromarray(alpha)]).save(tmp_path / "la2.png")
    rec = read_image(tmp_path / "la2.png")
    assert rec.array.shape == (24, 32, 1) and rec.array[0, 0, 0] == 255  # grey stays grey, laid on white
    assert "under 1% of its pixels" in rec.notes[0]

    deep = np.tile(np.linspace(1000, 60000, 32), (24, 1)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = load_image(tmp_path / "deep.png")[..., 0]
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # the scaling is monotonic

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    luma = read_image(tmp_path / "red.png", channels=1).array
    assert luma.shape == (8, 8, 1) and int(luma[0, 0, 0]) == round(200 * 0.299)
    assert read_image(tmp_path / "la.png", channels=3).array.shape == (24, 32, 3)


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high; left half red
    arr[:, :20, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "o.jpg").array
    assert out.shape == (40, 20, 3)
    assert out[:15, :, 0].mean() > 200 and out[-15:, :, 0].mean() < 50  # the red half is now on top
    info = probe_image(tmp_path / "o.jpg")
    assert (info.width, info.height, info.source_format) == (20, 40, "jpeg")


def test_tiff_bmp_and_sniffing_ignores_extension(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (16, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.tif")
    Image.fromarray(rgb).save(tmp_path / "x.bmp")
    Image.fromarray(rgb).save(tmp_path / "really_png.jpg", format="PNG")
    for name, fmt in [("x.tif", "tiff"), ("x.bmp", "bmp"), ("really_png.jpg", "png")]:
        rec = read_image(tmp_path / name)
        assert rec.source_format == fmt
        np.testing.assert_array_equal(rec.array, rgb)
    deep = np.tile(np.arange(0, 4096, 128, dtype=np.uint16), (4, 1))
    Image.fromarray(deep).save(tmp_path / "deep.tif")
    assert load_image(tmp_path / "deep.tif").max() == 255
    Image.fromarray(rgb).save(tmp_path / "cm.tif", dpi=(254, 254))  # no centimetre unit -> no spacing
    assert read_image(tmp_path / "cm.tif").spacing_mm is None


def test_bytes_upload_is_read_and_errors_say_upload() -> None:
    buf = io.BytesIO()
    Image.fromarray(_gradient()).save(buf, format="PNG")
    assert read_image(buf.getvalue()).array.shape == (24, 32, 1)
    with pytest.raises(ImageReadError, match=r"cannot read <upload>: unknown file type"):
        read_image(b"hello, not an image at all")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file pretending to be a PNG\n" * 3, "unknown file type"),
    ],
)
def test_empty_and_text_files_are_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_truncated_jpeg_is_refused_and_probe_verify_sees_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg", quality=90)
    data = (tmp_path / "ok.jpg").read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: corrupt or truncated JPEG"):
        read_image(bad)
    assert probe_image(bad).width == 64  # the header alone is fine
    with pytest.raises(ImageReadError, match="truncated"):
        probe_image(bad, verify=True)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    with pytest.raises(ImageReadError, match=r"garbage\.jpg"):
        read_image(garbage)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # 30000x30000 8-bit grey
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    png += _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    assert path.stat().st_size < 200
    with pytest.raises(ImageReadError, match=r"bomb\.png: 30000x30000 pixels exceeds the limit of 64000000"):
        read_image(path)
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        probe_image(path)


def test_pixel_limit_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(_gradient()).save(tmp_path / "g.png")
    monkeypatch.setenv("MEDLENS_MAX_PIXELS", "500")
    with pytest.raises(ImageReadError, match=r"32x24 pixels exceeds the limit of 500"):
        read_image(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png", max_pixels=10_000).array.shape == (24, 32, 1)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)


def test_sniff_format() -> None:
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20) == "png"
    assert sniff_format(b"\xff\xd8\xff\xe1") == "jpeg"
    assert sniff_format(b"II*\x00") == "tiff" and sniff_format(b"MM\x00*") == "tiff"
    assert sniff_format(b"BM" + b"\x00" * 40) == "bmp"
    assert sniff_format(b"\x00" * 128 + b"DICM") == "dicom"
    assert sniff_format(b"GIF89a") is None and sniff_format(b"%PDF-1.4") is None


# --------------------------------------------------------------------------------------------------- masks
def test_read_mask_keeps_raw_values(tmp_path: Path) -> None:
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 3:6] = 3
    labels[6:, :] = 1
    pal = Image.fromarray(labels, "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 744)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "pal.png"), labels)  # palette indices, not colours

    Image.fromarray(np.stack([labels * 80] * 3, -1)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey_rgb.png"), labels * 80)

    colour = np.zeros((10, 12, 3), np.uint8)
    colour[..., 0] = labels * 80
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ImageReadError, match=r"colour\.png: colour mask"):
        read_mask(tmp_path / "colour.png")

    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), labels)
    Image.fromarray(labels.astype(np.uint16) * 1000).save(tmp_path / "big16.png")
    with pytest.raises(ImageReadError, match=r"do not fit in 0\.\.255"):
        read_mask(tmp_path / "big16.png")


# --------------------------------------------------------------------------------------------------- DICOM
def _dicom(pixels: np.ndarray | None, photometric: str = "MONOCHROME2", **fields) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "12345"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in fields.items():
        setattr(ds, key, value)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_min_max_monochrome1_and_spacing(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(0, 4000, 125), (8, 1))  # 8 x 32, 0..3875
    rec = read_dicom(_save(_dicom(pixels, PixelSpacing=[0.5, 0.25]), tmp_path / "m2.dcm"))
    assert rec.array.shape == (8, 32, 1) and rec.source_format == "dicom"
    assert rec.array.min() == 0 and rec.array.max() == 255
    assert np.all(np.diff(rec.array[0, :, 0].astype(int)) > 0)
    assert rec.spacing_mm == (0.5, 0.25)

    inv = read_dicom(_save(_dicom(pixels, "MONOCHROME1", ImagerPixelSpacing=[0.2, 0.2]), tmp_path / "m1.dcm"))
    np.testing.assert_array_equal(inv.array, 255 - rec.array)  # MONOCHROME1: high values are dark
    assert inv.spacing_mm == (0.2, 0.2)


def test_dicom_rescale_then_window(tmp_path: Path) -> None:
    hu = np.array([[-1000, -160, 40, 240, 1000, 40]])  # window 40 +- 200 HU
    ds = _dicom(hu + 1024, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    out = read_image(_save(ds, tmp_path / "ct.png")).array[0, :, 0]  # extension lies: still DICOM
    assert out[0] == 0 and out[1] == 0 and out[3] == 255 and out[4] == 255
    assert abs(int(out[2]) - 128) <= 1 and out[5] == out[2]
    # without applying the intercept the window (in HU) would fall on the stored values and saturate
    ds_no_rescale = _dicom(hu + 1024, WindowCenter=40, WindowWidth=400)
    assert read_dicom(_save(ds_no_rescale, tmp_path / "raw.dcm")).array[0, 2, 0] == 255


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (np.arange(4096) * 16).astype(np.uint16).tobytes()  # 16-bit ramp (OW)
    ds = _dicom(np.array([[0, 1024, 2048, 4095]]), VOILUTSequence=Sequence([item]))
    out = read_dicom(_save(ds, tmp_path / "lut.dcm")).array[0, :, 0]
    np.testing.assert_array_equal(out, [0, 64, 128, 255])


def test_dicom_without_pixels_and_multiframe_are_refused(tmp_path: Path) -> None:
    no_pixels = _dicom(None, Rows=8, Columns=8)
    with pytest.raises(ImageReadError, match=r"nopix\.dcm: DICOM file has no pixel data"):
        read_image(_save(no_pixels, tmp_path / "nopix.dcm"))
    frames = _dicom(np.zeros((2, 8, 8)), NumberOfFrames=2)
    with pytest.raises(ImageReadError, match=r"multi-frame DICOM \(2 frames\)"):
        read_image(_save(frames, tmp_path / "multi.dcm"))


def test_truncated_dicom_pixels_and_raw_dicom_without_meta(tmp_path: Path) -> None:
    ds = _dicom(np.zeros((8, 8)) + 5)
    ds.PixelData = ds.PixelData[:50]
    with pytest.raises(ImageReadError, match=r"cut\.dcm: cannot decode DICOM pixel data"):
        read_image(_save(ds, tmp_path / "cut.dcm"))
    raw = _dicom(np.arange(64).reshape(8, 8) * 10)
    del raw.file_meta
    raw.preamble = None
    buf = io.BytesIO()
    raw.save_as(buf, implicit_vr=True, little_endian=True)  # no preamble, no "DICM", no file meta
    assert sniff_format(buf.getvalue()[:132]) == "dicom"
    out = read_image(buf.getvalue()).array[..., 0]
    assert out[0, 0] == 0 and out[7, 7] == 255


def test_dicom_record_drops_pixels_and_hides_patient_in_repr(tmp_path: Path) -> None:
    path = _save(_dicom(np.zeros((4, 4)) + 100), tmp_path / "a.dcm")
    rec = read_image(path)
    assert "PixelData" not in rec.dicom and rec.dicom.PatientID == "12345"  # kept for SEG references
    assert rec.dicom.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "Doe" not in repr(rec) and "12345" not in repr(rec)
    assert read_image(path.read_bytes()).source_format == "dicom"
    assert probe_image(path, verify=True).width == 4


def test_deidentify_removes_identifiers_everywhere() -> None:
    ds = _dicom(np.zeros((4, 4)))
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.PatientAddress = "1 Main St"
    ds.OtherPatientIDs = "X9"
    ds.ReferringPhysicianName = "Who^Dr"
    ds.OperatorsName = "Op^Era"
    ds.InstitutionName = "General Hospital"
    ds.AccessionNumber = "A1"
    ds.PatientOrientation = ["L", "F"]
    ds.add_new(0x00091001, "LO", "private secret")
    nested = Dataset()
    nested.PerformingPhysicianName = "Nested^Doc"
    nested.CodeValue = "123"
    ds.ProcedureCodeSequence = Sequence([nested])
    out = deidentify(ds)
    for keyword in [
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAge",
        "PatientAddress",
        "OtherPatientIDs",
        "ReferringPhysicianName",
        "OperatorsName",
        "InstitutionName",
        "AccessionNumber",
    ]:
        assert keyword not in out, keyword
    assert not any(elem.tag.is_private for elem in out)
    assert "PerformingPhysicianName" not in out.ProcedureCodeSequence[0]
    assert out.ProcedureCodeSequence[0].CodeValue == "123"
    assert out.PatientOrientation == ["L", "F"] and out.StudyInstanceUID == ds.StudyInstanceUID
    assert out.PatientIdentityRemoved == "YES"
    assert ds.PatientName == "Doe^Jane" and "OperatorsName" in ds  # the source is untouched
    assert isinstance(out, pydicom.Dataset)


def test_images_decoded_reduced_keep_their_size_and_say_so(tmp_path: Path) -> None:
    Image.fromarray(_gradient(120, 200)).save(tmp_path / "wide.png")
    rec = read_image(tmp_path / "wide.png", max_side=64)
    assert rec.array.shape == (30, 50, 1) and rec.original_size == (120, 200)
    assert rec.notes == [
        "the image (200x120 pixels) is larger than 64 pixels a side, so it was decoded reduced to 50x30 and "
        "analysed at that size; sizes in pixels refer to the reduced image"
    ]
    small = read_image(tmp_path / "wide.png", max_side=200)
    assert small.original_size is None and small.notes == []

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200 wide and 120 high, shown turned: 120 wide and 200 high
    rgb = np.repeat(_gradient(120, 200)[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    turned = read_image(tmp_path / "turned.jpg", max_side=64)
    assert turned.original_size == (200, 120) and turned.array.shape[0] > turned.array.shape[1]
    assert "(120x200 pixels)" in turned.notes[0]

    dicom = read_image(_save(_dicom(np.zeros((8, 160)) + 5), tmp_path / "d.dcm"), max_side=40)
    assert dicom.array.shape == (2, 40, 1) and dicom.original_size == (8, 160) and "160x8" in dicom.notes[0]
