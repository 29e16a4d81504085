"""REST API: analyze, paging, delete, pictures by id, bad input -> 4xx JSON, auth, no stack traces."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medlens.app.api import create_app
from tests.helpers_app import (
    FakePipeline,
    bomb_png,
    corrupt_jpeg,
    dicom_with_pixels,
    dicom_without_pixels,
    png16_bytes,
    png_bytes,
    rgb_image,
    rgba_png,
)

TOKEN = "s3cret-token-for-tests"


def _app(tmp_path, token=None, **kw):
    pipelines = kw.pop("pipelines", None) or {"skin": FakePipeline("skin"), "polyp": FakePipeline("polyp")}
    home = tmp_path / "home"
    return create_app(
        models_dir=tmp_path / "models", home=home, token=token, pipelines=pipelines, ui=False, **kw
    )


@pytest.fixture()
def client(tmp_path):
    with TestClient(_app(tmp_path), raise_server_exceptions=False) as c:
        yield c


def _post(client, data: bytes, name: str = "x.png", **form):
    return client.post("/api/v1/analyze", files={"file": (name, data, "application/octet-stream")}, data=form)


def test_healthz_and_openapi_docs(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["pipelines"] == ["skin", "polyp"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/analyze" in paths and "/api/v1/analyses/{analysis_id}" in paths


def test_analyze_returns_the_documented_json_and_pictures(client):
    r = _post(client, png_bytes(rgb_image(40)), pipeline="polyp", clahe="true")
    assert r.status_code == 200, r.text
    body = r.json()
    for key in ("id", "pipeline", "segmentation", "classification", "features", "recommendation", "notice",
                "uncertainty", "out_of_scope", "gradcam_url", "timings", "created"):  # fmt: skip
        assert key in body, key
    assert body["pipeline"] == "polyp" and body["clahe"] is True
    seg, cls = body["segmentation"], body["classification"]
    assert seg["area_fractions"] == {}  # a binary mask: no structures to tell apart
    assert 0 < seg["area_fraction"] < 1 and seg["components"] == [
        {"area_px": seg["components"][0]["area_px"]}
    ]
    assert set(cls["probabilities"]) == {"benign", "malignant"}
    assert abs(sum(cls["probabilities"].values()) - 1) < 1e-6 and cls["label"] in cls["probabilities"]
    assert body["features"]["clahe"] is True and body["timings"]["decode"] >= 0
    assert r.headers["cache-control"] == "no-store"
    for url in (
        seg["mask_url"],
        seg["overlay_url"],
        body["gradcam_url"],
        body["image_url"],
        body["thumbnail_url"],
    ):
        pic = client.get(url)
        assert pic.status_code == 200 and pic.headers["content-type"] == "image/png", url
        assert Image.open(io.BytesIO(pic.content)).size == (40, 40)
    mask = np.asarray(Image.open(io.BytesIO(client.get(seg["mask_url"]).content)))
    assert set(np.unique(mask)) <= {0, 255}
    assert client.get(f"/api/v1/analyses/{body['id']}").json() == body


def test_default_pipeline_and_valid_but_unusual_images(client):
    for data in (rgba_png(), png16_bytes(), dicom_with_pixels()):
        r = _post(client, data, name="upload.bin")
        assert r.status_code == 200, r.text
        assert r.json()["pipeline"] == "skin"
    assert client.get("/api/v1/analyses").json()["total"] == 3


@pytest.mark.parametrize(
    ("payload", "status", "words"),
    [
        (lambda: corrupt_jpeg(), 422, "corrupt"),
        (lambda: b"just some text, not an image\n" * 4, 422, "unknown file type"),
        (lambda: bomb_png(30000, 30000), 413, "30000x30000 pixels exceeds"),
        (lambda: dicom_without_pixels(), 422, "no pixel data"),
        (lambda: b"", 422, "empty"),
    ],
    ids=["corrupt-jpeg", "text-as-png", "30000x30000-png", "dicom-no-pixels", "empty"],
)
def test_bad_uploads_get_a_clear_4xx_and_the_server_keeps_serving(client, payload, status, words):
    r = _post(client, payload(), name="image.png")
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail.lower(), detail
    assert "Traceback" not in r.text and "SECRET-PATIENT" not in r.text
    assert _post(client, png_bytes(rgb_image(24))).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_a_bad_dicom_upload_is_named_by_its_file_name(client):
    r = _post(client, dicom_without_pixels(), name="C:\\scans\\scan.dcm")
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("cannot read scan.dcm: DICOM file has no pixel data"), r.text
    assert "<upload>" not in r.text and "SECRET-PATIENT" not in r.text


def test_pixel_limit_applies_to_headers_and_to_the_reader(tmp_path):
    """PNG headers are checked before decoding; DICOM (no Pillow header) is refused by read_image: 413."""
    with TestClient(_app(tmp_path, max_pixels=1000)) as c:
        r = _post(c, png_bytes(rgb_image(40)))  # 1600 pixels
        assert r.status_code == 413 and "1000" in r.json()["detail"]
        r = _post(c, dicom_with_pixels(32))  # 1024 pixels
        assert r.status_code == 413 and "1000" in r.json()["detail"]
        assert _post(c, png_bytes(rgb_image(30))).status_code == 200


def test_unknown_pipeline_lists_the_valid_ones(client):
    r = _post(client, png_bytes(rgb_image(24)), pipeline="brain")
    assert r.status_code == 422
    assert "brain" in r.json()["detail"] and r.json()["valid"] == ["skin", "polyp"]


def test_missing_file_field_is_a_readable_422(client):
    r = client.post("/api/v1/analyze", data={"pipeline": "skin"})
    assert r.status_code == 422 and "file" in r.json()["detail"]


def test_upload_size_limit_is_enforced_while_reading(tmp_path):
    with TestClient(_app(tmp_path, max_upload_mb=0.05)) as c:  # 52 KB
        big = png_bytes(np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8))
        assert len(big) > 60_000
        r = _post(c, big)
        assert r.status_code == 413 and "limit" in r.json()["detail"]

        # a streamed body without Content-Length is cut off as it arrives
        def chunks():
            yield b"x" * 40_000
            yield b"x" * 40_000
            yield b"x" * 40_000

        r = c.post(
            "/api/v1/analyze", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert r.status_code == 413
        assert _post(c, png_bytes(rgb_image(24))).status_code == 200


def test_paging_filters_get_and_delete(client, tmp_path):
    ids = []
    for i in range(5):
        r = _post(client, png_bytes(rgb_image(20, seed=i)), pipeline="skin" if i < 3 else "polyp")
        ids.append(r.json()["id"])
    page = client.get("/api/v1/analyses", params={"page": 2, "page_size": 2}).json()
    assert page["total"] == 5 and page["page"] == 2 and page["page_size"] == 2
    assert [it["id"] for it in page["items"]] == ids[::-1][2:4]
    polyp = client.get("/api/v1/analyses", params={"pipeline": "polyp"}).json()
    assert polyp["total"] == 2 and {it["pipeline"] for it in polyp["items"]} == {"polyp"}
    label = polyp["items"][0]["classification"]["label"]
    by_label = client.get("/api/v1/analyses", params={"label": label}).json()
    assert by_label["total"] >= 1 and all(it["classification"]["label"] == label for it in by_label["items"])
    assert client.get("/api/v1/analyses", params={"page": 0}).status_code == 422
    assert client.get("/api/v1/analyses", params={"page_size": 1000}).status_code == 422
    assert client.get("/api/v1/analyses", params={"out_of_scope": "true"}).json()["total"] == 0
    assert client.get("/api/v1/analyses", params={"out_of_scope": "false"}).json()["total"] == 5

    victim = client.get(f"/api/v1/analyses/{ids[0]}").json()
    assert client.delete(f"/api/v1/analyses/{ids[0]}").json() == {"deleted": ids[0]}
    assert client.get(f"/api/v1/analyses/{ids[0]}").status_code == 404
    assert client.get(victim["segmentation"]["mask_url"]).status_code == 404
    assert client.delete(f"/api/v1/analyses/{ids[0]}").status_code == 404
    assert client.get("/api/v1/analyses").json()["total"] == 4


def test_pictures_only_through_ids(client):
    rid = _post(client, png_bytes(rgb_image(20))).json()["id"]
    assert client.get(f"/api/v1/analyses/{rid}/secrets").status_code == 422
    for bad in ("..%2F..%2Fhistory.db", "0" * 32, "not-an-id"):
        assert client.get(f"/api/v1/analyses/{bad}/image").status_code in (404, 422), bad
    assert client.get("/api/v1/analyses/../../etc/passwd").status_code == 404


def test_token_required_on_api_but_not_on_healthz(tmp_path):
    with TestClient(_app(tmp_path, token=TOKEN)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/api/v1/models")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/api/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/v1/models", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert _post(c, png_bytes(rgb_image(20))).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/api/v1/models", headers=auth).status_code == 200
        r = c.post("/api/v1/analyze", files={"file": ("a.png", png_bytes(rgb_image(20)))}, headers=auth)
        assert r.status_code == 200
        assert c.get(r.json()["image_url"]).status_code == 401
        assert c.get(r.json()["image_url"], headers=auth).status_code == 200


def test_injected_failure_is_a_500_with_an_id_and_no_stack_trace(tmp_path, caplog):
    app = _app(tmp_path, pipelines={"skin": FakePipeline("skin", fail=True)})
    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR):
        r = _post(c, png_bytes(rgb_image(20)))
        assert r.status_code == 500
        body = r.json()
        assert body["detail"] == "internal error" and len(body["id"]) == 12
        assert "SECRET-TRACEBACK-MARKER" not in r.text and "Traceback" not in r.text
        assert c.get("/healthz").status_code == 200
    assert body["id"] in caplog.text and "SECRET-TRACEBACK-MARKER" in caplog.text  # logged server-side
    assert c.app.state.service.store.count() == 0


def test_models_endpoint_lists_pipelines_and_bundles(tmp_path):
    pytest.importorskip("medlens.inference.bundle")
    from tests.helpers_inference import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path, "classification", name="tiny-cls", arch="mobilenetv3_small_050")
    (bundle / "roc.png").write_bytes(png_bytes(rgb_image(16)))
    with TestClient(_app(tmp_path)) as c:
        models = c.get("/api/v1/models").json()
        assert [p["name"] for p in models["pipelines"]] == ["skin", "polyp"]
        (info,) = models["bundles"]
        assert info["name"] == "tiny-cls" and info["task"] == "classification"
        assert info["metrics"] and "path" not in info and "roc.png" in info["plots"]
        assert c.get("/api/v1/models/tiny-cls/plots/roc.png").status_code == 200
        assert "reliability.png" not in info["plots"]
        assert c.get("/api/v1/models/tiny-cls/plots/reliability.png").status_code == 404
        assert c.get("/api/v1/models/tiny-cls/plots/bundle.json").status_code == 404


def test_no_pipelines_is_503(tmp_path):
    with TestClient(
        create_app(models_dir=tmp_path / "none", home=tmp_path / "home", pipelines={}, ui=False)
    ) as c:
        r = _post(c, png_bytes(rgb_image(20)))
        assert r.status_code == 503 and "no pipeline" in r.json()["detail"]


def test_dicom_upload_is_stored_as_pixels_only(client, tmp_path):
    r = _post(client, dicom_with_pixels(), name="Doe_Jane_SECRET.dcm")
    assert r.status_code == 200 and r.json()["source_format"] == "dicom"
    home = tmp_path / "home"
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert (
                b"SECRET-PATIENT-123" not in data and b"Doe^Jane" not in data and b"Doe_Jane" not in data
            ), path
            assert b"DICM" not in data[:200], path
