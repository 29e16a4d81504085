"""Screenshots of the web app's three tabs for the README, with the shipped models and example images.

    OMP_NUM_THREADS=1 .venv/bin/python docs/screenshots/take.py            # writes docs/screenshots/*.png

Starts the app on a free loopback port (history in a temporary folder), analyses a dermoscopy example and a
chest X-ray example (lungs by side, heart, CTR lines) in headless Chromium (/usr/bin/chromium), and saves each
tab at 1280 px wide as a palette PNG under 300 KB.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
OUT = Path(__file__).resolve().parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
MAX_BYTES = 300_000


def save_small(png: bytes, path: Path, max_height: int = 2000) -> None:
    """Crop to ``max_height``, then quantise (and shrink if needed) until the PNG is under 300 KB."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.crop((0, 0, image.width, min(image.height, max_height)))
    scale = 1.0
    while True:
        small = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
        if buf.tell() < MAX_BYTES:
            path.write_bytes(buf.getvalue())
            return
        scale *= 0.85


def main() -> None:
    from playwright.sync_api import sync_playwright

    from medlens.app.api import create_app
    from tests.helpers_app import LiveServer

    example = sorted((REPO / "examples" / "skin").glob("*.jpg"))[1]
    chest = sorted((REPO / "examples" / "chest-xray").glob("*.jp*g"))[0]
    app = create_app(
        models_dir=REPO / "models",
        home=tempfile.mkdtemp(prefix="medlens-shots-"),
        examples_dir=REPO / "examples",
    )
    for other in sorted((REPO / "examples").glob("*/*.jp*g")):
        app.state.service.analyze_bytes(other.read_bytes(), other.parent.name)  # a history to show
    with LiveServer(app) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(server.url + "/")
        page.locator("#upload input[type=file]").set_input_files(str(example))
        page.click("#analyse-button")
        page.locator("#advice").get_by_text("Recommendation").wait_for()
        page.wait_for_timeout(1500)
        save_small(page.screenshot(full_page=True), OUT / "analyse.png")
        for tab in ("History", "Dashboard"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(2500)
            save_small(page.screenshot(full_page=True), OUT / f"{tab.lower()}.png")
        page.goto(server.url + "/")  # a fresh Analyse tab (the upload box holds the skin image)
        page.locator("#pipeline input").click()
        page.get_by_role("option", name="chest-xray").click()
        page.locator("#upload input[type=file]").set_input_files(str(chest))
        page.click("#analyse-button")
        page.locator("#advice").get_by_text("Recommendation").wait_for()
        page.wait_for_timeout(2500)
        save_small(page.screenshot(full_page=True), OUT / "analyse-chest.png")
        browser.close()


if __name__ == "__main__":
    main()
