"""The Space in a real browser: Debian's chromium driven by Playwright, against the app over what the main job
published on the embedded Hub (``demo_url``, see conftest).

No skip: a machine without chromium or Playwright fails here, loudly (``.ci/run`` and ``scripts/test.sh``
install both). Screenshots are kept under ``runs/test-artifacts/space/`` for a look after the run. Gradio
keeps a connection open, so the page never reaches "networkidle": the test waits for elements instead.
"""

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from datasets import load_dataset

from spaces.config import RepoAt

ARTIFACTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts" / "space"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    found = os.environ.get("ALIGNSMITH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium; scripts/test.sh does it): the browser "
                    "test cannot run")
    return found


@pytest.fixture(scope="module")
def page(demo_url):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.requests = []  # every URL the page asked for
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto(demo_url, wait_until="domcontentloaded")
        page.get_by_role("tab", name="Leaderboard").wait_for()
        try:
            yield page
        finally:
            browser.close()


def _shows(page, text: str, timeout: float = 30_000) -> None:
    """Wait until ``text`` is visible on the page (rendered text, not hidden copies)."""
    page.wait_for_function("text => document.body.innerText.includes(text)", arg=text, timeout=timeout)


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_every_model_revision_is_on_the_leaderboard_and_search_narrows_it(page, demo):
    ref = RepoAt.parse(demo.results)
    results = load_dataset(ref.repo_id, revision=ref.revision, split="train")
    for model, sha in set(zip(results["model"], results["model_sha"])):
        _shows(page, model)
        _shows(page, sha[:12])
    _shot(page, "leaderboard")
    search = page.get_by_label("Search models")
    search.fill("dpo")
    search.press("Enter")
    # the table's visible cells (the plot keeps every model in its colour legend)
    rows = "() => [...document.querySelectorAll('td')].filter(c => c.checkVisibility()).map(c => c.textContent).join()"
    page.wait_for_function(f"() => !({rows})().includes('alignsmith-demo/tiny-sft-random')"
                           f" && ({rows})().includes('alignsmith-demo/tiny-chain-dpo')")
    _shot(page, "leaderboard-search")


def test_side_by_side_shows_both_models_replies(page):
    page.get_by_role("tab", name="Side by side").click()
    prompt = page.get_by_label("Prompt")
    prompt.fill("Name a colour.")
    prompt.press("Enter")
    for label in ("A", "B"):
        page.wait_for_function(
            "label => [...document.querySelectorAll('label')].some(l => l.innerText.trim() === label"
            " && l.parentElement.querySelector('textarea')?.value.length > 0)", arg=label, timeout=60_000)
    _shot(page, "side-by-side")


def test_the_dataset_explorer_shows_the_pf_set_at_its_tag_with_an_image(page, demo):
    page.get_by_role("tab", name="Dataset explorer").click()
    page.wait_for_function("value => [...document.querySelectorAll('input')].some(i => i.value === value)",
                           arg=demo.pf[0])  # the PF set, at its tag
    page.wait_for_function("() => [...document.querySelectorAll('img')].some(i => i.naturalWidth > 0"
                           " && i.src.includes('/gradio_api/file='))", timeout=60_000)
    ref = RepoAt.parse(demo.pf[0])
    first = load_dataset(ref.repo_id, "vqa", revision=ref.revision, split="train")[0]
    _shows(page, first["id"])  # the first rewritten row of the default source
    _shot(page, "dataset-explorer")


def test_no_request_leaves_localhost(page):
    hosts = {urlparse(url).hostname for url in page.requests if urlparse(url).scheme in ("http", "https", "ws", "wss")}
    assert hosts and hosts <= {"127.0.0.1", "localhost"}, hosts
