"""The search page as a viewer, in headless Chromium (test_page.py's browser: no network but
this machine): pictures in their true proportions, window/level from the original data,
cases named by their keys, browsing without a query, the patients' series, the map's lasso,
the working state in the URL, examples and export, collections and jobs, honest states.

Collections: the skin sample (`skin`), and a DICOM and a NIfTI sample indexed here, each with
one file whose pixels are not square (the proportions must follow the spacing, not the
pixel grid). Screenshots of each view go to test-artifacts/page/.
"""

# ruff: noqa: F401, F811  (test_page's fixtures, imported: each test names them as arguments)

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, urlparse

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait
from support import N_IMAGES
from test_page import (
    API_KEY,
    DOWNLOADS,
    _all_pictures_loaded,
    _cards,
    _fields,
    _ids,
    _query_id,
    _shot,
    _sign_in,
    _wait,
    browser,  # the module's own browser
    server,  # the module's own server
)

from pipeline.picture import levels_of
from pipeline.samples.brain_mri import write_brain_mri
from pipeline.samples.dicom import write_dicom
from pipeline.settings import get_settings
from pipeline.sources.window import Window, render
from producers.harness import RunningStack

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SKEWED_DICOM = [0.9, 1.8]  # PixelSpacing of one MR file: rows 0.9 mm apart, columns 1.8
SKEWED_VOXELS = (0.5, 1.5)  # x (the picture's columns), y (its rows) of one NIfTI volume
MAP_PAD, MAP_WIDTH, MAP_HEIGHT = 16, 900, 600  # static/js/map.js: the map's drawing
DASH = "\u2013"  # between the first and last case a page shows


class Site(NamedTuple):
    """What a test drives: the browser, the server's address, an API client with the key,
    and the scans' collections."""

    browser: WebDriver
    server: str
    keyed: httpx.Client
    scans: dict[str, str]


@pytest.fixture(scope="module")
def site(browser: WebDriver, server: str, keyed: httpx.Client, scans: dict[str, str]) -> Site:
    return Site(browser, server, keyed, scans)


