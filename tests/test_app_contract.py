"""The REST API's contract after the product review: typed OpenAPI schema, errors by type, the real size of a
too-large image, multipart reasons, the TTA field, class groups and names, readable features, throttling of
failed credentials, offline docs, and large images decoded reduced."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medlens.app.api import create_app
from medlens.errors import ImageReadError, InternalError, MedlensError, UnknownNameError
from tests.helpers_app import FakePipeline, bomb_png, png_bytes, rgb_image

TOKEN = "tok-for-contract-tests"
GROUP = {"name": "malignant", "classes": ["malignant"], "threshold": 0.3, "target_sensitivity": 0.9,
         "sensitivity": 0.92, "specificity": 0.55}  # fmt: skip


def _client(tmp_path, pipelines=None, **kw) -> TestClient:
    pipelines = pipelines or {"skin": FakePipeline("skin"), "polyp": FakePipeline("polyp")}
    app = create_app(
        models_dir=tmp_path / "models", home=tmp_path / "home", pipelines=pipelines, ui=False, **kw
    )
    return TestClient(app, raise_server_exceptions=False)


def _post(client, data: bytes, name: str = "x.png", headers=None, **form):
    files = {"file": (name, data, "application/octet-stream")}
    return client.post("/api/v1/analyze", files=files, data=form, headers=headers or {})


def test_openapi_types_the_analysis_and_lists_the_error_responses(tmp_path):
    with _client(tmp_path) as c:
        spec = c.get("/openapi.json").json()
    post = spec["paths"]["/api/v1/analyze"]["post"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnalysisView"
    }
    assert {"401", "413", "422", "429", "500"} <= set(post["responses"])
    schemas = spec["components"]["schemas"]
    assert {"segmentation", "classification", "tta", "feature_details"} <= set(
        schemas["AnalysisView"]["properties"]
    )
    assert {"groups", "label_name", "class_names"} <= set(schemas["Classification"]["properties"])
    assert "tta" in str(spec["components"]["schemas"])  # the form field is documented
    listing = spec["paths"]["/api/v1/analyses"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listing["schema"] == {"$ref": "#/components/schemas/AnalysisPage"}


def test_tta_default_is_stated_and_the_field_switches_it(tmp_path):
    fake = FakePipeline("skin")
    with _client(tmp_path, {"skin": fake}) as c:
        body = _post(c, png_bytes(rgb_image(32))).json()
        assert body["tta"] is True and fake.last_tta is None  # unasked: each model as its validation chose
        body = _post(c, png_bytes(rgb_image(32)), tta="true").json()
        assert body["tta"] is True and fake.last_tta is True
        body = _post(c, png_bytes(rgb_image(32)), tta="false").json()
        assert body["tta"] is False and fake.last_tta is False
        assert c.get(f"/api/v1/analyses/{body['id']}").json()["tta"] is False


def test_class_groups_names_and_feature_details_in_the_response(tmp_path):
    fake = FakePipeline("skin")
    with _client(tmp_path, {"skin": fake}) as c:
        plain = _post(c, png_bytes(rgb_image(32))).json()["classification"]
        assert plain["groups"] == [] and "malignant_probability" not in plain  # no groups: nothing invented
        fake.groups = [GROUP]
        body = _post(c, png_bytes(rgb_image(32))).json()
    cls = body["classification"]
    assert cls["malignant_probability"] == pytest.approx(cls["probabilities"]["malignant"], abs=1e-6)
    assert cls["malignant_flagged"] == (cls["malignant_probability"] >= 0.3)
    assert cls["groups"][0]["threshold"] == 0.3 and cls["groups"][0]["sensitivity"] == 0.92
    assert cls["class_names"] == {"malignant": "Malignant lesion"}
    assert cls["label_name"] in ("benign", "Malignant lesion (malignant)")
    rows = {r["key"]: r for r in body["feature_details"]}
    assert rows["mean_intensity"]["name"] == "mean intensity" and rows["mean_intensity"]["value"]


def test_findings_evidence_population_and_colour_key_in_the_response(tmp_path):
    with _client(tmp_path, {"skin": FakePipeline("skin")}) as c:
        body = _post(c, png_bytes(rgb_image(32))).json()
        again = c.get(f"/api/v1/analyses/{body['id']}").json()
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
    assert body["findings"] == [
        {"text": "The model looked elsewhere.", "severity": "high", "source": "evidence_outside"},
        {"text": "Big.", "severity": "low", "source": "big"},
    ]
    assert body["gradcam_inside_region"] == 0.3 and again["findings"] == body["findings"]
    assert body["classification"]["learnt_from"]["malignant"] == "malignant films of one clinic"
    seg = body["segmentation"]
    assert seg["classes"] == ["background", "region"]
    assert seg["colour_key"] == [{"name": "region", "colour": "#00e640", "kind": "region"}]
    assert {"findings", "gradcam_inside_region", "recommendation"} <= set(
        schemas["AnalysisView"]["properties"]
    )
    assert {"learnt_from"} <= set(schemas["Classification"]["properties"])
    assert set(schemas["FindingView"]["properties"]) == {"text", "severity", "source"}
    assert {"classes", "colour_key"} <= set(schemas["Segmentation"]["properties"])


def test_records_stored_before_findings_still_view(tmp_path):
    from medlens.app.views import analysis_view

    old = {"id": "x", "created": "2026-01-01T00:00:00+00:00", "pipeline": "skin", "source_format": "png",
           "label": "benign", "probabilities": {"benign": 0.9, "malignant": 0.1}, "features": {},
           "files": {"mask": "m.png"}, "result": {"recommendation": "Routine."}}  # fmt: skip
    view = analysis_view(old)
    assert view["findings"] == [] and view["gradcam_inside_region"] is None
    assert view["classification"]["learnt_from"] == {} and view["segmentation"]["colour_key"] == []


def test_a_refused_image_keeps_its_raw_probabilities_in_the_api_marked_as_no_reading():
    from medlens.app.views import analysis_view

    record = {"id": "x", "created": "2026-01-01T00:00:00+00:00", "pipeline": "skin", "files": {},
              "source_format": "png", "label": None, "probabilities": {"nv": 0.55, "mel": 0.45},
              "features": {"mean_intensity": 90.0},
              "result": {"out_of_scope": True, "area_fraction": 0.2}}  # fmt: skip
    view = analysis_view(record)
    assert view["classification"]["reading"] is False and view["classification"]["label"] is None
    assert view["classification"]["probabilities"] == {"nv": 0.55, "mel": 0.45}  # for integrators
    assert view["segmentation"]["reading"] is False and view["segmentation"]["area_fraction"] == 0.2
    read = analysis_view({**record, "label": "nv", "result": {"out_of_scope": False, "area_fraction": 0.2}})
    assert read["classification"]["reading"] is True and read["segmentation"]["reading"] is True


def test_a_missing_uncertainty_reads_the_same_in_the_api_and_the_ui():
    from medlens.app import render
    from medlens.app.views import analysis_view
    from medlens.pipelines.analysis import UNCERTAINTY_NO_MODEL_RAN, UNCERTAINTY_NOT_MEASURED

    record = {"id": "x", "created": "2026-01-01T00:00:00+00:00", "pipeline": "chest-xray", "files": {},
              "source_format": "png", "label": None, "probabilities": {}, "features": {},
              "result": {"uncertainty": None, "tta": False}}  # fmt: skip
    assert analysis_view(record)["uncertainty_note"] == UNCERTAINTY_NOT_MEASURED
    assert f"{UNCERTAINTY_NOT_MEASURED}." in render.uncertainty_html(record)
    record["result"]["tta"] = True  # flips ran, but not for the model behind the result: the same words
    assert f"{UNCERTAINTY_NOT_MEASURED}." in render.uncertainty_html(record)
    measured = {**record, "result": {"uncertainty": 0.02, "tta": True}}
    assert analysis_view(measured)["uncertainty_note"] is None
    refused = {
        **record,
        "result": {"uncertainty": None, "out_of_scope": True, "uncertainty_note": UNCERTAINTY_NO_MODEL_RAN},
    }  # as the pipeline wrote it
    assert analysis_view(refused)["uncertainty_note"] == UNCERTAINTY_NO_MODEL_RAN
    assert f"{UNCERTAINTY_NO_MODEL_RAN}." in render.uncertainty_html(refused)


class _Raising(FakePipeline):
    def __init__(self, exc: BaseException) -> None:
        super().__init__("skin")
        self.exc = exc

    def analyze(self, image, clahe=False, gradcam=True, tta=True):
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ImageReadError(None, "a reason that mentions too many pixels"), 422),  # words do not decide
        (MedlensError("bad input"), 422),
        (UnknownNameError("thing", "x", ["a", "b"]), 422),
        (InternalError("SECRET-INTERNAL-DETAIL"), 500),
        (KeyError("SECRET-KEY-DETAIL"), 500),
    ],
)
def test_status_codes_follow_the_exception_type(tmp_path, caplog, monkeypatch, exc, status):
    """Errors while the upload is read: bad input is 4xx by its type, anything else 500 with an id."""
    from medlens.data import io

    def failing_read(*args, **kwargs):
        raise exc

    monkeypatch.setattr(io, "read_image", failing_read)
    with _client(tmp_path, {"skin": FakePipeline("skin")}) as c, caplog.at_level(logging.ERROR):
        r = _post(c, png_bytes(rgb_image(16)))
    assert r.status_code == status, r.text
    if status == 500:
        assert r.json()["detail"] == "internal error" and r.json()["id"] in caplog.text
        assert "SECRET" not in r.text and "SECRET" in caplog.text  # traceback logged under the id only
    if isinstance(exc, UnknownNameError):
        assert r.json()["valid"] == ["a", "b"]


def test_a_failure_inside_the_pipeline_is_internal(tmp_path, caplog):
    """A readable image whose analysis fails (Grad-CAM finds no layer, say) is an internal fault: 500."""
    failing = _Raising(MedlensError("cannot find a Grad-CAM layer: SECRET-MODEL-DETAIL"))
    with _client(tmp_path, {"skin": failing}) as c, caplog.at_level(logging.ERROR):
        r = _post(c, png_bytes(rgb_image(16)))
        assert r.status_code == 500 and r.json()["detail"] == "internal error"
        assert "SECRET" not in r.text and r.json()["id"] in caplog.text
        assert c.get("/healthz").status_code == 200  # and it keeps serving


def test_errors_name_the_uploaded_file_by_its_name_without_folders(tmp_path):
    with _client(tmp_path) as c:
        unreadable = _post(c, b"not an image at all", name="C:\\scans\\jane`s chest.png")
        huge = _post(c, bomb_png(20000, 20000), name="/home/jane/huge.png")
        empty = _post(c, b"", name="empty.png")
    assert unreadable.status_code == 422
    assert unreadable.json()["detail"].startswith("cannot read janes chest.png: unknown file type")
    assert huge.status_code == 413 and huge.json()["detail"].startswith("cannot read huge.png: 20000x20000")
    assert empty.status_code == 422 and empty.json()["detail"] == "cannot read empty.png: empty file"
    assert not any("<upload>" in r.text or "jane/" in r.text for r in (unreadable, huge, empty))


def test_every_scope_reason_is_listed_also_for_records_stored_before_the_list():
    from medlens.app.views import scope_reasons

    assert scope_reasons({"scope_reason": "a; and b", "scope_reasons": ["a", "b"]}) == ["a", "b"]
    assert scope_reasons({"scope_reason": "grey"}) == ["grey"]  # an older record: its one reason
    assert scope_reasons({"scope_reason": None}) == []


def test_too_large_image_reports_its_real_size(tmp_path):
    with _client(tmp_path) as c:
        r = _post(c, bomb_png(20000, 20000))
    assert r.status_code == 413 and "20000x20000" in r.json()["detail"]
    assert "9223372036854775807" not in r.text


def test_a_5000_character_file_name_gets_a_reason(tmp_path):
    with _client(tmp_path) as c:
        r = _post(c, png_bytes(rgb_image(16)), name="a" * 5000 + ".png")
        assert r.status_code == 400
        assert "Maximum header size exceeded" in r.json()["detail"] and "file name" in r.json()["detail"]
        assert _post(c, png_bytes(rgb_image(16)), name="b" * 200 + ".png").status_code == 200


def test_large_images_are_decoded_reduced_and_say_so(tmp_path):
    with _client(tmp_path) as c:
        c.app.state.service.max_side = 64
        body = _post(c, png_bytes(rgb_image(200))).json()
        small = _post(c, png_bytes(rgb_image(40))).json()
    assert max(body["image_size"]) <= 64 and body["original_size"] == [200, 200]
    assert small["image_size"] == [40, 40] and small["original_size"] is None
    note = "(200x200 pixels) is larger than 64 pixels a side, so it was decoded reduced to"
    assert len(body["input_notes"]) == 1 and note in body["input_notes"][0] and small["input_notes"] == []


def test_a_transparent_upload_is_laid_on_white_and_says_so(tmp_path):
    rgba = np.dstack([rgb_image(32), np.full((32, 32), 255, np.uint8)])
    rgba[:8, :, 3] = 0
    with _client(tmp_path) as c:
        body = _post(c, png_bytes(rgba)).json()
        stored = c.get(f"/api/v1/analyses/{body['id']}").json()
        image = np.asarray(Image.open(io.BytesIO(c.get(body["image_url"]).content)))
    assert body["input_notes"] == stored["input_notes"]
    assert "transparent (25% of its pixels)" in body["input_notes"][0]
    assert (image[:8] == 255).all()  # the stored (analysed) pixels: white where the upload was see-through


def test_failed_tokens_are_throttled_per_client(tmp_path):
    with _client(tmp_path, token=TOKEN, max_auth_failures=3) as c:
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/api/v1/models", headers=good).status_code == 200  # successes do not count
        for _ in range(3):
            assert c.get("/api/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = c.get("/api/v1/models", headers=good)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert "try again" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200  # only credential-checked paths are refused


def test_throttle_window_slides():
    from medlens.app.throttle import FailureThrottle

    now = [0.0]
    throttle = FailureThrottle(max_failures=2, window_s=10, clock=lambda: now[0])
    throttle.record_failure("a")
    now[0] = 5.0
    throttle.record_failure("a")
    assert throttle.retry_after("a") == pytest.approx(5.0) and throttle.retry_after("b") == 0
    now[0] = 10.5
    assert throttle.retry_after("a") == 0  # the first failure left the window


def test_docs_are_served_without_a_cdn(tmp_path):
    with _client(tmp_path) as c:
        docs = c.get("/docs").text
        assert "cdn." not in docs and "/static-offline-docs/swagger-ui-bundle.js" in docs
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            r = c.get(f"/static-offline-docs/{asset}")
            assert r.status_code == 200 and len(r.content) > 50_000, asset
        assert c.get("/redoc").status_code == 404  # left out: its bundle fetches a logo from a CDN
