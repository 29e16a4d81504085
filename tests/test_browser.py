"""The UI in real headless Chromium (Playwright): analyse an example, re-blend, open the history, page it,
compare two, the dashboard, the offline API docs, and screenshots of each tab at 1280 and 1920 px. Runs the
app with uvicorn on a free loopback port and tiny random-weight bundles.

Screenshots land in ``test-artifacts/screenshots/``. Chromium comes from the system
(``apt-get install chromium``); the tests skip, saying so, where ``/usr/bin/chromium`` is absent.
Never ``playwright install``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers_app import LiveServer, png_bytes, rgb_image

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")  # Debian installs it there
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-artifacts" / "screenshots"
TIMEOUT_MS = 90_000
WIDTHS = (1280, 1920)
MALIGNANT = {"name": "malignant", "classes": ["malignant"], "threshold": 0.4, "target_sensitivity": 0.9,
             "sensitivity": 0.9, "specificity": 0.5}  # fmt: skip


def _examples(root: Path) -> list[Path]:
    """The repository's dermoscopy examples (examples/skin), or synthetic ones where they are missing."""
    folder = root / "examples" / "skin"
    folder.mkdir(parents=True)
    real = sorted((REPO / "examples" / "skin").glob("*.jpg"))[:3]
    if real:
        return [Path(shutil.copy(p, folder / p.name)) for p in real]
    for i in range(2):
        (folder / f"lesion{i}.png").write_bytes(png_bytes(rgb_image(96, seed=i)))
    return sorted(folder.glob("*.png"))


def _plot(path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 3), dpi=60)
    ax.imshow(np.array([[5, 1], [2, 4]]), cmap="Blues") if "confusion" in title else ax.plot(
        [0, 0.2, 1], [0, 0.8, 1]
    )
    ax.set_title(title)
    fig.savefig(path)
    plt.close(fig)


def _as_format_2(bundle: Path) -> None:
    """Plots under plots/ and val/test/external evaluations, as a retrained bundle ships them."""
    (bundle / "plots").mkdir()
    for name in ("test_confusion_matrix.png", "test_roc.png"):
        _plot(bundle / "plots" / name, name)
    meta = json.loads((bundle / "bundle.json").read_text())
    val = {"balanced_accuracy": 0.61, "accuracy": 0.7, "auc_macro": 0.66, "n_images": 40}
    test = {**val, "balanced_accuracy": 0.58, "n_images": 60}
    external = {**val, "balanced_accuracy": 0.52, "n_images": 150}
    meta["evaluations"] = {"val": val, "test": test, "external:isic2017": external}
    (bundle / "bundle.json").write_text(json.dumps(meta))


def _tiny_models(root: Path) -> Path:
    from tests.helpers_inference import make_tiny_bundle

    make_tiny_bundle(root, "segmentation", name="skin-seg", encoder="mobilenet_v2")
    make_tiny_bundle(root, "segmentation", name="polyp-seg", encoder="mobilenet_v2")
    cls = make_tiny_bundle(
        root, "classification", name="skin-cls", arch="mobilenetv3_small_050", groups=[MALIGNANT]
    )
    _as_format_2(cls)
    return root / "models"


def _fill_history(service, image: np.ndarray, n: int) -> None:
    """``n`` stored analyses (no model run), so that the history has more than one page."""
    for i in range(n):
        service.store.add(pipeline="skin", label="nv", probabilities={"nv": 0.8, "mel": 0.2}, features={},
                          result={"class_names": {"nv": "Melanocytic nevus"}, "seed": i},
                          pictures={"image": np.roll(image, i, axis=1)}, source_format="jpeg")  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from medlens.app.api import create_app

    root = tmp_path_factory.mktemp("browser")
    examples = _examples(root)
    app = create_app(models_dir=_tiny_models(root), home=root / "home", examples_dir=root / "examples")
    assert app.state.service.pipeline_names[:2] == ["skin", "polyp"]
    # analyses already in the history: one to compare with, and enough for a second page
    app.state.service.analyze_bytes(examples[1].read_bytes(), "skin")
    _fill_history(app.state.service, rgb_image(64), 26)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with LiveServer(app) as server:
        yield server, examples


@pytest.fixture(scope="module")
def browser(live):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium); browser tests need it")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(live, browser):
    server, _ = live
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    _offline(page, server.url)
    page.goto(server.url + "/")
    page.wait_for_selector("#analyse-button")
    yield page
    page.close()


def _offline(page, base: str) -> list[str]:
    """Abort every request that leaves the server (as without internet); returns the refused URLs."""
    refused: list[str] = []

    def route(r):
        if r.request.url.startswith((base, "data:", "blob:")):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return refused


