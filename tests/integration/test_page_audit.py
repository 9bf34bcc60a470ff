"""The page's Audit view in headless Chromium (test_page.py's browser and server): a collection
audited with a byte copy under another diagnosis and a re-encode planted shows its counts, its
thresholds with where they come from, the histogram with the duplicate threshold marked, and
its pairs side by side; the filter keeps the label conflict alone; a picture opens its case.
A collection never audited says how to audit it. Screenshot: test-artifacts/page/audit.png."""

# ruff: noqa: F401, F811  (test_page's fixtures, imported: each test names them as arguments)

from __future__ import annotations

from pathlib import Path

import pytest
from jobs import planted_skin
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select
from test_page import API_KEY, _all_pictures_loaded, _shot, _sign_in, _wait, browser, server

from producers.harness import RunningStack

COLLECTION = "page-audit"


@pytest.fixture(scope="module")
def audited(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    folder = tmp_path_factory.mktemp("page-audit") / "skin"
    first, second = planted_skin(folder, 16, 41)
    for argv in (
        ("ingest", "--dataset", str(folder), "--collection", COLLECTION, "--label-field", "dx"),
        ("audit", "--collection", COLLECTION),
    ):
        result = stack.medindex(*argv)
        assert result.returncode == 0, result.stderr
    return first, second


def test_the_audit_view(browser: WebDriver, server: str, audited: tuple[dict, dict]) -> None:
    first, second = audited
    browser.get(f"{server}/login")
    _sign_in(browser, API_KEY)
    _wait(browser, lambda d: d.find_elements(By.ID, "file-input"))
    browser.get(f"{server}/?collection={COLLECTION}&view=audit")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#audit-pairs .pair"))
    counts = {
        li.get_attribute("data-count"): li.text
        for li in browser.find_elements(By.CSS_SELECTOR, "#audit-counts li[data-count]")
    }
    assert counts["points_audited"].startswith("18 ")
    assert counts["label_conflicts"].startswith("1 ")
    assert counts["duplicate_clusters"].startswith("2 ")
    thresholds = browser.find_element(By.ID, "audit-thresholds").text
    assert "nearest-neighbour cosine of 18 points" in thresholds and "pHash distance" in thresholds
    bars = browser.find_elements(By.CSS_SELECTOR, "#audit-histogram rect.bar")
    assert len(bars) == 40
    assert browser.find_elements(By.CSS_SELECTOR, "#audit-histogram line.limit.duplicate")
    pairs = browser.find_elements(By.CSS_SELECTOR, "#audit-pairs .pair")
    keys = [{c.text for c in p.find_elements(By.TAG_NAME, "figcaption")} for p in pairs]
    assert {"ISIC_copy", first["image_id"]} in keys
    assert {"ISIC_reencoded", second["image_id"]} in keys
    _all_pictures_loaded(browser)
    _shot(browser, "audit", height=1200)
    Select(browser.find_element(By.ID, "audit-finding")).select_by_value("label_conflict")
    pairs = browser.find_elements(By.CSS_SELECTOR, "#audit-pairs .pair")
    assert len(pairs) == 1 and "labels differ (1)" in pairs[0].text and "bytes" in pairs[0].text
    pairs[0].find_element(By.CSS_SELECTOR, "figure img").click()
    _wait(browser, lambda d: d.find_element(By.ID, "detail").is_displayed())
    title = browser.find_element(By.ID, "detail-title").text
    assert title in ("ISIC_copy", first["image_id"])


def test_a_collection_never_audited_says_how(browser: WebDriver, server: str) -> None:
    browser.get(f"{server}/?collection=skin&view=audit")
    _wait(browser, lambda d: "medindex audit" in d.find_element(By.ID, "audit-status").text)
    assert not browser.find_element(By.ID, "audit-body").is_displayed()
