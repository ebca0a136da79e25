"""The Explore tab in a real browser: headless Debian chromium, driven the way a researcher would use it.

gradio_client tests prove the API; only a browser proves the page itself wires the upload, the slider and the
button to the model. The screenshot is kept in test-artifacts/ so a person can look at what the page rendered.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

playwright_sync = pytest.importorskip("playwright.sync_api")

from naturelm_core.audio import load_audio  # noqa: E402  (after the importorskip)
from naturelm_core.startup import DEMO_BANNER  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (CI runs as root), no GPU, and nothing that phones home: the test must work offline.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ALPHA = 0.8
TIMEOUT_MS = 20_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
]


@pytest.fixture(scope="module")
def app_url(launch_app):
    return launch_app(max_batch_rows=8, sweep_wait_ms=5).url


@pytest.fixture(scope="module")
def page(app_url):
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(app_url)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """A 2 s, 22.05 kHz chirp: the browser uploads it as any user file."""
    t = np.arange(2 * 22050) / 22050
    path = tmp_path_factory.mktemp("audio") / "chirp.wav"
    sf.write(path, 0.4 * np.sin(2 * np.pi * (600 + 300 * t) * t), 22050)
    return path


def test_upload_slider_run_shows_the_models_answer(page, tiny_model, recording):
    expect = playwright_sync.expect
    expect(page.locator("#demo-banner")).to_be_visible()
    expect(page.locator("#demo-banner")).to_contain_text(DEMO_BANNER[:40])
    expect(page.locator("#model-header")).to_contain_text("Model:")

    page.locator("#audio-input input[type=file]").set_input_files(str(recording))
    expect(page.locator("#audio-info")).to_contain_text("22050 Hz", timeout=TIMEOUT_MS)
    # Plotly draws the spectrogram on the page's main thread (seconds on a busy CPU); the click waits for nothing else.
    spectrogram = page.locator(".js-plotly-plot", has_text=re.compile("spectrogram", re.IGNORECASE))
    expect(spectrogram).to_be_visible(timeout=TIMEOUT_MS)

    slider = page.locator("#alpha input[type=range]")
    start_alpha = float(slider.input_value())
    number_box = page.locator("#alpha input[type=number]")
    number_box.fill(str(ALPHA))
    number_box.press("Enter")
    expect(slider).to_have_value(str(ALPHA))

    prompt = page.locator("#prompt textarea").input_value()
    page.locator("#run").click()
    answer_box = page.locator("#answer textarea")
    expect(answer_box).not_to_have_value("", timeout=TIMEOUT_MS)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "explore.png", full_page=True)

    waveform, _ = load_audio(str(recording))
    [direct] = tiny_model.generate([waveform], [prompt], [ALPHA], num_beams=2, max_new_tokens=100)
    [at_start] = tiny_model.generate([waveform], [prompt], [start_alpha], num_beams=2, max_new_tokens=100)
    assert direct != at_start, "this recording answers alike at both alphas, so the slider check would prove nothing"
    assert answer_box.input_value() == direct


def test_an_example_loads_and_runs_and_detect_draws_a_timeline(page):
    """The first example fills the recording and its prompt; Run answers; Detect draws the timeline."""
    expect = playwright_sync.expect
    page.reload()
    example = page.locator("#examples").locator("tbody tr, button.gallery-item, .gallery-item").first
    example.click()
    expect(page.locator("#audio-info")).to_contain_text("mp3", timeout=TIMEOUT_MS)
    expect(page.locator("#prompt textarea")).to_have_value(re.compile("common name"))
    page.locator("#run").click()
    expect(page.locator("#answer textarea")).not_to_have_value("", timeout=TIMEOUT_MS)
    page.locator("#detect").click()
    timeline = page.locator("#detect-timeline .js-plotly-plot", has_text=re.compile("Detection timeline"))
    expect(timeline).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#detect-summary")).to_contain_text("window(s)", timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "explore-detect.png", full_page=True)
