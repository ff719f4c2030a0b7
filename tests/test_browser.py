"""A real browser (Playwright driving the system Chromium) types a prompt, presses Generate and sees an image.

Needs the ``playwright`` package and ``/usr/bin/chromium`` (Debian's ``chromium`` package); skipped without them.
``playwright install`` is not needed: the system browser is used.
Set DIFFDEMO_DOCS_SCREENSHOT=1 to also refresh docs/screenshots/text_to_image.png.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

import re
from pathlib import Path

import pytest
from helpers import UPLOAD_INPUTS, wait_until

CHROMIUM = Path(os.environ.get("DIFFDEMO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "text_to_image.png"
PROMPT = "a large red star on a blue background"
SEED = 4  # a fixed seed keeps the docs screenshot reproducible
TIMEOUT_MS = 60_000
GALLERY_IMAGE = ".gallery-container img, [data-testid='gallery'] img"  # Gradio 6 gallery thumbnails
pytestmark = pytest.mark.slow  # a real browser: a minute or more

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



# --- every other tab, used once ------------------------------------------------------------------------------

FEW_STEPS = "4"


@pytest.fixture
def page(app_url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(app_url, timeout=TIMEOUT_MS)
    page.get_by_label("Prompt", exact=True).first.wait_for(state="visible", timeout=TIMEOUT_MS)
    try:
        yield page
    finally:
        page.close()


def open_tab(page, name: str):
    """Selects the tab ``name`` and returns its (visible) panel."""
    page.get_by_role("tab", name=name, exact=True).click()
    panel = page.locator("[role=tabpanel]").filter(visible=True).last
    panel.wait_for(state="visible", timeout=TIMEOUT_MS)
    return panel


def set_number(panel, label: str, value: str) -> None:
    box = panel.get_by_label(f"number input for {label}", exact=True)
    box.fill(value)
    box.press("Enter")


def wait_for_image(locator):
    """Waits until ``locator`` (an <img>) shows a decoded picture; returns its natural width."""
    locator.wait_for(state="visible", timeout=TIMEOUT_MS)
    locator.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=locator.element_handle(),
                                   timeout=TIMEOUT_MS)
    return locator.evaluate("img => img.naturalWidth")


def assert_no_error(page) -> None:
    toasts = page.locator(".toast-body, [data-testid='toast-body']")
    assert toasts.count() == 0, toasts.first.inner_text()


TABS = ("Text to image", "Inpainting", "Denoising", "Super-resolution", "Trajectory", "Compare", "Forward process",
        "2-D playground")
# The label of the block around each upload zone ("Drop Media Here - or - Click to Upload") shown in a panel.
UPLOAD_ZONE_LABELS = """panel => [...panel.querySelectorAll('[data-testid="upload-text"]')]
    .filter(el => el.offsetParent !== null && /Click to Upload/i.test(el.textContent))
    .map(el => { const block = el.closest('.block');
                 const label = block && block.querySelector('[data-testid="block-label"], [data-testid="block-info"]');
                 return label ? label.textContent.trim() : '(no label)'; })"""


def test_no_output_shows_an_upload_zone_before_the_first_run(page):
    """A newcomer's first sight: only the inputs invite an upload; no result area says "Drop Media Here"
    (tests/test_ui.py checks the same of every output, drawn or not, in the app's config)."""
    seen = {}
    for tab in TABS:
        panel = open_tab(page, tab)
        panel.locator("button, input").first.wait_for(state="visible", timeout=TIMEOUT_MS)
        closed = panel.locator(".label-wrap:not(.open)").filter(visible=True)
        for _ in range(closed.count()):  # open every accordion: outputs hide there too
            closed.first.click()
        page.wait_for_timeout(500)  # an accordion draws its content as it opens
        seen[tab] = panel.evaluate(UPLOAD_ZONE_LABELS)
    assert seen["Inpainting"], "not even the mask's upload zone was found: the probe misses Gradio's upload text"
    outputs = {tab: [label for label in labels if label not in UPLOAD_INPUTS] for tab, labels in seen.items()}
    assert not any(outputs.values()), f"outputs that offer an upload: {outputs}"


def test_unknown_words_show_next_to_the_result_in_the_browser(page):
    panel = open_tab(page, "Text to image")
    panel.get_by_label("Prompt", exact=True).fill("a red cat on a blue background")
    set_number(panel, "Steps", FEW_STEPS)
    panel.get_by_role("button", name="Generate", exact=True).click()
    sync_api.expect(page.locator("#unknown-words")).to_contain_text("unknown words: cat", timeout=TIMEOUT_MS)
    assert_no_error(page)


def test_inpaint_an_example_in_the_browser(page):
    panel = open_tab(page, "Inpainting")
    panel.locator("tbody tr").first.click()  # the red circle and its mask
    set_number(panel, "Steps", FEW_STEPS)
    panel.get_by_role("button", name="Generate", exact=True).click()
    assert wait_for_image(page.locator("#inpaint-result img")) == 128
    assert wait_for_image(page.locator("#inpaint-changed img")) == 128
    assert_no_error(page)


def test_denoise_an_example_in_the_browser(page):
    panel = open_tab(page, "Denoising")
    panel.locator("tbody tr").first.click()
    set_number(panel, "Steps from t to 0", FEW_STEPS)
    panel.get_by_role("button", name="Denoise", exact=True).click()
    sync_api.expect(panel.get_by_text("Denoised (diffusion)").last).to_be_visible(timeout=TIMEOUT_MS)
    sync_api.expect(panel.locator("table").filter(has_text="PSNR")).to_be_visible(timeout=TIMEOUT_MS)
    outputs = ("noisy", "x0-hat", "denoised", "classical")
    assert [wait_for_image(page.locator(f"#denoise-{name} img")) for name in outputs] == [128] * 4
    assert_no_error(page)


def test_upscale_an_upload_in_the_browser(page, tmp_path):
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (32, 32), "blue")
    ImageDraw.Draw(picture).ellipse([8, 8, 24, 24], fill="red")
    picture.save(tmp_path / "small.png")
    panel = open_tab(page, "Super-resolution")
    panel.locator("input[type=file]").first.set_input_files(str(tmp_path / "small.png"))
    set_number(panel, "Steps", FEW_STEPS)
    panel.get_by_label("2", exact=True).check()
    panel.get_by_role("button", name="Upscale", exact=True).click()
    sync_api.expect(panel.get_by_text("32x32 → 64x64", exact=False)).to_be_visible(timeout=TIMEOUT_MS)
    outputs = [page.locator(f"#super-resolution-{name} img") for name in ("diffusion", "bicubic", "lanczos")]
    assert [wait_for_image(image) for image in outputs] == [64, 64, 64]
    assert_no_error(page)


