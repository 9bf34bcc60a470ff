"""The search page (`medindex serve` at /) in headless Chromium, driven by selenium through
Debian's chromedriver, against the live stack with the skin sample indexed.

The tests run in order on one browser: sign in, upload, filter, click through, the closest
case per label, the map. Screenshots of each view go to test-artifacts/page/. The browser
reaches nothing but this machine (its host resolver maps every other name to nowhere), so a
page that fetched anything from a CDN would show it. The viewer's tests: test_page_viewer.py.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait
from support import ARTIFACTS, N_IMAGES
from test_http import serving

from pipeline.samples.brain_mri import write_brain_mri
from pipeline.samples.dicom import write_dicom
from pipeline.schemas import ReadOptions
from pipeline.sources import dicom as dicom_reader
from pipeline.sources import nifti as nifti_reader
from producers.harness import RunningStack

API_KEY = "page-test-key-3f9a"
CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver: selenium never downloads one
SHOTS = ARTIFACTS / "page"
CLICKS = 8  # result clicks timed
DOWNLOADS = ARTIFACTS / "page-downloads"  # the page's exports land here


@pytest.fixture(scope="module")
def server(stack: RunningStack, ingested: dict) -> Iterator[str]:
    with serving(stack.env | {"MEDINDEX_API_KEY": API_KEY}, "serve-page.log") as client:
        yield str(client.base_url).rstrip("/")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium = shutil.which("chromium")
    assert chromium and Path(CHROMEDRIVER).is_file(), (
        "Debian's chromium and chromium-driver are needed: `make test` installs them"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # the network cut off
    ):  # fmt: skip
        options.add_argument(argument)
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    options.add_experimental_option("prefs", {"download.default_directory": str(DOWNLOADS)})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(DOWNLOADS)}
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def query_file(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import datasets

    row = datasets.load_dataset(str(dataset), split="train")[5]
    path = tmp_path_factory.mktemp("query") / "lesion.jpg"
    row["image"].save(path, format="JPEG", quality=95)
    return path, row["image_id"]


@pytest.fixture(scope="module")
def scanner_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One DICOM instance and one NIfTI volume, written by pydicom and nibabel."""
    out = tmp_path_factory.mktemp("scanners")
    dicom = write_dicom(out / "dicom", 5, seed=5)
    brain = write_brain_mri(out / "brain", 1, seed=2)
    return {
        "dicom": sorted(dicom.rglob("*.dcm"))[0],
        "nifti": sorted(p for p in brain.rglob("*_t1ce.nii.gz"))[0],
    }