@pytest.fixture(scope="module")
def keyed(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"X-API-Key": API_KEY}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def scans(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A DICOM sample (CT with two windows of its own, MR, CR) and two BraTS-style cases,
    indexed as `scans-dicom` and `scans-brain`; one file of each with pixels not square."""
    out = tmp_path_factory.mktemp("scans")
    dicom = write_dicom(out / "dicom", 20, seed=11)
    mr = next(p for p in sorted(dicom.rglob("*.dcm")) if dcmread(p).Modality == "MR")
    header = dcmread(mr)
    header.PixelSpacing = SKEWED_DICOM
    header.save_as(mr)
    brain = write_brain_mri(out / "brain", 2, seed=5)
    volume = next(brain.rglob("*_t1.nii.gz"))
    image = nib.load(volume)
    affine = image.affine.copy()
    affine[0, 0], affine[1, 1] = -SKEWED_VOXELS[0], -SKEWED_VOXELS[1]
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), volume)
    names = {"dicom": "scans-dicom", "brain": "scans-brain"}
    for folder, extra in ((dicom, []), (brain, ["--labels-csv", "labels.csv"])):
        kind = "dicom" if folder == dicom else "brain"
        done = stack.medindex(
            "ingest", "--dataset", str(folder), "--collection", names[kind], "--json", *extra
        )
        assert done.returncode == 0, done.stderr
    return names


def test_sign_in(site: Site) -> None:
    browser, server, _, _ = site
    browser.get(f"{server}/login")
    _sign_in(browser, API_KEY)
    _wait(browser, lambda d: d.find_elements(By.ID, "file-input"))


# --- 1. pictures in their true proportions ------------------------------------------------


def test_every_view_keeps_the_pictures_proportions(site: Site) -> None:
    browser, server, keyed, scans = site
    """Grid, query, results, closest per label, details: drawn width over height is the
    picture's own in the patient (pixels times their spacing), within 2 %; the skewed files
    are among them."""
    for collection in (scans["dicom"], scans["brain"], "skin"):
        _open(browser, server, collection)
        _wait(browser, lambda d: _cards(d, "browse"))
        _all_pictures_loaded(browser)
        checked = _check_proportions(browser, keyed, collection, "#browse img.thumb")
        _shot(browser, f"browse-{collection}")
        _cards(browser, "browse")[0].find_element(By.CSS_SELECTOR, "img.thumb").click()
        _wait(browser, lambda d: _cards(d))
        _all_pictures_loaded(browser)
        checked += _check_proportions(browser, keyed, collection, "#results img.thumb")
        checked += _check_proportions(browser, keyed, collection, "#query-picture")
        browser.find_element(By.ID, "tab-groups").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#groups tbody tr"))
        _all_pictures_loaded(browser)
        checked += _check_proportions(browser, keyed, collection, "#groups img.thumb")
        for card_id in _skewed_or_first(browser, keyed, collection):
            _open_detail(browser, server, collection, card_id)
            checked += _check_proportions(browser, keyed, collection, "#detail-picture")
            _shot(browser, f"viewer-{collection}")
            browser.find_element(By.ID, "detail-close").click()
        skewed = [ratio for _, ratio, natural in checked if abs(ratio / natural - 1) > 0.2]
        if collection != "skin":
            assert skewed, f"{collection}: no picture drawn other than its pixel grid"
        assert len(checked) > 10


def _check_proportions(
    browser: WebDriver, keyed: httpx.Client, collection: str, selector: str
) -> list[tuple[str, float, float]]:
    """(point, drawn width/height, pixel grid's width/height) of each loaded picture, each
    drawn as the picture's width and height in mm (payload `pixel_spacing`: rows, columns).
    What is drawn: the element's box where the picture fills it, the picture's own grid where
    it is fitted inside (`object-fit: contain`); a cropped one (`cover`) fails."""
    found = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter(i => i.complete && i.naturalWidth).map(i => {"
        "  const box = i.getBoundingClientRect(), fit = getComputedStyle(i).objectFit;"
        "  const grid = i.naturalWidth / i.naturalHeight;"
        "  const drawn = fit === 'fill' ? box.width / box.height : fit === 'contain' ? grid : 0;"
        "  return [i.closest('[data-id]').dataset.id, drawn, grid]; })",
        selector,
    )
    assert found, f"no picture at {selector}"
    for point, drawn, natural in found:
        payload = keyed.get(f"/collections/{collection}/points/{point}").json()["payload"]
        row_mm, column_mm = payload.get("pixel_spacing", [1, 1])
        expected = natural * column_mm / row_mm
        assert abs(drawn / expected - 1) <= 0.02, (collection, selector, point, drawn, expected)
    return found


def _skewed_or_first(browser: WebDriver, keyed: httpx.Client, collection: str) -> list[str]:
    """The point of the collection whose pixels are not square (else its first): for details."""
    points = keyed.post(f"/collections/{collection}/scroll", json={"limit": 100}).json()["points"]
    skewed = [p["id"] for p in points if len(set(p["payload"].get("pixel_spacing", [1]))) > 1]
    return skewed[:1] or [points[0]["id"]]


def test_details_zoom_and_pan_keep_the_proportions(site: Site) -> None:
    browser, server, keyed, scans = site
    collection = scans["dicom"]
    (point,) = _skewed_or_first(browser, keyed, collection)
    _open_detail(browser, server, collection, point)
    picture = browser.find_element(By.ID, "detail-picture")
    before = picture.rect
    stage = browser.find_element(By.ID, "stage")
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(stage), 0, -300).perform()
    _wait(browser, lambda d: picture.rect["width"] > 1.3 * before["width"])
    zoomed = picture.rect
    assert abs(zoomed["width"] / zoomed["height"] / (before["width"] / before["height"]) - 1) < 0.02
    _drag(browser, stage, 60, 40)
    _wait(browser, lambda d: abs(picture.rect["x"] - zoomed["x"] - 60) < 2)
    _check_proportions(browser, keyed, collection, "#detail-picture")
    _shot(browser, "viewer-zoomed")
    browser.find_element(By.ID, "viewer-reset").click()
    _wait(browser, lambda d: abs(picture.rect["width"] - before["width"]) < 1)
    browser.find_element(By.ID, "detail-close").click()


# --- 2. window/level from the original data -----------------------------------------------


def test_window_presets_render_from_the_original_data(site: Site) -> None:
    browser, server, keyed, scans = site
    collection = scans["dicom"]
    point = _first_point(
        keyed, collection, {"must": [{"key": "modality", "match": {"value": "CT"}}]}
    )
    _open_detail(browser, server, collection, point["id"])
    preset = browser.find_element(By.ID, "window-preset")
    _wait(browser, lambda d: len(Select(preset).options) > 1)
    offered = [o.text for o in Select(preset).options]
    assert offered == [
        "as embedded",
        "file window 1 (40/400)",
        "file window 2 (-600/1500)",
        "lung (-600/1500)",
        "soft tissue (40/400)",
        "bone (400/1800)",
        "brain (40/80)",
    ]
    picture = browser.find_element(By.ID, "detail-picture")
    assert "as embedded" in browser.find_element(By.ID, "window-label").text
    embedded = _shown_pixels(browser, keyed, picture)
    levels = levels_of(point["payload"]["source"], get_settings())
    seen = {embedded.tobytes()}
    for name, window in (("lung", Window(-600, 1500)), ("bone", Window(400, 1800))):
        Select(preset).select_by_visible_text(f"{name} ({window.center:g}/{window.width:g})")
        _wait(browser, lambda d, w=window: picture.get_attribute("data-window") == _cw(w))
        shown = _shown_pixels(browser, keyed, picture)
        assert (shown == render(levels, window)).all()  # the original data, windowed
        assert shown.tobytes() not in seen  # each window its own picture
        seen.add(shown.tobytes())
        label = browser.find_element(By.ID, "window-label").text
        assert f"rendered from the original data through {name}" in label
    _shot(browser, "viewer-window-preset")
    browser.find_element(By.ID, "tool-window").click()  # drag: across the width, down the center
    _drag(browser, browser.find_element(By.ID, "stage"), -80, 50)
    _wait(browser, lambda d: picture.get_attribute("data-window") not in ("", _cw(window)))
    assert "a dragged window" in browser.find_element(By.ID, "window-label").text
    center, width = (float(v) for v in picture.get_attribute("data-window").split("/"))
    assert center > window.center and width < window.width
    assert (_shown_pixels(browser, keyed, picture) == render(levels, Window(center, width))).all()
    _shot(browser, "viewer-window-dragged")
    browser.find_element(By.ID, "viewer-reset").click()
    _wait(browser, lambda d: picture.get_attribute("data-window") == "")
    assert (_shown_pixels(browser, keyed, picture) == embedded).all()  # as embedded again
    browser.find_element(By.ID, "detail-close").click()


def test_an_mr_slice_offers_no_ct_presets_but_drags(site: Site) -> None:
    browser, server, keyed, scans = site
    collection = scans["brain"]
    point = _first_point(keyed, collection)
    _open_detail(browser, server, collection, point["id"])
    tool = browser.find_element(By.ID, "tool-window")
    _wait(browser, lambda d: tool.is_displayed())
    assert [o.text for o in Select(browser.find_element(By.ID, "window-preset")).options] == [
        "as embedded"
    ]
    picture = browser.find_element(By.ID, "detail-picture")
    tool.click()
    _drag(browser, browser.find_element(By.ID, "stage"), 40, -30)
    _wait(browser, lambda d: picture.get_attribute("data-window"))
    center, width = (float(v) for v in picture.get_attribute("data-window").split("/"))
    levels = levels_of(point["payload"]["source"], get_settings())
    assert (_shown_pixels(browser, keyed, picture) == render(levels, Window(center, width))).all()
    browser.find_element(By.ID, "detail-close").click()
    # A skin photograph has no grey levels: no window to set, and no control offering one.
    _open_detail(
        browser,
        server,
        "skin",
        keyed.post("/collections/skin/scroll", json={"limit": 1}).json()["points"][0]["id"],
    )
    _wait(browser, lambda d: d.find_element(By.ID, "detail-picture").get_attribute("data-ratio"))
    assert not browser.find_element(By.ID, "tool-window").is_displayed()
    assert not browser.find_element(By.ID, "window-choice").is_displayed()
    browser.find_element(By.ID, "detail-close").click()


def _cw(window: Window) -> str:
    return f"{window.center:g}/{window.width:g}"


def _shown_pixels(browser: WebDriver, keyed: httpx.Client, picture: object) -> np.ndarray:
    """The picture the viewer shows, once loaded: the server's answer for its address, checked
    against what the browser decoded (the sum of its grey values)."""
    _wait(browser, lambda d: d.execute_script("return arguments[0].complete", picture))
    src = picture.get_attribute("src")
    pixels = np.asarray(Image.open(io.BytesIO(keyed.get(src).content)).convert("L"))
    drawn = browser.execute_script(
        "const i = arguments[0], c = document.createElement('canvas');"
        "c.width = i.naturalWidth; c.height = i.naturalHeight;"
        "const x = c.getContext('2d'); x.drawImage(i, 0, 0);"
        "const d = x.getImageData(0, 0, c.width, c.height).data; let s = 0;"
        "for (let k = 0; k < d.length; k += 4) s += d[k]; return s;",
        picture,
    )
    assert drawn == int(pixels.astype(np.int64).sum())
    return pixels


# --- 3. cases by their name ---------------------------------------------------------------


def test_no_uuid_in_any_caption(site: Site) -> None:
    browser, server, keyed, scans = site
    """Cards, the query's caption, closest per label, the dialog's title, the map's tooltip:
    a case is named by its key (a slice of a case, a DICOM series and instance), never its id."""
    names = {
        "skin": re.compile(r"ISIC_\d+"),
        scans["dicom"]: re.compile(r"series [0-9a-f]{8} · instance \d+( · .+)?"),
        scans["brain"]: re.compile(r"BraTS_\d+ (t1|t1ce|t2|flair) slice \d+"),
    }
    for collection, name in names.items():
        _open(browser, server, collection)
        _wait(browser, lambda d: _cards(d, "browse"))
        card = _cards(browser, "browse")[1]
        point = card.get_attribute("data-id")
        card.find_element(By.CSS_SELECTOR, "img.thumb").click()
        _wait(browser, lambda d: _cards(d))
        browser.find_element(By.ID, "tab-groups").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#groups tbody tr"))
        shown = [
            browser.find_element(By.ID, "query-caption").text.split(" (")[0],
            *_texts(browser, "#groups td.name"),
            *_texts(browser, "#results .card .name"),
        ]
        _open_detail(browser, server, collection, point)
        shown.append(browser.find_element(By.ID, "detail-title").text)
        captions = browser.execute_script(
            "return [...document.querySelectorAll('figcaption, .card .name, h2, td, img')]"
            ".map(e => e.textContent + ' ' + (e.alt || '') + ' ' + (e.title || '')).join('\\n')"
        )
        browser.find_element(By.ID, "detail-close").click()
        assert not UUID.search(captions), UUID.search(captions)
        for text in shown:
            assert name.fullmatch(text), (collection, text)
        payload = keyed.get(f"/collections/{collection}/points/{point}").json()["payload"]
        if collection == scans["dicom"]:
            assert payload["instance_number"] > 0 and "series_description" in payload
            assert f"instance {payload['instance_number']}" in shown[-1]


# --- 4. DICOM's patients, studies and series ----------------------------------------------


def test_patients_studies_series_and_one_result_per_series(site: Site) -> None:
    browser, server, keyed, scans = site
    collection = scans["dicom"]
    payloads = [
        p["payload"]
        for p in keyed.post(f"/collections/{collection}/scroll", json={"limit": 100}).json()[
            "points"
        ]
    ]
    _open(browser, server, collection)
    browser.find_element(By.ID, "tab-patients").click()
    picks = browser.find_elements(By.CSS_SELECTOR, "#patients .pick")
    by_field = {f: [p for p in picks if p.get_attribute("data-field") == f] for f in
                ("patient", "study", "series")}  # fmt: skip
    for field, nodes in by_field.items():
        assert {n.get_attribute("data-value") for n in nodes} == {p[field] for p in payloads}
        for node in nodes:  # shortened, the whole id on hover
            assert node.get_attribute("title") == node.get_attribute("data-value")
            assert node.text.endswith(node.get_attribute("data-value")[:8])
    _shot(browser, "patients")
    series = max(by_field["series"], key=lambda n: n.get_attribute("data-value")).get_attribute(
        "data-value"
    )
    next(n for n in by_field["series"] if n.get_attribute("data-value") == series).click()
    in_series = sum(p["series"] == series for p in payloads)
    _wait(browser, lambda d: len(_cards(d, "browse")) == in_series)
    assert all(_fields(c)["series"] == series for c in _cards(browser, "browse"))
    assert json.loads(browser.find_element(By.ID, "filter-json").text) == {
        "must": [{"key": "series", "match": {"any": [series]}}]
    }
    # Results, one per series: as many results as series, each another one.
    _open(browser, server, collection)
    _wait(browser, lambda d: _cards(d, "browse"))
    _cards(browser, "browse")[0].find_element(By.CSS_SELECTOR, "img.thumb").click()
    _wait(browser, lambda d: _cards(d))
    Select(browser.find_element(By.ID, "one-per")).select_by_value("series")
    every = {p["series"] for p in payloads}
    _wait(browser, lambda d: len(_cards(d)) == len(every))
    assert {_fields(c)["series"] for c in _cards(browser)} == every
    assert "one per series" in browser.find_element(By.ID, "status").text


# --- 5. browse without a query ------------------------------------------------------------


def test_browse_pages_through_the_collection(site: Site) -> None:
    browser, server, keyed, _ = site
    _open(browser, server, "skin")
    _wait(browser, lambda d: len(_cards(d, "browse")) == 24)
    first = _ids(browser, "browse")
    place = browser.find_element(By.ID, "browse-place")
    assert place.text.startswith(f"cases 1{DASH}24 of {N_IMAGES}")
    assert not browser.find_element(By.ID, "browse-previous").is_enabled()
    browser.find_element(By.ID, "browse-next").click()
    _wait(browser, lambda d: place.text.startswith(f"cases 25{DASH}48 of {N_IMAGES}"))
    second = _ids(browser, "browse")
    assert len(second) == 24 and not set(first) & set(second)
    assert first + second == [
        p["id"] for p in keyed.post("/collections/skin/scroll", json={"limit": 48}).json()["points"]
    ]
    browser.find_element(By.ID, "browse-previous").click()
    _wait(browser, lambda d: place.text.startswith(f"cases 1{DASH}24"))
    assert _ids(browser, "browse") == first
    # Filters apply as they change: no button pressed.
    Select(_facet(browser, "sex")).select_by_value("female")
    female = {"must": [{"key": "sex", "match": {"any": ["female"]}}]}
    count = keyed.get("/collections/skin/count", params={"filter": json.dumps(female)}).json()
    _wait(browser, lambda d: f"of {count['count']} matching" in place.text)
    assert all(_fields(c)["sex"] == "female" for c in _cards(browser, "browse"))
    _all_pictures_loaded(browser)
    _shot(browser, "browse")


def test_type_ahead_and_histograms(site: Site) -> None:
    browser, server, keyed, _ = site
    _open(browser, server, "skin")
    facet = browser.find_element(By.CSS_SELECTOR, 'fieldset.facet[data-field="lesion_id"]')
    listed = {o.get_attribute("value") for o in facet.find_elements(By.TAG_NAME, "option")}
    everyone = {
        p["payload"]["lesion_id"]
        for p in keyed.post("/collections/skin/scroll", json={"limit": 1000}).json()["points"]
    }
    rare = sorted(everyone - listed)[0]  # not among the most common the list shows
    find = facet.find_element(By.CLASS_NAME, "type-ahead")
    find.send_keys(rare[:-1])
    _wait(browser, lambda d: int(find.get_attribute("data-suggested") or 0) > 0)
    options = facet.find_elements(By.CSS_SELECTOR, "datalist option")
    suggested = [o.get_attribute("value") for o in options]
    assert rare in suggested and all(rare[:-1] in s for s in suggested)
    find.send_keys(rare[-1])
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", find)
    _wait(browser, lambda d: rare in d.find_element(By.ID, "filter-json").text)
    assert json.loads(browser.find_element(By.ID, "filter-json").text) == {
        "must": [{"key": "lesion_id", "match": {"any": [rare]}}]
    }
    _wait(browser, lambda d: _cards(d, "browse") and all(
        _fields(c)["lesion_id"] == rare for c in _cards(d, "browse")))  # fmt: skip
    # A histogram's bar is a range.
    Select(facet.find_element(By.CLASS_NAME, "values")).deselect_all()
    ages = browser.find_element(By.CSS_SELECTOR, 'fieldset.range[data-field="age"]')
    bars = ages.find_elements(By.CSS_SELECTOR, "svg.histogram rect")
    assert len(bars) > 3
    bar = bars[len(bars) // 2]
    low, high = float(bar.get_attribute("data-low")), float(bar.get_attribute("data-high"))
    bar.click()
    _wait(browser, lambda d: '"range"' in d.find_element(By.ID, "filter-json").text)
    assert json.loads(browser.find_element(By.ID, "filter-json").text) == {
        "must": [{"key": "age", "range": {"gte": low, "lte": high}}]
    }
    _wait(browser, lambda d: _cards(d, "browse") and all(
        low <= float(_fields(c)["age"]) <= high for c in _cards(d, "browse")))  # fmt: skip
    _all_pictures_loaded(browser)
    _shot(browser, "filters-type-ahead-histogram", height=1500)


# --- 6. the map ---------------------------------------------------------------------------


def test_lasso_selects_cases_then_filters_by_them(site: Site) -> None:
    browser, server, keyed, _ = site
    _open(browser, server, "skin")
    browser.find_element(By.ID, "tab-map").click()
    canvas = browser.find_element(By.ID, "map")
    WebDriverWait(browser, 300).until(lambda d: canvas.get_attribute("data-drawn"))
    browser.find_element(By.ID, "map-lasso").click()
    corners = [(300, 200), (600, 200), (600, 420), (300, 420)]  # canvas pixels
    chain = ActionChains(browser).move_to_element_with_offset(canvas, *_from_centre(corners[0]))
    chain.click_and_hold()
    for (x0, y0), (x1, y1) in zip(corners, [*corners[1:], corners[0]], strict=True):
        for step in range(1, 5):  # a straight edge, traced
            chain.move_to_element_with_offset(
                canvas, *_from_centre((x0 + (x1 - x0) * step / 4, y0 + (y1 - y0) * step / 4))
            )
    chain.release().perform()
    _wait(browser, lambda d: int(canvas.get_attribute("data-selected") or 0) > 0)
    _shot(browser, "map-lasso")
    surely, maybe = _inside_rectangle(keyed, corners)
    browser.find_element(By.ID, "selection-filter").click()
    _wait(browser, lambda d: "has_id" in d.find_element(By.ID, "filter-json").text)
    (clause,) = json.loads(browser.find_element(By.ID, "filter-json").text)["must"]
    selected = set(clause["has_id"])
    assert surely <= selected <= maybe
    assert len(selected) == int(canvas.get_attribute("data-selected"))
    # The filter in force applies to the map: the others are drawn pale.
    _wait(browser, lambda d: canvas.get_attribute("data-matching") == str(len(selected)))
    _shot(browser, "map-filtered")
    browser.find_element(By.ID, "tab-browse").click()
    place = browser.find_element(By.ID, "browse-place")
    _wait(browser, lambda d: f"of {len(selected)} matching" in place.text)
    assert {c.get_attribute("data-id") for c in _cards(browser, "browse")} <= selected
    browser.find_element(By.ID, "selection-drop").click()
    _wait(browser, lambda d: d.find_element(By.ID, "filter-json").text == "null")


def _from_centre(point: tuple[float, float]) -> tuple[int, int]:
    """Selenium's offsets are from an element's centre."""
    return round(point[0] - MAP_WIDTH / 2), round(point[1] - MAP_HEIGHT / 2)


def _inside_rectangle(keyed: httpx.Client, corners: list) -> tuple[set[str], set[str]]:
    """The map's cases inside the rectangle, as the page draws them (fitted into the canvas,
    y up): those 1 px inside surely, those within 1 px of its edge maybe."""
    drawn = keyed.get("/collections/skin/map").json()
    xs, ys = np.array(drawn["x"]), np.array(drawn["y"])
    px = MAP_PAD + (xs - xs.min()) * (MAP_WIDTH - 2 * MAP_PAD) / (np.ptp(xs) or 1)
    py = MAP_HEIGHT - MAP_PAD - (ys - ys.min()) * (MAP_HEIGHT - 2 * MAP_PAD) / (np.ptp(ys) or 1)
    (x0, y0), (x1, y1) = corners[0], corners[2]

    def within(margin: float) -> set[str]:
        inside = (px > x0 + margin) & (px < x1 - margin) & (py > y0 + margin) & (py < y1 - margin)
        return {drawn["ids"][i] for i in np.flatnonzero(inside)}

    return within(1), within(-1)


# --- 7. working state: the URL, examples, export ------------------------------------------


def test_url_state_round_trips_and_back_works(site: Site) -> None:
    browser, server, _, _ = site
    _open(browser, server, "skin")
    Select(_facet(browser, "sex")).select_by_value("male")
    _wait(browser, lambda d: "male" in d.find_element(By.ID, "filter-json").text)
    # A page of cards, every one male (the grid is empty while its next page is on its way).
    _wait(browser, lambda d: len(cards := _cards(d, "browse")) > 2 and all(
        _fields(c)["sex"] == "male" for c in cards))  # fmt: skip
    _cards(browser, "browse")[2].find_element(By.CSS_SELECTOR, "img.thumb").click()
    _wait(browser, lambda d: _cards(d))
    browser.find_element(By.ID, "tab-groups").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#groups tbody tr"))
    shared = browser.current_url
    state = parse_qs(urlparse(shared).query)
    query, shown = _query_id(browser), browser.find_element(By.ID, "filter-json").text
    assert state["collection"] == ["skin"] and state["view"] == ["groups"]
    assert state["q"] == [query] and json.loads(state["filter"][0]) == json.loads(shown)
    browser.get("about:blank")
    browser.get(shared)  # as someone it was sent to opens it
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#groups tbody tr"))
    assert "active" in browser.find_element(By.ID, "tab-groups").get_attribute("class")
    assert _query_id(browser) == query
    assert browser.find_element(By.ID, "filter-json").text == shown
    assert Select(_facet(browser, "sex")).all_selected_options[0].get_attribute("value") == "male"
    browser.find_element(By.ID, "tab-map").click()
    _wait(browser, lambda d: "view=map" in d.current_url)
    browser.back()
    _wait(browser, lambda d: "active" in d.find_element(By.ID, "tab-groups").get_attribute("class"))
    assert browser.current_url == shared and _query_id(browser) == query


def test_examples_recommend_and_export(site: Site) -> None:
    browser, server, _, _ = site
    _open(browser, server, "skin")
    _wait(browser, lambda d: len(_cards(d, "browse")) == 24)
    cards = _cards(browser, "browse")
    liked = [cards[0].get_attribute("data-id"), cards[3].get_attribute("data-id")]
    unliked = cards[5].get_attribute("data-id")
    for card in (cards[0], cards[3]):
        card.find_element(By.CSS_SELECTOR, ".example.positive").click()
    cards[5].find_element(By.CSS_SELECTOR, ".example.negative").click()
    assert browser.find_element(By.ID, "examples-text").text == "Examples: 2 positive, 1 negative"
    browser.find_element(By.ID, "recommend").click()
    _wait(browser, lambda d: _cards(d))
    state = parse_qs(urlparse(browser.current_url).query)
    assert state["pos"] == [",".join(liked)] and state["neg"] == [unliked]
    assert browser.find_element(By.ID, "query-caption").text == "like 2 cases, unlike 1"
    shown = [c.get_attribute("data-id") for c in _cards(browser)]
    assert not set(shown) & {*liked, unliked}  # the examples themselves are left out
    for old in DOWNLOADS.glob("*"):
        old.unlink()
    for button in browser.find_elements(By.CSS_SELECTOR, "#view-results .export"):
        button.click()
    csv_file, json_file = DOWNLOADS / "skin-results.csv", DOWNLOADS / "skin-results.json"
    _wait(browser, lambda d: csv_file.exists() and json_file.exists())
    rows = list(csv.DictReader(io.StringIO(csv_file.read_text())))
    assert [r["id"] for r in rows] == shown == [r["id"] for r in json.loads(json_file.read_text())]
    assert list(rows[0]) == ["key", "name", "id", "score", "dx"]
    assert all(r["key"].startswith("ISIC_") and float(r["score"]) for r in rows)
    _all_pictures_loaded(browser)
    _shot(browser, "recommended")


# --- 8. collections and jobs --------------------------------------------------------------


def test_collections_and_jobs(site: Site) -> None:
    browser, server, _, scans = site
    _open(browser, server, scans["dicom"])
    browser.find_element(By.ID, "tab-collections").click()
    table = browser.find_element(By.ID, "collections")
    header = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert header == ["collection", "points", "vectors", "label", "model", "dataset",
                      "read as", "quality", "created"]  # fmt: skip
    rows = {
        r.find_element(By.TAG_NAME, "a").text: r.find_elements(By.TAG_NAME, "td")
        for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    }
    cells = rows[scans["dicom"]]
    assert cells[2].text.startswith("384-d cosine") and "payload indexes" in cells[2].text
    assert cells[3].text == "modality" and "random weights" in cells[4].text
    dataset = cells[5].find_element(By.CLASS_NAME, "path")
    assert dataset.get_attribute("title").endswith("/dicom") and len(dataset.text) <= 30
    assert rows[scans["brain"]][6].text == "nifti: labels_csv=labels.csv"
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 1400  # no path pushes a column off the screen
    _shot(browser, "collections-facts")
    browser.find_element(By.ID, "tab-jobs").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs tbody tr"))
    # Read in one call: the view redraws its table on a timer, which would stale the rows.
    table = browser.execute_script(
        "return [...document.querySelectorAll('#jobs tbody tr')]"
        ".map(r => [...r.cells].map(c => c.innerText.trim()))"
    )
    jobs = {cells[2]: cells for cells in table}
    # This module's own jobs: the session's first ones (skin) may be older than the newest 20.
    brain = jobs[scans["brain"]]
    assert brain[1] == "ingest" and brain[3] == "done"
    indexed, total = re.search(r"(\d+) / (\d+)$", brain[4]).groups()
    assert indexed == total != "0"
    dicom = jobs[scans["dicom"]]
    assert dicom[7].startswith("1") and "no pixel data" in dicom[7]  # the SR: its reason shown
    flower = browser.find_element(By.ID, "flower-link")
    port = get_settings().flower_port
    assert flower.get_attribute("href") == f"{server.rsplit(':', 1)[0]}:{port}/"
    _shot(browser, "jobs")


# --- 9. honest states ---------------------------------------------------------------------


def test_a_random_model_says_so(site: Site) -> None:
    browser, server, _, _ = site
    _open(browser, server, "skin")
    warning = browser.find_element(By.ID, "random-model")
    assert warning.is_displayed() and "randomly initialised model" in warning.text


def test_errors_are_styled_as_errors(site: Site, tmp_path: Path) -> None:
    browser, server, _, _ = site
    _open(browser, server, "skin")
    status = browser.find_element(By.ID, "status")
    _wait(browser, lambda d: _cards(d, "browse"))  # the grid's page comes after the document
    _cards(browser, "browse")[0].find_element(By.CSS_SELECTOR, "img.thumb").click()
    _wait(browser, lambda d: status.text.endswith("results"))
    calm = _style(browser, status)
    not_a_picture = tmp_path / "notes.txt"
    not_a_picture.write_text("not an image")
    browser.find_element(By.ID, "file-input").send_keys(str(not_a_picture))
    _wait(browser, lambda d: "error" in status.get_attribute("class"))
    assert status.text.startswith("query image refused")
    assert status.get_attribute("role") == "alert"
    style = _style(browser, status)
    assert style["color"] == "rgb(185, 28, 28)" != calm["color"]  # red, not the muted grey
    assert style["background"] != calm["background"] and style["border"] == "4px"
    _all_pictures_loaded(browser)
    _shot(browser, "error")


def _style(browser: WebDriver, element: object) -> dict[str, str]:
    return browser.execute_script(
        "const s = getComputedStyle(arguments[0]);"
        "return {color: s.color, background: s.backgroundColor, border: s.borderLeftWidth};",
        element,
    )


def test_an_unknown_collection_is_a_page(site: Site) -> None:
    browser, server, keyed, _ = site
    assert keyed.get("/", params={"collection": "no-such"}).status_code == 404
    browser.get(f"{server}/?collection=no-such")
    heading = browser.find_element(By.CSS_SELECTOR, "#unknown-collection h2")
    assert heading.text == "No collection named “no-such”"
    assert _style(browser, heading)["color"] == "rgb(185, 28, 28)"
    links = browser.find_elements(By.CSS_SELECTOR, "#unknown-collection a")
    assert "skin" in [a.text for a in links]
    _shot(browser, "unknown-collection")


def test_docs_load_with_the_network_cut_off(site: Site) -> None:
    browser, server, _, _ = site
    """The browser resolves no name but this machine's: Swagger UI's assets come from here."""
    browser.get(f"{server}/docs")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))
    title = browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    assert title.startswith("medindex search")
    assert browser.find_elements(By.CSS_SELECTOR, ".opblock")  # the operations, drawn
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(url.startswith(server) for url in loaded), loaded
    _shot(browser, "docs")


# --- helpers ------------------------------------------------------------------------------


def _drag(browser: WebDriver, element: object, dx: int, dy: int) -> None:
    ActionChains(browser).move_to_element(element).click_and_hold().move_by_offset(
        dx, dy
    ).release().perform()


def _first_point(keyed: httpx.Client, collection: str, filter: dict | None = None) -> dict:
    found = keyed.post(f"/collections/{collection}/scroll", json={"filter": filter, "limit": 1})
    return found.json()["points"][0]


def _texts(browser: WebDriver, selector: str) -> list[str]:
    """The text of each element `selector` finds, read at once (a view drawn anew meanwhile
    would leave selenium's elements stale)."""
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", selector
    )


def _open(browser: WebDriver, server: str, collection: str) -> None:
    browser.get(f"{server}/?collection={collection}")
    _wait(browser, lambda d: d.execute_script("return document.readyState") == "complete")


def _open_detail(browser: WebDriver, server: str, collection: str, point: str) -> None:
    """A case's details, opened from the grid of a page filtered to it."""
    only = json.dumps({"must": [{"has_id": [point]}]})
    browser.get(f"{server}/?collection={collection}&filter={only}")
    _wait(browser, lambda d: len(_cards(d, "browse")) == 1)
    _cards(browser, "browse")[0].find_element(By.CLASS_NAME, "details").click()
    _wait(browser, lambda d: d.find_element(By.ID, "detail").is_displayed())
    picture = browser.find_element(By.ID, "detail-picture")
    _wait(browser, lambda d: picture.get_attribute("data-ratio") and picture.is_displayed())


def _facet(browser: WebDriver, field: str) -> object:
    return browser.find_element(By.CSS_SELECTOR, f'fieldset.facet[data-field="{field}"] .values')
