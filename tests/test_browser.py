"""A real browser (Playwright driving the system Chromium) types a prompt, presses Generate and sees an image.

Needs the ``playwright`` package and ``/usr/bin/chromium`` (Debian's ``chromium`` package); skipped without them.
``playwright install`` is not needed: the system browser is used.
Set DIFFDEMO_DOCS_SCREENSHOT=1 to also refresh docs/screenshots/text_to_image.png.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

CHROMIUM = Path(os.environ.get("DIFFDEMO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "text_to_image.png"
PROMPT = "a large red star on a blue background"
SEED = 4  # a fixed seed keeps the docs screenshot reproducible
TIMEOUT_MS = 60_000
GALLERY_IMAGE = ".gallery-container img, [data-testid='gallery'] img"  # Gradio 6 gallery thumbnails

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set DIFFDEMO_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                             "(pip install playwright)")


@pytest.fixture(scope="module")
def app_url(live_app):
    return live_app.url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_generate_in_the_browser(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(app_url, timeout=TIMEOUT_MS)
        prompt = page.get_by_label("Prompt", exact=True)
        prompt.wait_for(state="visible", timeout=TIMEOUT_MS)
        prompt.fill(PROMPT)
        page.get_by_label("Seed (-1 = random)").fill(str(SEED))
        page.get_by_role("button", name="Generate").click()

        image = page.locator(GALLERY_IMAGE).first
        image.wait_for(state="visible", timeout=TIMEOUT_MS)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                               timeout=TIMEOUT_MS)
        assert image.evaluate("img => img.naturalWidth") > 0
        sync_api.expect(page.get_by_label("Seed used")).to_have_value(str(SEED), timeout=TIMEOUT_MS)

        shot = tmp_path / "text_to_image.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 0
        if os.environ.get("DIFFDEMO_DOCS_SCREENSHOT") == "1":
            # the grid thumbnail of a single image is cropped to the gallery's height=420: open the preview,
            # which shows the whole image
            image.click()
            page.locator(".preview img, [data-testid='detailed-image']").first.wait_for(state="visible",
                                                                                       timeout=TIMEOUT_MS)
            page.wait_for_timeout(500)  # let the preview's opening transition finish
            DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(DOCS_SCREENSHOT), full_page=True)
    finally:
        page.close()