@pytest.mark.browser
def test_analyse_an_example_shows_names_groups_colour_bar_and_uncertainty(live, page):
    _, examples = live
    page.get_by_text("Research tool, not a diagnosis.").first.wait_for()
    page.locator("#upload input[type=file]").set_input_files(str(examples[0]))
    page.get_by_text(examples[0].name).first.wait_for()
    page.click("#analyse-button")
    page.wait_for_selector("#overlay img")
    page.wait_for_selector("#original img")
    probs = page.locator("#probabilities")
    probs.get_by_text("malignant").first.wait_for()
    assert "%" in probs.inner_text() and "benign" in probs.inner_text()
    assert page.locator("#gradcam img").count() == 1 or "Out of scope" in page.locator("#advice").inner_text()
    advice = page.locator("#advice").inner_text()
    assert "Recommendation" in advice and "Malignant probability" in advice and "operating point" in advice
    assert (
        page.locator("#gradcam-colourbar .bar").is_visible()
        and "low" in page.locator("#gradcam-colourbar").inner_text()
    )
    uncertainty = page.locator("#uncertainty")
    assert "flip" in uncertainty.inner_text() and uncertainty.locator(".scale .marker").count() == 1
    assert page.locator("#features").get_by_text("What it means").count() >= 1
    assert page.locator("#features").get_by_text("% of the image").count() >= 1
    assert "medlens-mask-" in page.locator("#mask-file").inner_text()
    before = page.locator("#overlay img").get_attribute("src")
    page.locator("#opacity input[type=range]").fill("1")
    page.wait_for_function(
        "src => document.querySelector('#overlay img') && document.querySelector('#overlay img').src !== src",
        arg=before,
    )
    page.screenshot(path=str(SHOTS / "analyse.png"), full_page=True)


@pytest.mark.browser
def test_a_failed_analysis_clears_the_result_and_says_why(live, page, tmp_path):
    """After the analysis above, a truncated image: every panel cleared, a lasting message naming the file."""
    _, examples = live
    page.get_by_role("tab", name="Analyse").click()
    page.locator("#advice").get_by_text("Recommendation").wait_for()  # the previous result is on screen
    broken = tmp_path / "truncated.jpg"
    broken.write_bytes(examples[0].read_bytes()[:2000])
    page.locator("#upload button[aria-label='Clear']").click()  # the drop zone comes back
    page.locator("#upload input[type=file]").set_input_files(str(broken))
    page.locator("#upload").get_by_text("truncated").first.wait_for()
    page.click("#analyse-button")
    advice = page.locator("#advice")
    advice.get_by_text("Could not analyse").wait_for()
    _settled(page)
    text = advice.inner_text()
    assert "truncated.jpg" in text and "not a readable image" in text, text
    assert "Label" not in text and "Recommendation" not in text and "<upload>" not in text
    for panel in ("#original", "#overlay", "#gradcam"):
        assert page.locator(f"{panel} img").count() == 0, panel
        assert page.locator(panel).get_by_text("Error", exact=True).count() == 0, panel  # no bare badges
    assert "%" not in page.locator("#probabilities").inner_text()
    assert "medlens-mask-" not in page.locator("#mask-file").inner_text()
    assert "Uncertainty" not in page.locator("#uncertainty").inner_text()
    page.wait_for_timeout(11_000)  # longer than a toast lasts: the message stays
    assert "truncated.jpg" in advice.inner_text()
    page.screenshot(path=str(SHOTS / "analyse_failed.png"), full_page=True)


@pytest.mark.browser
def test_probabilities_panel_is_hidden_without_a_classifier(page):
    page.get_by_role("tab", name="Analyse").click()
    page.locator("#pipeline input").click()
    page.get_by_role("option", name="polyp").click()
    page.wait_for_selector("#probabilities-box", state="hidden")
    page.locator("#pipeline input").click()
    page.get_by_role("option", name="skin").click()
    page.wait_for_selector("#probabilities-box", state="visible")


@pytest.mark.browser
def test_history_pages_opens_one_and_compares_two(live, page):
    page.get_by_role("tab", name="History").click()
    page.get_by_role("button", name="Refresh").click()
    paging = page.locator("#history-paging")
    paging.get_by_text("Showing 24 of").wait_for()
    gallery = page.locator("#gallery img")
    gallery.nth(1).wait_for()
    assert (
        "UTC" in page.locator("#gallery").inner_text()
        and "Melanocytic nevus (nv)" in page.locator("#gallery").inner_text()
    )
    page.locator("#history-more").click()
    paging.get_by_text("Showing 28 of 28").wait_for()
    assert not page.locator("#history-more").is_visible()
    gallery.first.click()
    page.get_by_text("Delete this analysis").wait_for()
    page.locator("#history-advice").get_by_text("Recommendation:").wait_for()
    page.locator("#history-probabilities").get_by_text("%").first.wait_for()
    for side, index in (("a", 0), ("b", 1)):
        page.locator(f"#compare-{side} input").click()
        page.get_by_role("option").nth(index).click()
        page.locator(f"#compare-{side}-probs").get_by_text("%").first.wait_for()
    texts = [page.locator(f"#compare-{s}-probs").inner_text() for s in ("a", "b")]
    assert "benign" in texts[0] and "malignant" in texts[0]  # the analysis just made in the UI
    assert "Melanocytic nevus (nv)" in texts[1]  # a stored one, with its class's full name
    page.screenshot(path=str(SHOTS / "history_compare.png"), full_page=True)


