"""``pipeline=auto`` and the modality check in the REST API and the UI, with tiny random bundles and the rule
of `tests.helpers_modality` in place of the modality classifier (see ``tests/test_modality.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from medlens.pipelines.pipeline import load_pipelines
from medlens.pipelines.routing import AUTO
from tests.helpers_app import FakePipeline, png_bytes
from tests.helpers_inference import make_pipeline_bundles
from tests.helpers_modality import marked, rule_based_classifier


@pytest.fixture(scope="module", autouse=True)
def _rule_based_classifier():
    with rule_based_classifier():
        yield


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict:
    return load_pipelines(make_pipeline_bundles(tmp_path_factory.mktemp("auto"), modality=True))


def _post(client, image: np.ndarray, **form):
    return client.post("/api/v1/analyze", files={"file": ("x.png", png_bytes(image), "image/png")}, data=form)


@pytest.fixture(scope="module")
def client(pipelines, tmp_path_factory):
    from medlens.app.api import create_app

    home = tmp_path_factory.mktemp("home")
    app = create_app(models_dir=home / "models", home=home, pipelines=pipelines, ui=False, warm_up=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_api_auto_routes_refuses_and_keeps_the_history(client):
    body = _post(client, marked("endoscopy"), pipeline="auto", tta="false").json()
    assert body["pipeline"] == "polyp" and body["auto"] is True
    assert body["modality"]["label"] == "endoscopy" and body["modality"]["pipeline"] == "polyp"
    assert body["timings"]["modality"] > 0
    refused = _post(client, marked("fundus"), pipeline="auto")
    assert refused.status_code == 200  # refused like any out-of-scope result: a result, not an error
    body = refused.json()
    assert body["pipeline"] == AUTO and body["out_of_scope"] and body["classification"] is None
    assert "retinal fundus photograph" in body["scope_reason"] and body["modality"]["pipeline"] is None
    assert body["findings"] == [{"text": f"Out of scope: {body['scope_reason']}.", "severity": "high",
                                 "source": "scope"}]  # fmt: skip
    assert body["scope_reasons"] == [body["scope_reason"]]
    listed = client.get("/api/v1/analyses", params={"pipeline": AUTO}).json()
    assert [i["id"] for i in listed["items"]] == [body["id"]]
    wrong = _post(client, marked("endoscopy"), pipeline="skin").json()
    assert wrong["out_of_scope"] and "use the polyp pipeline" in wrong["scope_reason"] and not wrong["auto"]
    assert wrong["scope_reason"] == "; and ".join(
        wrong["scope_reasons"]
    )  # the list in the JSON, and in one line
    first = wrong["findings"][0]
    assert first["source"] == "scope" and "use the polyp pipeline" in first["text"]
    models = client.get("/api/v1/models").json()
    assert models["auto"]["routes"]["fundus"] is None and models["auto"]["routes"]["dermoscopy"] == "skin"
    unknown = _post(client, marked("endoscopy"), pipeline="eye")
    assert unknown.status_code == 422 and "auto" in unknown.json()["valid"]
    unnamed = _post(client, marked("endoscopy"), tta="false").json()  # no pipeline named: auto, as in the UI
    assert unnamed["pipeline"] == "polyp" and unnamed["auto"] is True


def test_api_auto_without_a_modality_classifier_is_a_clear_4xx(tmp_path):
    from medlens.app.api import create_app

    app = create_app(
        models_dir=tmp_path / "models", home=tmp_path / "home", pipelines={"skin": FakePipeline()}, ui=False
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        r = _post(c, marked("dermoscopy"), pipeline="auto")
        assert r.status_code == 422 and "needs the modality classifier" in r.json()["detail"]
        assert c.get("/api/v1/models").json()["auto"] is None


def test_ui_offers_auto_first_and_shows_what_the_check_saw(pipelines, tmp_path):
    import gradio as gr

    from medlens.app import render
    from medlens.app.service import AnalysisService
    from medlens.app.store import HistoryStore
    from medlens.app.ui import build_ui

    service = AnalysisService(pipelines, HistoryStore(home=tmp_path / "home"), workers=1)
    demo = build_ui(service)
    dropdown = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.elem_id == "pipeline")
    assert dropdown.value == AUTO and [v for _, v in dropdown.choices] == [
        AUTO,
        "skin",
        "polyp",
        "chest-xray",
    ]
    routed = service.analyze_bytes(png_bytes(marked("endoscopy")), AUTO, tta=False)
    text = render.advice_markdown(routed)
    assert "**Modality check:** a colonoscopy (endoscopy) frame (0.92); sent to the polyp pipeline" in text
    refused = render.advice_markdown(service.analyze_bytes(png_bytes(marked("other")), AUTO))
    # the refusal's reason, said once (in the recommendation, not again as a finding)
    assert refused.count("this does not look like a medical image") == 1
    assert "**Recommendation:** Out of scope: this does not look like a medical image" in refused
    service.close()


def test_api_auto_bad_uploads_are_clear_4xx_and_nothing_is_stored(client):
    before = client.get("/api/v1/analyses").json()["total"]
    text = client.post("/api/v1/analyze", files={"file": ("x.png", b"not an image", "image/png")},
                       data={"pipeline": "auto"})  # fmt: skip
    corrupt = client.post("/api/v1/analyze", files={"file": ("x.png", png_bytes(marked("dermoscopy"))[:200],
                          "image/png")}, data={"pipeline": "auto"})  # fmt: skip
    assert text.status_code == 422 and corrupt.status_code == 422
    assert client.get("/api/v1/analyses").json()["total"] == before
    ok = _post(client, marked("dermoscopy"), pipeline="auto", tta="false")  # and it keeps serving
    assert ok.status_code == 200 and ok.json()["pipeline"] == "skin"