def test_trajectory_run_and_scrub_in_the_browser(page):
    panel = open_tab(page, "Trajectory")
    set_number(panel, "Steps", FEW_STEPS)
    panel.get_by_role("button", name="Run", exact=True).click()
    sync_api.expect(panel.get_by_label("Progress")).to_have_value(re.compile("^done"), timeout=TIMEOUT_MS)
    sync_api.expect(panel.get_by_text(f"step {FEW_STEPS}/{FEW_STEPS}").first).to_be_visible(timeout=TIMEOUT_MS)
    views = panel.locator("img").filter(visible=True)  # the live preview, then x_t, x̂₀ and ε̂ of the last step
    views.nth(3).wait_for(state="visible", timeout=TIMEOUT_MS)
    assert all(wait_for_image(views.nth(i)) > 0 for i in range(4))
    assert_no_error(page)


def test_stop_and_closing_the_tab_end_a_run_in_the_browser(live_app, browser):
    runner, deadline_ms = live_app.demo.runner, 5_000

    def start_long_run(page) -> None:
        panel = page.locator("[role=tabpanel]").filter(visible=True).last
        set_number(panel, "Steps", "150")  # several seconds on a CPU
        panel.get_by_role("button", name="Generate", exact=True).click()
        wait_until(lambda: runner.active == 1, TIMEOUT_MS / 1000, "a run to start", interval=0.05)

    def wait_until_idle() -> None:
        wait_until(lambda: runner.active == 0, deadline_ms / 1000, "the run to end", interval=0.05)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(live_app.url, timeout=TIMEOUT_MS)
    page.get_by_label("Prompt", exact=True).first.wait_for(state="visible", timeout=TIMEOUT_MS)
    start_long_run(page)
    page.get_by_role("button", name="Stop", exact=True).first.click()
    wait_until_idle()
    start_long_run(page)
    page.close()  # the tab goes away mid-run
    wait_until_idle()


def test_the_login_page_logs_in_and_the_app_works_behind_it(embedded_models, browser, tmp_path):
    """With a login, every route but the login page needs it (diffdemo/ui/guard.py): the page still renders, logs
    in and then works, with no request of the page refused but the one over the request budget, whose sentence
    shows on the prompt."""
    from fast_app import launched, local_limits

    # priced with tests/fast_app.py's speeds: one 25-step image about 0.3 s, eight about 1.7 s
    with launched(embedded_models, tmp_path, auth=("ada", "correct-horse"), limits=local_limits(max_cost=1)) as app:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        refused = []
        page.on("response", lambda response: refused.append(response.url) if response.status >= 400 else None)
        try:
            page.goto(app.url, timeout=TIMEOUT_MS)
            fields = page.locator("input")
            fields.nth(1).wait_for(state="visible", timeout=TIMEOUT_MS)
            fields.nth(0).fill("ada")
            fields.nth(1).fill("correct-horse")
            page.get_by_role("button", name="Login").click()
            page.get_by_label("Prompt", exact=True).first.wait_for(state="visible", timeout=TIMEOUT_MS)
            page.get_by_role("button", name="Generate").first.click()
            page.locator(GALLERY_IMAGE).first.wait_for(state="visible", timeout=TIMEOUT_MS)
            assert refused == []
            set_number(page.locator("[role=tabpanel]").filter(visible=True).last, "Images", "8")
            page.get_by_role("button", name="Generate").first.click()
            page.get_by_text("would take about").first.wait_for(state="visible", timeout=TIMEOUT_MS)
            assert "--max-cost" in page.get_by_text("would take about").first.inner_text()
        finally:
            page.close()
    assert len(refused) == 1 and "/gradio_api/queue/join" in refused[0]  # the 8-image request, refused (422)