@pytest.mark.browser
def test_dashboard_shows_splits_side_by_side_plots_and_counts(page):
    page.get_by_role("tab", name="Dashboard").click()
    page.get_by_text("skin-cls (classification)").wait_for()
    page.get_by_text("skin-seg (segmentation)").wait_for()
    assert page.get_by_text("Metrics (validation, test, external)").count() >= 2
    table = page.locator(".medlens-metrics", has_text="external: isic2017").first
    table.wait_for()
    text = table.inner_text()
    for words in ("balanced accuracy", "macro AUC", "validation", "test", "0.580", "0.520"):
        assert words in text, words
    assert page.get_by_text("balanced_accuracy").count() == 0
    page.get_by_text("Confusion matrix (test)").first.wait_for()
    page.get_by_text("ROC curves (test)").first.wait_for()
    page.get_by_text("Validation figures only").first.wait_for()  # the format-1 segmenter
    page.locator("#label-counts canvas, #label-counts svg").first.wait_for()
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)


@pytest.mark.browser
def test_api_docs_render_without_internet(live, browser):
    server, _ = live
    page = browser.new_page()
    refused = _offline(page, server.url)
    page.goto(server.url + "/docs")
    page.locator(".swagger-ui .info .title").get_by_text("medlens").wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("/api/v1/analyze").first.wait_for()
    page.screenshot(path=str(SHOTS / "api_docs.png"))
    page.close()
    assert refused == [], refused


def _settled(page) -> None:
    """Wait until no component shows Gradio's loading state, then let the layout settle."""
    page.wait_for_function("!document.querySelector('.wrap.pending, .wrap.generating, .eta-bar')")
    page.wait_for_timeout(500)


def _not_cut(page, selector: str) -> list[str]:
    """Texts of the elements matching ``selector`` that overflow their box (cut off)."""
    return page.eval_on_selector_all(
        selector, "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)"
    )


@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_each_tab_at_common_window_sizes(live, browser, width):
    server, examples = live
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    _offline(page, server.url)
    page.goto(server.url + "/")
    page.wait_for_selector("#analyse-button")
    page.locator("#examples").get_by_text(examples[0].name).first.click()
    page.locator("#upload").get_by_text(examples[0].stem).first.wait_for()
    page.click("#analyse-button")
    page.wait_for_selector("#overlay img")
    page.locator("#advice").get_by_text("Recommendation").wait_for()
    _settled(page)
    assert _not_cut(page, "#examples button, #examples td, #examples .label") == []
    assert page.locator("#examples").get_by_text("Examples").first.is_visible()
    box = page.locator("#original").bounding_box()
    assert box["height"] < 520, box  # a 200x150 example does not leave a tall empty panel
    page.screenshot(path=str(SHOTS / f"analyse_{width}.png"), full_page=True)
    page.get_by_role("tab", name="History").click()
    page.locator("#gallery img").nth(1).wait_for()
    _settled(page)
    assert _not_cut(page, "#gallery .caption-label, #gallery figcaption") == []
    page.screenshot(path=str(SHOTS / f"history_{width}.png"), full_page=True)
    page.get_by_role("tab", name="Dashboard").click()
    page.get_by_text("skin-cls (classification)").wait_for()
    _settled(page)
    page.screenshot(path=str(SHOTS / f"dashboard_{width}.png"), full_page=True)
    page.close()


def test_real_pipeline_through_the_api(live):
    """The REST API on the same server, with the pipeline loaded from the bundles."""
    import httpx

    server, examples = live
    with httpx.Client(base_url=server.url, timeout=120) as client:
        files = {"file": ("x.jpg", examples[1].read_bytes(), "image/jpeg")}
        r = client.post("/api/v1/analyze", files=files, data={"pipeline": "skin", "clahe": "true"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["pipeline"] == "skin" and body["clahe"] is True and body["tta"] is True
        probs = body["classification"]["probabilities"]
        assert abs(sum(probs.values()) - 1) < 1e-4 and body["classification"]["groups"]
        assert "malignant_probability" in body["classification"]
        assert 0 <= body["segmentation"]["area_fraction"] <= 1 and "area_px" in body["features"]
        assert body["notice"].startswith("Research tool, not a diagnosis.")
        assert {"segment", "classify", "decode"} <= set(body["timings"])
        for url in (body["segmentation"]["mask_url"], body["segmentation"]["overlay_url"]):
            assert client.get(url).headers["content-type"] == "image/png"
        models = client.get("/api/v1/models").json()
        assert [p["name"] for p in models["pipelines"]][:2] == ["skin", "polyp"]
        bundles = {b["name"]: b for b in models["bundles"]}
        assert {"skin-seg", "skin-cls"} <= set(bundles)
        assert "test_roc.png" in bundles["skin-cls"]["plots"] and "test" in bundles["skin-cls"]["evaluations"]
        assert client.get("/api/v1/models/skin-cls/plots/test_roc.png").headers["content-type"] == "image/png"
