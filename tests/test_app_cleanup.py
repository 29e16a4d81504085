"""The UI's temporary files (uploads with their DICOM headers, mask downloads) are removed on delete, by age,
and at shutdown; nothing outside Gradio's upload folder or the janitor's own folder is ever touched."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from fastapi.testclient import TestClient

from medlens.app.cleanup import PREFIX, TempJanitor
from tests.helpers_app import FakePipeline, dicom_with_pixels


@pytest.fixture()
def janitor(tmp_path):
    uploads = tmp_path / "gradio"
    uploads.mkdir()
    j = TempJanitor(max_age_s=60, uploads=uploads)
    yield j
    j.close()


def _upload(janitor: TempJanitor, name: str, data: bytes = b"DICM header") -> os.PathLike:
    folder = janitor.uploads / name.replace(".", "-")
    folder.mkdir()
    path = folder / name
    path.write_bytes(data)
    return path


def test_delete_removes_the_upload_and_the_mask_copy(janitor, tmp_path):
    upload = _upload(janitor, "scan.dcm")
    mask = janitor.folder / "medlens-mask-abc.png"
    mask.write_bytes(b"png")
    outside = tmp_path / "example.png"
    outside.write_bytes(b"an example image")
    for path in (upload, mask, outside):
        janitor.track("abc", path)
    janitor.forget("abc")
    assert not upload.exists() and not upload.parent.exists() and not mask.exists()
    assert outside.exists()  # never tracked: outside the upload and janitor folders


def test_sweep_removes_old_files_and_stale_folders_only(janitor, tmp_path):
    old, new = _upload(janitor, "old.dcm"), _upload(janitor, "new.dcm")
    failed = _upload(janitor, "failed.dcm")  # its analysis failed: never tracked, still removed by age
    janitor.track("a", old)
    janitor.track("b", new)
    dead = janitor.folder.parent / f"{PREFIX}999999999-left-by-a-killed-server"
    live = janitor.folder.parent / f"{PREFIX}{os.getppid()}-another-running-server"
    hour_ago = time.time() - 3600
    for folder in (dead, live):
        folder.mkdir(exist_ok=True)
        (folder / "medlens-mask-x.png").write_bytes(b"png")
        os.utime(folder, (hour_ago, hour_ago))
    for path in (old, failed):
        os.utime(path, (hour_ago, hour_ago))
    assert janitor.sweep() >= 3
    assert not old.exists() and not failed.exists() and new.exists() and janitor.folder.exists()
    assert not dead.exists() and live.exists()  # another live server's downloads stay
    shutil.rmtree(live)


def test_shutdown_removes_everything_of_this_server(tmp_path, monkeypatch):
    from medlens.app import cleanup
    from medlens.app.api import create_app

    uploads = tmp_path / "gradio-uploads"
    uploads.mkdir()
    monkeypatch.setattr(cleanup, "gradio_upload_folder", lambda: uploads)
    app = create_app(
        models_dir=tmp_path / "models", home=tmp_path / "home", pipelines={"skin": FakePipeline("skin")}
    )
    handlers = app.state.demo.medlens_handlers
    folder = handlers.janitor.folder
    with TestClient(app):
        upload = _upload(handlers.janitor, "patient.dcm", dicom_with_pixels())
        *_, mask_file, _ = handlers.analyze(str(upload), "skin", False, True, 0.5)
        assert upload.exists() and os.path.exists(mask_file)
    assert not upload.exists() and not folder.exists()  # lifespan shutdown ran the janitor
    assert app.state.service.store.count() == 1  # the de-identified history stays
