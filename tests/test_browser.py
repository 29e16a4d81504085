"""The UI in real headless Chromium (Playwright): analyse an example, re-blend, open the history, compare two,
open the dashboard. Runs the app with uvicorn on a free loopback port and tiny random-weight bundles.

Screenshots land in ``test-artifacts/screenshots/``. Chromium comes from the system
(``apt-get install chromium``); the tests skip, saying so, where ``/usr/bin/chromium`` is absent.
Never ``playwright install``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED
from tests.helpers_app import LiveServer, png_bytes, rgb_image

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 90_000


def _examples(root: Path) -> list[Path]:
    """Two dermoscopy examples: real ISIC images when the shared data sets are present, else synthetic."""
    folder = root / "examples" / "skin"
    folder.mkdir(parents=True)
    real = sorted((SHARED / "isic2017_seg" / "images").glob("*.jpg"))[:2]
    if len(real) == 2:
        return [Path(shutil.copy(p, folder / f"lesion{i}.jpg")) for i, p in enumerate(real)]
    out = []
    for i in range(2):
        (folder / f"lesion{i}.png").write_bytes(png_bytes(rgb_image(96, seed=i)))
        out.append(folder / f"lesion{i}.png")
    return out


def _plots(bundle: Path) -> None:
    """Evaluation plots as a trained bundle would ship them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in ("confusion_matrix.png", "roc.png"):
        fig, ax = plt.subplots(figsize=(3, 3), dpi=60)
        if name == "roc.png":
            ax.plot([0, 0.2, 1], [0, 0.8, 1])
        else:
            ax.imshow(np.array([[5, 1], [2, 4]]), cmap="Blues")
        ax.set_title(name.removesuffix(".png"))
        fig.savefig(bundle / name)
        plt.close(fig)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from medlens.app.api import create_app
    from tests.helpers_inference import make_tiny_bundle

    root = tmp_path_factory.mktemp("browser")
    make_tiny_bundle(root, "segmentation", name="skin-seg", encoder="mobilenet_v2")
    _plots(make_tiny_bundle(root, "classification", name="skin-cls", arch="mobilenetv3_small_050"))
    examples = _examples(root)
    app = create_app(root / "models", root / "home", examples_dir=root / "examples")
    assert app.state.service.pipeline_names == ["skin"]
    # one analysis already in the history, so that two can be compared after the UI adds one
    app.state.service.analyze_bytes(examples[1].read_bytes(), "skin")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with LiveServer(app) as server:
        yield server, examples


@pytest.fixture(scope="module")
def page(live):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium); browser tests need it")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    from playwright.sync_api import sync_playwright

    server, _ = live
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url + "/")
        page.wait_for_selector("#analyse-button")
        yield page
        browser.close()


@pytest.mark.browser
def test_analyse_an_example_shows_overlay_probabilities_and_notice(live, page):
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
    assert page.locator("#gradcam img").count() == 1
    assert "Recommendation" in page.locator("#advice").inner_text()
    assert page.locator("#features").get_by_text("area").count() >= 1
    assert "medlens-mask-" in page.locator("#mask-file").inner_text()
    before = page.locator("#overlay img").get_attribute("src")
    page.locator("#opacity input[type=range]").fill("1")
    page.wait_for_function(
        "src => document.querySelector('#overlay img') && document.querySelector('#overlay img').src !== src",
        arg=before,
    )
    page.screenshot(path=str(SHOTS / "analyse.png"), full_page=True)


@pytest.mark.browser
def test_history_opens_one_and_compares_two(live, page):
    page.get_by_role("tab", name="History").click()
    page.get_by_role("button", name="Refresh").click()
    gallery = page.locator("#gallery img")
    gallery.nth(1).wait_for()
    assert gallery.count() >= 2
    gallery.first.click()
    page.get_by_text("Delete this analysis").wait_for()
    page.locator("#history-advice").get_by_text("Recommendation:").wait_for()
    page.locator("#history-probabilities").get_by_text("%").first.wait_for()
    for side, index in (("a", 0), ("b", 1)):
        page.locator(f"#compare-{side} input").click()
        page.get_by_role("option").nth(index).click()
        page.locator(f"#compare-{side}-probs").get_by_text("%").first.wait_for()
    texts = [page.locator(f"#compare-{s}-probs").inner_text() for s in ("a", "b")]
    assert all("benign" in t and "malignant" in t for t in texts)
    page.screenshot(path=str(SHOTS / "history_compare.png"), full_page=True)


@pytest.mark.browser
def test_dashboard_shows_metrics_plots_and_counts(live, page):
    page.get_by_role("tab", name="Dashboard").click()
    page.get_by_text("skin-cls (classification)").wait_for()
    page.get_by_text("skin-seg (segmentation)").wait_for()
    assert page.get_by_text("Validation metrics").count() == 2
    assert page.get_by_text("balanced_accuracy").count() >= 1
    page.get_by_text("Confusion matrix").first.wait_for()
    page.locator("#label-counts canvas, #label-counts svg").first.wait_for()
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)


def test_real_pipeline_through_the_api(live):
    """The REST API on the same server, with the pipeline loaded from tiny random-weight bundles."""
    import httpx

    server, examples = live
    with httpx.Client(base_url=server.url, timeout=120) as client:
        files = {"file": ("x.jpg", examples[1].read_bytes(), "image/jpeg")}
        r = client.post("/api/v1/analyze", files=files, data={"pipeline": "skin", "clahe": "true"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["pipeline"] == "skin" and body["clahe"] is True
        probs = body["classification"]["probabilities"]
        assert set(probs) == {"benign", "malignant"} and abs(sum(probs.values()) - 1) < 1e-4
        assert 0 <= body["segmentation"]["area_fraction"] <= 1 and "area_px" in body["features"]
        assert body["notice"].startswith("Research tool, not a diagnosis.")
        assert {"segment", "classify", "decode"} <= set(body["timings"])
        for url in (
            body["segmentation"]["mask_url"],
            body["segmentation"]["overlay_url"],
            body["gradcam_url"],
        ):
            assert client.get(url).headers["content-type"] == "image/png"
        models = client.get("/api/v1/models").json()
        assert [p["name"] for p in models["pipelines"]] == ["skin"]
        assert models["pipelines"][0]["classifier"] == "skin-cls"
        bundles = {b["name"]: b for b in models["bundles"]}
        assert set(bundles) == {"skin-seg", "skin-cls"}
        assert bundles["skin-cls"]["metrics"]["balanced_accuracy"] == 0.5
        assert {"confusion_matrix.png", "roc.png"} <= set(bundles["skin-cls"]["plots"])
