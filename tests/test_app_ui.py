"""The UI without a browser: render helpers, the Gradio event handlers on the shared service, the login."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlens.app import render
from medlens.app.security import UPLOAD_NAME_LIMIT, upload_name
from medlens.app.service import AnalysisService
from medlens.app.store import HistoryStore, make_thumbnail
from medlens.drawing import PALETTE
from medlens.pipelines.advice import DEFAULT_NOTICE, out_of_scope_text, scope_finding, scope_summary
from tests.helpers_app import FakePipeline, bomb_png, corrupt_jpeg, png_bytes, rgb_image


def test_blend_colours_inside_the_mask_only():
    image = np.full((20, 20), 100, np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 255
    none = render.blend(image, mask, 0.0)
    full = render.blend(image, mask, 1.0)
    assert none.shape == (20, 20, 3) and none.dtype == np.uint8
    assert (none[0, 0] == 100).all() and (full[0, 0] == 100).all()  # outside untouched
    assert (none[10, 10] == 100).all()  # opacity 0: inside shows the image (outline aside)
    assert (full[10, 10] == PALETTE[0]).all()
    assert (none[5, 10] == PALETTE[0]).all()  # the outline is always drawn
    assert (render.blend(image, None) == 100).all()
    labels = np.zeros((20, 20), np.uint8)
    labels[:5], labels[-5:] = 1, 2
    two = render.blend(np.zeros((20, 20, 3), np.uint8), labels, 1.0)
    assert (two[2, 2] == PALETTE[0]).all() and (two[17, 2] == PALETTE[1]).all()


def test_tables_and_advice():
    record = {"label": "mel", "result": {"out_of_scope": True, "scope_reason": "looks like a chest X-ray",
              "uncertainty": 0.2, "recommendation": "See a dermatologist.",
              "notice": "Research tool, not a diagnosis. Ask a doctor."}}  # fmt: skip
    text = render.advice_markdown(record)
    assert text.count("Research tool, not a diagnosis.") == 1 and "Ask a doctor." not in text  # refused
    assert "looks like a chest X-ray" in text and "See a dermatologist." in text
    read = render.advice_markdown({"label": None, "result": {**record["result"], "out_of_scope": False}})
    assert read.count("Research tool, not a diagnosis.") == 1 and "Ask a doctor." in read
    table = render.pipelines_table([{"name": "skin", "classes": ["a", "b"], "segmenter": None}])
    assert table.to_dict("records") == [{"name": "skin", "segmenter": "—", "classes": "a, b"}]
    widths = render.pipelines_widths(table)  # one per column present, summing to the whole table
    assert len(widths) == 3 and sum(float(w.rstrip("%")) for w in widths) == pytest.approx(100, abs=0.2)
    counts = render.label_counts_frame(
        [{"day": "2024-01-01", "pipeline": "skin", "label": "nv", "count": 2},
         {"day": "2024-01-01", "pipeline": "polyp", "label": "(none)", "count": 1}]
    )  # fmt: skip
    assert set(counts["label"]) == {"skin / nv", "polyp / (none)"} and counts["count"].sum() == 3


def test_advice_lists_findings_where_the_model_looked_and_what_each_class_was_learnt_from():
    key = [{"name": "left lung", "colour": "#00e640", "kind": "region"},
           {"name": "heart", "colour": "#2878ff", "kind": "region"},
           {"name": "heart width (CTR)", "colour": "#ffc800", "kind": "line"}]  # fmt: skip
    result = {"out_of_scope": False, "recommendation": "Pattern consistent with pneumonia.",
              "findings": [{"text": "The model looked outside the lungs.", "severity": "high",
                            "source": "evidence_outside_lungs"},
                           {"text": "Cardiothoracic ratio of 0.5 or more.", "severity": "moderate",
                            "source": "ctr_above_adult_limit"}],
              "gradcam_inside_region": 0.234, "class_names": {"pneumonia": "Pneumonia", "normal": "Normal"},
              "colour_key": key, "learnt_from": {"normal": "children of one hospital",
                                                 "pneumonia": "children, Guangzhou"}}  # fmt: skip
    text = render.advice_markdown({"label": "pneumonia", "result": result})
    high, moderate = text.index("looked outside the lungs"), text.index("Cardiothoracic ratio")
    assert (
        text.index("Recommendation") < high < moderate
    )  # the reading, then every finding, most severe first
    assert "23% of the Grad-CAM lies inside left lung, heart" in text  # regions only, not the lines
    assert "Pneumonia (this result): children, Guangzhou" in text
    assert text.index("(this result)") < text.index("Normal: children of one hospital")
    scope = [{"text": "Out of scope: in colour.", "severity": "high", "source": "scope"}]
    oos = {
        "out_of_scope": True,
        "scope_reason": "in colour",
        "recommendation": out_of_scope_text("in colour", "Chest X-ray"),  # what the pipeline writes
        "findings": [*scope, {"text": "CTR above 0.5.", "severity": "moderate", "source": "ctr"}],
    }
    text = render.advice_markdown({"result": oos})
    assert text.count("in colour") == 1 and "CTR above 0.5." not in text  # the reason once, and nothing else
    # a record stored before refusals dropped them: still no provenance, measurement or pipeline notice
    skin_notice = "Research tool, not a diagnosis. Only a dermatologist can tell."
    older_refusal = {**result, **oos, "notice": skin_notice}
    text = render.advice_markdown({"label": None, "result": older_refusal})
    assert "Learnt from" not in text and "dermatologist" not in text and "Grad-CAM" not in text
    assert text.endswith(render.notice_markdown(DEFAULT_NOTICE)) and text.count("not a diagnosis") == 1
    older = render.advice_markdown({"result": {**oos, "findings": [], "recommendation": None}})
    assert "**Out of scope:** in colour" in older  # a record without a recommendation still says why


def test_the_segmented_area_is_given_per_structure():
    chest = {"area_fraction": 0.3, "area_fractions": {"left_lung": 0.12, "right_lung": 0.115, "heart": 0.065}}
    text = render.advice_markdown({"result": chest})
    assert "**Segmented area** (share of the image): left lung 12.0%, right lung 11.5%, heart 6.5%" in text
    assert "30.0%" not in text  # not the lungs and the heart lumped together
    assert "**Segmented area:** 4.2% of the image" in render.advice_markdown(
        {"result": {"area_fraction": 0.042}}
    )
    assert "Segmented area" not in render.advice_markdown({"result": {"area_fraction": None}})
    named = {"area_fraction": 0.3, "area_fractions": {"foreground": 0.2, "chest_xray": 0.1},
             "mask_classes": ["background", "foreground", "chest_xray"],
             "mask_names": ["background", "skin lesion", "chest X-ray"]}  # fmt: skip
    assert "skin lesion 20.0%, chest X-ray 10.0%" in render.area_markdown(named)  # the pipeline's names
    older = {k: v for k, v in named.items() if k != "mask_names"}  # a record without names: readable()
    assert "foreground 20.0%, chest X-ray 10.0%" in render.area_markdown(older)


def test_advice_says_what_was_done_to_the_image():
    notes = [
        "the image is partly transparent (25% of its pixels): it was laid on a white background",
        "the image (4000x3000 pixels) is larger than 2048 pixels a side, so it was decoded reduced",
    ]
    text = render.advice_markdown({"result": {"input_notes": notes, "recommendation": "Routine."}})
    assert "**About the image:**\n\n- The image is partly transparent (25% of its pixels)" in text
    assert "\n- The image (4000x3000 pixels) is larger than 2048 pixels" in text
    assert text.index("About the image") < text.index("Recommendation")
    assert "About the image" not in render.advice_markdown({"result": {"recommendation": "Routine."}})


@pytest.fixture()
def handlers(tmp_path):
    pytest.importorskip("gradio")
    from medlens.app.ui import UiHandlers

    store = HistoryStore(tmp_path / "home")
    service = AnalysisService({"skin": FakePipeline("skin")}, store, max_pixels=10_000)
    yield UiHandlers(service, max_file_size=50_000)
    service.close()


def test_ui_handlers_analyse_reblend_history_compare_delete(handlers, tmp_path):
    from medlens.app.ui_handlers import DETAIL

    upload = tmp_path / "upload.bin"
    upload.write_bytes(png_bytes(rgb_image(40)))
    out = handlers.analyze(str(upload), "skin", False, True, 0.5)
    original, overlay, key, probs, box, gradcam, features, advice, uncertainty, mask_file, analysis_id = out
    assert original.endswith(".png") and overlay.shape == (40, 40, 3) and box["visible"] is True
    assert 'class="medlens-key"' in key and ">region</span>" in key  # the key beside the picture
    assert set(probs) == {"benign", "Malignant lesion (malignant)"}  # full names from class_names
    assert gradcam is not None and "mean intensity" in set(features["Feature"])
    assert list(features.columns) == ["Feature", "Value", "Unit", "What it means"]
    assert "Recommendation" in advice and "flip" in uncertainty and 'class="scale"' in uncertainty
    assert mask_file["value"].endswith(f"medlens-mask-{analysis_id[:12]}.png")
    assert mask_file["label"] == "Mask (PNG): 0 = background, 255 = region"  # what the download's values show
    mask_file = mask_file["value"]
    assert not np.array_equal(handlers.overlay(analysis_id, 0.0), handlers.overlay(analysis_id, 1.0))
    items, ids, *_, paging, more, _ = handlers.history("all", "all")
    assert ids == [analysis_id] and len(items) == 1 and "1 of 1" in paging and more["visible"] is False
    assert "UTC" in items[0][1] and "skin" in items[0][1]
    assert handlers.history("all", "no-such-label")[1] == []
    panel = handlers.panel(analysis_id)
    assert panel[2] == key and panel[3] == probs and "skin" in panel[5]
    assert Path(mask_file).exists()
    assert handlers.delete(analysis_id)[0] is None
    assert handlers.service.get(analysis_id) is None and handlers.panel(analysis_id)[0] is None
    assert not Path(mask_file).exists()  # the UI's copy goes with the analysis

    for data, words in ((b"", "the file is empty"), (b"x" * 60_000, "too large"),
                        (bomb_png(200, 200), "200x200 pixels"),
                        (b"plain text", "not a readable image (unknown file type")):  # fmt: skip
        upload.write_bytes(data)
        with pytest.warns(UserWarning, match="upload.bin"):  # the toast (a warning outside a Gradio event)
            *cleared, advice, _, _, no_id = handlers.analyze(str(upload), "skin", False, True, 0.5)
        assert advice.startswith("**Could not analyse `upload.bin`:**") and words in advice, advice
        assert no_id is None and cleared[0] is None and "<upload>" not in advice
    with pytest.warns(UserWarning, match="Nothing to analyse"):
        out = handlers.analyze(None, "skin", False, True, 0.5)
    assert "upload an image (or pick an example) first" in out[DETAIL.index("advice")] and out[-1] is None
    assert handlers.service.store.count() == 0


def _refused(service: AnalysisService, pipeline: str = "chest-xray") -> dict:
    """A refused (out-of-scope) record, stored as the service stores one."""
    result = {"pipeline": pipeline, "out_of_scope": True, "scope_reason": "in colour", "recommendation": "x"}
    return service.store.add(pipeline=pipeline, label=None, probabilities={}, features={}, result=result,
                             pictures={"image": rgb_image(24)}, source_format="png")  # fmt: skip


def test_the_history_filters_the_refused_analyses(handlers, tmp_path):
    upload = tmp_path / "lesion.png"
    upload.write_bytes(png_bytes(rgb_image(40)))
    kept = handlers.analyze(str(upload), "skin", False, True, 0.5)[-1]
    refused = _refused(handlers.service)["id"]
    _, ids, label_filter, *_ = handlers.history("all", render.OUT_OF_SCOPE)
    assert ids == [refused] and render.OUT_OF_SCOPE in label_filter.choices[1]
    assert label_filter.value == render.OUT_OF_SCOPE
    assert set(handlers.history("all", "all")[1]) == {kept, refused}
    assert handlers.service.list(out_of_scope=False)[0][0]["id"] == kept  # the API's filter, the other way


def test_a_refused_image_shows_no_class_probabilities_or_features(handlers):
    """Refused by the confidence check: the model's probabilities and the features are in the record (the
    API marks them as no reading) but the UI presents none of them, only the refusal."""
    from medlens.app.ui_handlers import DETAIL

    result = {"pipeline": "skin", "out_of_scope": True, "scope_reason": "the model is unsure",
              "recommendation": "Out of scope: unsure.", "class_names": {"mel": "Melanoma"}}  # fmt: skip
    kept = {
        "features": {"mean_intensity": 90.0},
        "pictures": {"image": rgb_image(24)},
        "source_format": "png",
    }
    record = handlers.service.store.add(
        pipeline="skin", label=None, probabilities={"nv": 0.55, "mel": 0.45}, result=result, **kept
    )
    shown = dict(zip(DETAIL, handlers.detail(record), strict=True))
    assert shown["probs"] is None and shown["probs_box"]["visible"] is False and shown["features"].empty
    assert "the model is unsure" in shown["advice"] and "Melanoma" not in shown["advice"]
    _, _, _, probs, features, caption = handlers.panel(record["id"])  # the compare panel: the same
    assert probs is None and features.empty and render.OUT_OF_SCOPE in caption
    read = handlers.service.store.add(
        pipeline="skin", label="mel", probabilities={"nv": 0.2, "mel": 0.8},
        result={**result, "out_of_scope": False}, **kept,
    )  # fmt: skip
    assert render.probabilities(read) and not render.reading_features(read).empty


REASONS = ["the classifier is unsure: top probability 0.55 < 0.6", "the segmenter found no region"]


class _Refusing(FakePipeline):
    """Refused by two checks after its models ran: it keeps the mask, overlay, Grad-CAM, probabilities and
    uncertainty that the UI must not show (as the pipeline's own refusals do, `analyzer._conclude`)."""

    def analyze(self, image, clahe=False, gradcam=True, tta=None):
        a = super().analyze(image, clahe, gradcam, tta)
        a.out_of_scope, a.label, a.scope_reasons, a.scope_reason = True, None, REASONS, scope_summary(REASONS)
        a.recommendation = out_of_scope_text(a.scope_reason, "Skin lesion")
        a.findings, a.notice = [scope_finding(reason) for reason in REASONS], DEFAULT_NOTICE
        return a


def test_a_refused_image_shows_its_original_and_every_refusal_only(tmp_path):
    pytest.importorskip("gradio")
    from medlens.app.ui_handlers import DETAIL, UiHandlers

    service = AnalysisService({"skin": _Refusing("skin")}, HistoryStore(tmp_path / "home"), max_pixels=10_000)
    handlers, upload = UiHandlers(service, max_file_size=50_000), tmp_path / "lesion.png"
    upload.write_bytes(png_bytes(rgb_image(40)))
    try:
        out = handlers.analyze(str(upload), "skin", False, True, 0.5)
        shown = dict(zip([*DETAIL, "id"], out, strict=True))
        record = service.get(shown["id"])
        assert all(record["files"][k] for k in ("mask", "overlay", "gradcam"))  # kept for the API
        assert record["probabilities"] and record["result"]["uncertainty"] == 0.1
        assert shown["original"] == str(service.file_path(shown["id"], "image"))
        assert shown["overlay"] is None and shown["key"] == "" and shown["gradcam"] is None
        assert shown["probs"] is None and shown["probs_box"]["visible"] is False and shown["features"].empty
        assert shown["uncertainty"] == "" and shown["mask_file"]["value"] is None
        assert shown["mask_file"]["label"] == render.MASK_LABEL
        assert all(reason in shown["advice"] for reason in REASONS)
        assert "Label" not in shown["advice"] and "Where the model looked" not in shown["advice"]
        assert handlers.overlay(shown["id"], 1.0) is None  # the opacity slider draws no overlay either
        assert handlers.panel(shown["id"])[:4] == (shown["original"], None, "", None)  # nor compare
        thumb = render.load_png(service.file_path(shown["id"], "thumb"))  # the history's: the original
        assert np.array_equal(thumb, make_thumbnail(rgb_image(40)))
    finally:
        service.close()


def test_compare_refuses_analyses_of_two_pipelines_naming_both(handlers, tmp_path):
    upload = tmp_path / "lesion.png"
    upload.write_bytes(png_bytes(rgb_image(40)))
    first, second = (handlers.analyze(str(upload), "skin", False, True, 0.5)[-1] for _ in range(2))
    *a, b_original, _, _, _, _, b_caption, note = handlers.compare(first, second)  # one pipeline: both shown
    assert a[0] and b_original and "skin" in b_caption and note == ""
    film = _refused(handlers.service, "chest-xray")["id"]
    *panels, note = handlers.compare(first, film)
    assert "skin pipeline" in note and "chest-xray pipeline" in note and note.startswith("**Not compared:**")
    assert panels[0] is None and panels[6] is None and panels[5] == panels[11] == ""  # neither side shown
    assert "no pipeline" in handlers.compare(film, _refused(handlers.service, "auto")["id"])[-1]


def test_a_failed_analysis_clears_the_previous_result_and_names_the_file(handlers, tmp_path, monkeypatch):
    from medlens.app.ui_handlers import DETAIL

    good = tmp_path / "lesion.png"
    good.write_bytes(png_bytes(rgb_image(40)))
    first = dict(zip([*DETAIL, "id"], handlers.analyze(str(good), "skin", False, True, 0.5), strict=True))
    assert "Label:" in first["advice"] and first["probs"] and first["mask_file"]["value"] and first["id"]
    folder = tmp_path / "gradio" / "0123abcd"  # where Gradio keeps an upload, under its original name
    folder.mkdir(parents=True)
    broken = folder / "truncated.jpg"
    broken.write_bytes(corrupt_jpeg())
    with pytest.warns(UserWarning, match="truncated.jpg"):
        out = dict(zip([*DETAIL, "id"], handlers.analyze(str(broken), "skin", False, True, 0.5), strict=True))
    advice = out.pop("advice")
    assert advice.startswith("**Could not analyse `truncated.jpg`:** the file is not a readable image (")
    assert "JPEG" in advice and str(folder) not in advice and "Label" not in advice
    assert out.pop("features").empty and out.pop("uncertainty") == ""
    assert out.pop("probs_box") == {"__type__": "update"}  # the panel's visibility follows the pipeline
    assert out.pop("mask_file") == {"__type__": "update", "value": None, "label": render.MASK_LABEL}
    assert out.pop("key") == "" and out == dict.fromkeys(("original", "overlay", "probs", "gradcam", "id"))
    assert handlers.service.store.count() == 1  # only the good one

    def fail(*_args, **_kwargs):
        raise RuntimeError("boom at /srv/secret/path")

    monkeypatch.setattr(handlers.service, "analyze_bytes", fail)
    with pytest.warns(UserWarning, match="internal error"):
        advice = handlers.analyze(str(good), "skin", False, True, 0.5)[DETAIL.index("advice")]
    assert advice.startswith("**Could not analyse `lesion.png`:** internal error (id ")
    assert "boom" not in advice and "secret" not in advice
    assert handlers.service.store.count() == 1


def test_upload_names_and_failure_messages_are_safe_to_show():
    assert upload_name("/tmp/gradio/9f2c/ISIC_0024403.jpg") == "ISIC_0024403.jpg"
    assert upload_name("/tmp/x/a`b\nc.png") == "abc.png"
    assert upload_name("/tmp/x/" + "n" * 200 + ".png").endswith("…")
    assert len(upload_name("/tmp/x/" + "n" * 200 + ".png")) == UPLOAD_NAME_LIMIT
    assert upload_name("C:\\Users\\jane\\scan 1.png") == "scan 1.png" and upload_name(None) == ""
    text = render.failure_markdown("a_b.png", "bad <b>header</b> in *MEDLENS_MAX*.")
    assert text.startswith("**Could not analyse `a_b.png`:** bad \\<b\\>header")
    assert "\\*MEDLENS\\_MAX\\*." in text and ".." not in text


def test_ui_is_mounted_at_root_and_asks_for_a_login_with_a_token(tmp_path):
    pytest.importorskip("gradio")
    from fastapi.testclient import TestClient

    from medlens.app.api import create_app

    app = create_app(
        models_dir=tmp_path / "models",
        home=tmp_path / "home",
        token="tok",
        pipelines={"skin": FakePipeline()},
    )
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/config").status_code == 401
        assert client.post("/login", data={"username": "me", "password": "nope"}).status_code >= 400
        assert client.post("/login", data={"username": "me", "password": "tok"}).json() == {"success": True}
        assert client.get("/config").status_code == 200
        assert client.get("/api/v1/models").status_code == 401  # the API still wants the bearer token
    assert app.state.demo is not None


def test_failed_ui_logins_are_throttled_per_client(tmp_path):
    pytest.importorskip("gradio")
    from fastapi.testclient import TestClient

    from medlens.app.api import create_app

    app = create_app(models_dir=tmp_path / "m", home=tmp_path / "h", token="tok",
                     pipelines={"skin": FakePipeline()}, max_auth_failures=3)  # fmt: skip
    with TestClient(app) as client:
        for _ in range(3):
            assert client.post("/login", data={"username": "me", "password": "nope"}).status_code == 400
        r = client.post("/login", data={"username": "me", "password": "tok"})
        assert r.status_code == 429 and "retry-after" in r.headers
        assert client.get("/healthz").status_code == 200


def test_deleting_an_example_analysis_and_the_sweep_leave_what_gradio_serves(tmp_path, monkeypatch):
    """Gradio's cached copies of an example and of a dashboard plot carry their sources' old mtime
    (shutil.copy2): deleting an analysis made from the example, a sweep or Gradio's own delete_cache must not
    remove them."""
    pytest.importorskip("gradio")
    import os
    import time

    from medlens.app.cleanup import TempJanitor
    from medlens.app.ui import build_ui

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    example = tmp_path / "examples" / "skin" / "cju13fwthn9mq0835gacxgy01.png"
    plot = tmp_path / "models" / "skin-cls" / "plots" / "test_roc.png"
    for path, seed in ((example, 0), (plot, 1)):
        path.parent.mkdir(parents=True)
        path.write_bytes(png_bytes(rgb_image(40, seed)))
        os.utime(path, (time.time() - 86400, time.time() - 86400))
    store = HistoryStore(tmp_path / "home")
    service = AnalysisService({"skin": FakePipeline("skin")}, store, max_pixels=10_000)
    service.bundles = [{"name": "skin-cls", "task": "classification", "classes": ["a", "b"],
                        "plots": {"test_roc.png": plot}}]  # fmt: skip
    janitor = TempJanitor(max_age_s=3600)
    try:
        demo = build_ui(service, tmp_path / "examples", 50_000, janitor)
        cached = {p.name: p for p in (tmp_path / "gradio").rglob("*.png")}  # Gradio's copies, served there
        served_example, served_plot = cached[example.name], cached[plot.name]
        *_, analysis_id = demo.medlens_handlers.analyze(str(served_example), "skin", False, False, 0.5)
        assert service.delete(analysis_id) and served_example.exists()
        *_, again = demo.medlens_handlers.analyze(str(served_example), "skin", False, False, 0.5)
        assert again != analysis_id  # the example still works
        janitor.sweep()
        assert served_example.exists() and served_plot.exists()
        from gradio.route_utils import delete_files_created_by_app

        delete_files_created_by_app(demo, age=0)  # Gradio's delete_cache, once its files are old enough
        assert served_example.exists() and served_plot.exists()
    finally:
        janitor.close()
        service.close()
    assert served_example.exists() and served_plot.exists()  # shutdown removes only the janitor's own files
