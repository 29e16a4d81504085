"""The UI's temporary files (uploads with their DICOM headers, mask downloads) are removed on delete, by age,
and at shutdown; nothing outside Gradio's upload folder or the janitor's own folder is ever touched, nor what
Gradio serves from that folder for its components (examples, the dashboard's plots, shown pictures)."""

from __future__ import annotations

import os
import shutil
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from medlens.app.cleanup import PREFIX, TempJanitor
from tests.helpers_app import FakePipeline, dicom_with_pixels


@pytest.fixture()
def janitor(tmp_path):
    uploads = tmp_path / "gradio"
    uploads.mkdir()
    j = TempJanitor(max_age_s=60, uploads=uploads)
    # what the janitor reads of Gradio's Blocks: the files its /upload route received, and each component's
    # keep_in_cache (the cached copies of examples and static images such as the dashboard's plots)
    j.attach(SimpleNamespace(upload_file_set=set(), blocks={}))
    yield j
    j.close()


def _cached(janitor: TempJanitor, name: str, data: bytes = b"DICM header") -> os.PathLike:
    folder = janitor.uploads / name.replace(".", "-")
    folder.mkdir()
    path = folder / name
    path.write_bytes(data)
    return path


def _upload(janitor: TempJanitor, name: str, data: bytes = b"DICM header") -> os.PathLike:
    """A file as Gradio's /upload route writes it (and records it in ``Blocks.upload_file_set``)."""
    path = _cached(janitor, name, data)
    janitor._blocks.upload_file_set.add(str(path))
    return path


def _served(janitor: TempJanitor, name: str, mtime: float) -> os.PathLike:
    """Gradio's cached copy of a component's file (shutil.copy2: the source's old mtime), kept for serving."""
    path = _cached(janitor, name, b"png")
    os.utime(path, (mtime, mtime))
    janitor._blocks.blocks[len(janitor._blocks.blocks)] = SimpleNamespace(keep_in_cache={str(path)})
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


def test_sweep_leaves_the_files_gradio_serves_however_old(janitor):
    day_ago = time.time() - 86400
    plot = _served(janitor, "test_roc.png", day_ago)  # a dashboard plot, copied at startup with its old mtime
    example = _served(janitor, "cju13fwthn9mq0835gacxgy01.jpg", day_ago)
    shown = _cached(janitor, "image.webp")  # a picture Gradio saved for an output: Gradio's own to remove
    os.utime(shown, (day_ago, day_ago))
    upload = _upload(janitor, "old.dcm")
    os.utime(upload, (day_ago, day_ago))
    janitor.sweep()
    assert plot.exists() and example.exists() and shown.exists() and not upload.exists()
    janitor.sweep(now=time.time() + 86400)
    assert plot.exists() and example.exists() and shown.exists()


def test_deleting_an_analysis_leaves_the_example_it_was_made_from(janitor):
    example = _served(janitor, "cju13fwthn9mq0835gacxgy01.jpg", time.time())
    janitor.track("a", example)
    janitor.forget("a")
    assert example.exists()
    janitor.track("b", example)
    janitor.sweep(now=time.time() + 86400)
    janitor.close()
    assert example.exists()


def test_an_upload_analysed_twice_stays_until_its_last_analysis_is_deleted(janitor):
    upload = _upload(janitor, "scan.dcm")
    janitor.track("a", upload)
    janitor.track("b", upload)
    janitor.forget("a")
    assert upload.exists()
    janitor.forget("b")
    assert not upload.exists()


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
        upload = _cached(handlers.janitor, "patient.dcm", dicom_with_pixels())
        app.state.demo.upload_file_set.add(str(upload))  # as Gradio's /upload route records it
        *_, mask_file, _ = handlers.analyze(str(upload), "skin", False, True, 0.5)
        mask_file = mask_file["value"]
        assert upload.exists() and os.path.exists(mask_file)
    assert not upload.exists() and not folder.exists()  # lifespan shutdown ran the janitor
    assert app.state.service.store.count() == 1  # the de-identified history stays