def test_without_the_key_nothing_is_served(server: str) -> None:
    anonymous = httpx.Client(base_url=server, timeout=60)
    assert anonymous.get("/").status_code == 303  # to the login form, nothing else
    assert anonymous.get("/").headers["location"] == "/login"
    search = {"vector": [0.1] * 384, "limit": 3}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Cookie": "medindex_session=forged"}):
        answers = [
            anonymous.get("/?collection=skin", headers=headers),
            anonymous.get("/collections/skin/count", headers=headers),
            anonymous.post("/collections/skin/search", json=search, headers=headers),
            anonymous.get("/collections/skin/map", headers=headers),
            anonymous.get("/jobs", headers=headers),
            anonymous.post("/collections/skin/scroll", json={"limit": 3}, headers=headers),
            anonymous.get("/collections/skin/values/dx", headers=headers),
            anonymous.get("/docs", headers=headers),
        ]
        for answer in answers:
            assert answer.status_code in (303, 401), (headers, answer.status_code)
            assert "ISIC_" not in answer.text and "skin" not in answer.text
    keyed = httpx.Client(base_url=server, headers={"X-API-Key": API_KEY}, timeout=60)
    assert keyed.get("/collections/skin/count").json() == {"count": N_IMAGES}
    hit = keyed.post("/collections/skin/search", json=search).json()[0]
    picture_path = f"/collections/skin/points/{hit['id']}/picture"
    assert anonymous.get(picture_path).status_code == 401
    # No cross-origin access: no CORS headers, even when asked.
    asked = keyed.get("/collections/skin/count", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in asked.headers
    preflight = anonymous.options(
        "/collections/skin/search",
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert keyed.get("/healthz").status_code == anonymous.get("/healthz").status_code == 200


def test_pictures_by_point_id_with_validators(server: str) -> None:
    keyed = httpx.Client(base_url=server, headers={"X-API-Key": API_KEY}, timeout=60)
    hit = keyed.post("/collections/skin/search", json={"vector": [0.1] * 384, "limit": 1}).json()
    path = f"/collections/skin/points/{hit[0]['id']}/picture"
    thumb = keyed.get(path)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    assert "max-age" in thumb.headers["cache-control"] and thumb.headers["etag"]
    again = keyed.get(path, headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304 and not again.content
    full = keyed.get(path, params={"size": "full"})
    assert Image.open(io.BytesIO(full.content)).format == "PNG"
    assert full.headers["etag"] != thumb.headers["etag"]
    missing = keyed.get("/collections/skin/points/00000000-0000-0000-0000-000000000000/picture")
    assert missing.status_code == 404
    # A point id is all a request names: never a path.
    traversal = keyed.get("/collections/skin/points/..%2F..%2Fetc%2Fpasswd/picture")
    assert traversal.status_code in (400, 404) and "root:" not in traversal.text


def test_sign_in_through_the_form(browser: WebDriver, server: str) -> None:
    browser.get(f"{server}/?collection=skin")
    _sign_in(browser, "not-the-key")
    _wait(browser, lambda d: d.find_elements(By.ID, "login-error"))  # the form's answer page
    assert browser.find_element(By.ID, "login-error").text == "wrong API key"
    assert not browser.find_elements(By.ID, "results")
    _sign_in(browser, API_KEY)
    _wait(browser, lambda d: d.find_elements(By.ID, "file-input"))
    cookie = browser.get_cookie("medindex_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert API_KEY not in cookie["value"]
    browser.get(f"{server}/?collection=skin")
    assert "skin: 1100 points" in browser.find_element(By.ID, "collection-facts").text
    browser.find_element(By.ID, "tab-collections").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#collections tbody tr")
    skin = next(row.text for row in rows if row.text.startswith("skin "))
    # Its points in the HNSW index and outside it (the ingest's end started its build).
    counts = re.search(r"(\d+) indexed, (\d+) not yet", skin)
    assert counts and int(counts[1]) + int(counts[2]) == 1100, skin
    _shot(browser, "collections")


def test_upload_a_file_through_the_page(browser: WebDriver, query_file: tuple[Path, str]) -> None:
    path, image_id = query_file
    browser.find_element(By.ID, "tab-results").click()
    browser.find_element(By.ID, "file-input").send_keys(str(path))
    _wait(browser, lambda d: _cards(d))
    first = _cards(browser)[0]
    assert _fields(first)["image_id"] == image_id  # the uploaded picture finds itself
    # The audit's fingerprints (hashes) stay in the details, not on every card.
    assert not [field for field in _fields(first) if field.startswith("fp_")]
    picture = browser.find_element(By.ID, "query-picture")
    assert browser.execute_script("return arguments[0].naturalWidth", picture) > 0
    assert "lesion.jpg" in browser.find_element(By.ID, "query-caption").text
    _all_pictures_loaded(browser)
    _shot(browser, "results")


@pytest.mark.parametrize("kind", ["dicom", "nifti"])
def test_upload_a_scanner_file_through_the_page(
    browser: WebDriver, scanner_files: dict[str, Path], kind: str
) -> None:
    """A DICOM or NIfTI file is made into its picture by its reader, as ingest makes it."""
    path = scanner_files[kind]
    reader = {"dicom": dicom_reader, "nifti": nifti_reader}[kind]
    expected = reader.query_picture(path.read_bytes(), ReadOptions())
    expected.thumbnail((256, 256))
    browser.find_element(By.ID, "file-input").send_keys(str(path))
    caption = browser.find_element(By.ID, "query-caption")
    _wait(browser, lambda d: caption.text == f"uploaded {path.name}" and _cards(d))
    picture = browser.find_element(By.ID, "query-picture")
    size = "return [arguments[0].naturalWidth, arguments[0].naturalHeight]"
    assert tuple(browser.execute_script(size, picture)) == expected.size
    _all_pictures_loaded(browser)
    _shot(browser, f"upload-{kind}")


def test_keyword_filter_and_age_range(
    browser: WebDriver, server: str, query_file: tuple[Path, str]
) -> None:
    """A lesion queried in the skin collection (the scanner files before it are other data),
    filtered: the README's picture (docs/search-page.png is this test's filtered.png)."""
    browser.find_element(By.ID, "file-input").send_keys(str(query_file[0]))
    caption = browser.find_element(By.ID, "query-caption")
    _wait(browser, lambda d: caption.text == "uploaded lesion.jpg" and _cards(d))
    Select(_facet(browser, "sex")).select_by_value("female")
    _range(browser, "age", "40", "70")
    limit = browser.find_element(By.ID, "limit")
    limit.clear()
    limit.send_keys("30")
    browser.find_element(By.ID, "apply").click()
    _wait(browser, lambda d: _cards(d) and all(_fields(c)["sex"] == "female" for c in _cards(d)))
    shown = json.loads(browser.find_element(By.ID, "filter-json").text)
    assert shown == {
        "must": [
            {"key": "sex", "match": {"any": ["female"]}},
            {"key": "age", "range": {"gte": 40, "lte": 70}},
        ]
    }
    cards = _cards(browser)
    assert len(cards) == 30
    for card in cards:
        fields = _fields(card)
        assert fields["sex"] == "female" and 40 <= float(fields["age"]) <= 70, fields
    assert caption.text == "uploaded lesion.jpg"
    _all_pictures_loaded(browser)
    _shot(browser, "filtered", height=1500)  # the filters and the results in one picture


def test_click_a_result_to_search_from_it(browser: WebDriver) -> None:
    """Each click queries by the clicked case's id, the filter still in force; the page's own
    Performance API entries time it (printed, not asserted)."""
    for clicks in range(1, CLICKS + 1):
        chosen = _cards(browser)[1]
        point = chosen.get_attribute("data-id")
        chosen.find_element(By.CSS_SELECTOR, "img.thumb").click()
        _wait(browser, lambda d, n=clicks: len(_measures(d, "click-to-pictures")) == n)
        assert _query_id(browser) == point
        cards = _cards(browser)
        assert cards[0].get_attribute("data-id") == point  # the case itself comes first
        assert float(cards[0].find_element(By.CLASS_NAME, "score").text) > 0.999
        assert all(_fields(c)["sex"] == "female" for c in cards)
    results = _measures(browser, "click-to-results")
    pictures = _measures(browser, "click-to-pictures")
    print(
        f"\nclick-to-results at {N_IMAGES} points (embedded store, {CLICKS} clicks): "
        f"median {statistics.median(results):.0f} ms, max {max(results):.0f} ms; "
        f"with every thumbnail decoded: median {statistics.median(pictures):.0f} ms, "
        f"max {max(pictures):.0f} ms"
    )


def test_detail_view_and_similar_to_this(browser: WebDriver) -> None:
    card = _cards(browser)[2]
    point = card.get_attribute("data-id")
    card.find_element(By.CLASS_NAME, "details").click()
    dialog = browser.find_element(By.ID, "detail")
    _wait(browser, lambda d: dialog.is_displayed())
    full = browser.find_element(By.ID, "detail-picture")
    _wait(browser, lambda d: d.execute_script("return arguments[0].naturalWidth", full) > 0)
    payload = json.loads(browser.find_element(By.ID, "detail-payload").text)
    assert payload["source"]["key"] == payload["image_id"]  # the whole payload, source too
    _shot(browser, "detail")
    browser.find_element(By.ID, "detail-similar").click()
    _wait(browser, lambda d: _cards(d) and _cards(d)[0].get_attribute("data-id") == point)
    assert _query_id(browser) == point
    assert browser.find_element(By.ID, "query-caption").text.startswith(payload["image_id"])


def test_closest_case_per_label(browser: WebDriver, server: str) -> None:
    browser.find_element(By.ID, "tab-groups").click()
    assert Select(browser.find_element(By.ID, "group-field")).first_selected_option.text == "dx"
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#groups tbody tr"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#groups tbody tr")
    shown = [(r.find_elements(By.TAG_NAME, "td")[0].text, r.get_attribute("data-id")) for r in rows]
    query = _query_id(browser)
    keyed = httpx.Client(base_url=server, headers={"X-API-Key": API_KEY}, timeout=60)
    body = {
        "point_id": query,
        "group_by": "dx",
        "groups": 100,
        "filter": json.loads(browser.find_element(By.ID, "filter-json").text),
    }
    expected = keyed.post("/collections/skin/groups", json=body).json()
    assert shown == [(g["group"], g["hits"][0]["id"]) for g in expected]
    assert len({value for value, _ in shown}) == len(shown) > 1
    _all_pictures_loaded(browser)
    _shot(browser, "closest-per-label")


def test_embedding_map(browser: WebDriver, server: str) -> None:
    browser.find_element(By.ID, "tab-map").click()
    canvas = browser.find_element(By.ID, "map")
    # Made once by a worker (t-SNE), then cached: the page polls until it is there.
    WebDriverWait(browser, 300).until(lambda d: canvas.get_attribute("data-drawn"))
    assert int(canvas.get_attribute("data-drawn")) == N_IMAGES  # all of a small collection
    colours = Select(browser.find_element(By.ID, "map-colour"))
    assert colours.first_selected_option.text == "dx"
    legend = browser.find_element(By.ID, "map-legend").text
    assert "melanoma" in legend
    # The query is on the map (it is a case of the sample: drawn where that case is).
    x, y = (float(v) for v in canvas.get_attribute("data-query").split(","))
    _shot(browser, "map")
    _hover(browser, canvas, x, y)
    tip = browser.find_element(By.ID, "map-tip")
    _wait(browser, lambda d: tip.is_displayed())
    tip_picture = browser.find_element(By.ID, "map-tip-picture")
    _wait(browser, lambda d: d.execute_script("return arguments[0].naturalWidth", tip_picture))
    name, label = browser.find_element(By.ID, "map-tip-text").text.split("\n")
    assert name.startswith("ISIC_") and label.startswith("dx: ")  # the case's key, its label
    _shot(browser, "map-hover")
    ActionChains(browser).click().perform()  # opens the case under the pointer
    dialog = browser.find_element(By.ID, "detail")
    _wait(browser, lambda d: dialog.is_displayed())
    opened = dialog.get_attribute("data-id")
    assert browser.find_element(By.ID, "detail-title").text.startswith("ISIC_")
    assert opened in json.loads(keyed_map(server))["ids"]
    browser.find_element(By.ID, "detail-close").click()
    assert len(json.loads(keyed_map(server))["ids"]) == N_IMAGES  # kept: answered at once


def keyed_map(server: str) -> str:
    answer = httpx.get(f"{server}/collections/skin/map", headers={"X-API-Key": API_KEY}, timeout=60)
    assert answer.status_code == 200
    return answer.text


def test_exclude_this_patients_images(
    browser: WebDriver, server: str, patients: str, query_file: tuple[Path, str]
) -> None:
    """A collection whose payloads name the patient: one click leaves that patient out."""
    browser.get(f"{server}/?collection={patients}")
    browser.find_element(By.ID, "file-input").send_keys(str(query_file[0]))
    _wait(browser, lambda d: _cards(d))
    own = _cards(browser)[0]
    patient, point = _fields(own)["patient_id"], own.get_attribute("data-id")
    own.find_element(By.CSS_SELECTOR, "img.thumb").click()  # query by the patient's own case
    exclude = browser.find_element(By.ID, "exclude-patient")
    _wait(browser, lambda d: exclude.is_displayed())
    assert patient in exclude.text
    exclude.click()
    _wait(browser, lambda d: "left out" in exclude.text)
    _wait(browser, lambda d: _cards(d) and point not in _ids(d))
    shown = json.loads(browser.find_element(By.ID, "filter-json").text)
    assert shown == {"must_not": [{"key": "patient_id", "match": {"value": patient}}]}
    assert all(_fields(card)["patient_id"] != patient for card in _cards(browser))
    _shot(browser, "patient-excluded")


@pytest.fixture(scope="module")
def patients(stack: RunningStack, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """120 of the sample's images, their lesion named as the patient, indexed as `patients`."""
    import datasets

    table = datasets.load_dataset(str(dataset), split="train").select(range(120))
    out = tmp_path_factory.mktemp("patients")
    path = out / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    table.rename_column("lesion_id", "patient_id").to_parquet(str(path))
    done = stack.medindex("ingest", "--dataset", str(out), "--collection", "patients", "--json")
    assert done.returncode == 0, done.stderr
    return "patients"


# --- helpers ------------------------------------------------------------------------------


def _shot(browser: WebDriver, name: str, height: int = 1000) -> None:
    browser.set_window_size(1400, height)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(SHOTS / f"{name}.png")
    browser.set_window_size(1400, 1000)


def _sign_in(browser: WebDriver, key: str) -> None:
    _wait(browser, lambda d: d.find_elements(By.ID, "api-key"))
    browser.find_element(By.ID, "api-key").send_keys(key)
    browser.find_element(By.ID, "login-submit").click()


def _wait(browser: WebDriver, condition: object, timeout: float = 60) -> None:
    """Until `condition` holds; elements replaced by a new render meanwhile are looked up again."""
    WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        condition
    )


def _cards(browser: WebDriver, grid: str = "results") -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, f"#{grid} .card")


def _query_id(browser: WebDriver) -> str:
    """The point the page queries by (the caption names it by its key)."""
    return browser.find_element(By.ID, "query-figure").get_attribute("data-id")


def _ids(browser: WebDriver, grid: str = "results") -> list[str]:
    """The cards' point ids, in order, in one round trip."""
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(c => c.dataset.id)",
        f"#{grid} .card",
    )


def _fields(card: WebElement) -> dict[str, str]:
    """The card's fields as shown, in one round trip (one per field made a click's checks
    take seconds)."""
    return card.parent.execute_script(
        "return Object.fromEntries([...arguments[0].querySelectorAll('dd')]"
        ".map(dd => [dd.dataset.field, dd.innerText.trim()]))",
        card,
    )


def _facet(browser: WebDriver, field: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'fieldset.facet[data-field="{field}"] .values')


def _range(browser: WebDriver, field: str, low: str, high: str) -> None:
    fieldset = browser.find_element(By.CSS_SELECTOR, f'fieldset.range[data-field="{field}"]')
    fieldset.find_element(By.CLASS_NAME, "low").send_keys(low)
    fieldset.find_element(By.CLASS_NAME, "high").send_keys(high)


def _measures(browser: WebDriver, name: str) -> list[float]:
    return browser.execute_script(
        "return performance.getEntriesByName(arguments[0]).map(e => e.duration)", name
    )


def _all_pictures_loaded(browser: WebDriver) -> None:
    _wait(
        browser,
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('.view:not([hidden]) img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        ),
    )


def _hover(browser: WebDriver, canvas: WebElement, x: float, y: float) -> None:
    """Move the pointer to canvas pixel (x, y) (selenium's offsets are from the centre)."""
    width, height = canvas.size["width"], canvas.size["height"]
    offset = (round(x - width / 2), round(y - height / 2))
    ActionChains(browser).move_to_element_with_offset(canvas, *offset).perform()
