"""The playground page end to end in headless Chromium (skipped when Chromium or Playwright is missing)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from r2r.serving.pair import ModelPair, PairSpec, load_pair

from .test_server import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (`make test-all` installs Debian's chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def pair(testbed_dirs) -> ModelPair:
    return load_pair(PairSpec("testbed", testbed_dirs["slm"], testbed_dirs["llm"], testbed_dirs["router"]), "cpu")


def send_and_wait(page, budget: float) -> float:
    page.fill("#budget", str(budget))  # a range input takes fill() as a value change
    page.dispatch_event("#budget", "input")
    page.click("#send")
    page.wait_for_selector(".pane .stats[data-done='1']", timeout=120_000)
    return float(page.get_attribute(".pane .stats", "data-llm-share"))


def test_playground_streams_colored_tokens_and_budget_moves_share(browser, pair) -> None:
    with running_server(pair, api_key="k") as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.evaluate("window.sessionStorage.setItem('r2r-api-key', 'k')")
        page.select_option("#policy", "random")  # forced mixed routing
        share_mid = send_and_wait(page, 0.5)
        sources = set(page.eval_on_selector_all(".out span", "els => els.map(e => e.dataset.source)"))
        assert sources == {"slm", "llm"}, f"both colors expected, got {sources}"
        assert page.inner_text(".out").strip(), "streamed text appeared"
        low, high = send_and_wait(page, 0.1), send_and_wait(page, 0.9)
        assert low < share_mid < high, (low, share_mid, high)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
        assert (ARTIFACTS / "playground.png").stat().st_size > 10_000
