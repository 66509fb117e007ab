"""The explorer page in a real browser: Debian's headless Chromium, driven by Selenium, against a
live service holding real package descriptions embedded with the default model.

Skipped when Chromium or its driver is missing, unless ``LOOKALIKE_REQUIRE_BROWSER=1`` (CI sets
it after ``make browser``). ``LOOKALIKE_SCREENSHOTS=1`` writes ``docs/explorer-search.png`` and
``docs/explorer-map.png``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike import Client
from lookalike.http.app import create_app
from lookalike.http.background import serving
from lookalike.quality.corpus import documents, load_sample
from lookalike.quality.demo import FIELDS, INDEXES

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
REQUIRED = os.environ.get("LOOKALIKE_REQUIRE_BROWSER") == "1"
SCREENSHOTS = os.environ.get("LOOKALIKE_SCREENSHOTS") == "1"
DOCS = Path(__file__).resolve().parent.parent / "docs"
TOKEN = "token-of-ltlrt-explorer"
RECORDS = 150  # about 260 descriptions in five languages: a map worth looking at, indexed in seconds
WAIT = 30.0
# The demo's fields, the synopsis made a full-text field: the page offers keywords (a hybrid search).
SEARCHABLE = [dict(f, enable_analyzer=True) if f["name"] == "synopsis" else f for f in FIELDS]

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None

_missing = [what for what, ok in (("selenium", webdriver is not None), ("chromium", os.path.exists(CHROMIUM)),
                                  ("chromedriver", os.path.exists(DRIVER))) if not ok]
if _missing and REQUIRED:
    pytest.fail(f"LOOKALIKE_REQUIRE_BROWSER=1 but {', '.join(_missing)} missing (run `make browser`)",
                pytrace=False)
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"{', '.join(_missing)} missing (run `make browser`)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service on a free loopback port, with one collection of package synopses."""
    client = Client(codops="ltlrt", data_dir=tmp_path_factory.mktemp("explorer-data"))
    collection = client.create_collection("packages", SEARCHABLE, INDEXES, embedder="default")
    docs = []
    for doc in documents(load_sample(limit=RECORDS), synopsis_only=True):
        doc["synopsis"] = doc["text"][:512]
        del doc["source"]
        docs.append(doc)
    collection.index(docs)
    app = create_app(client=client, environ={"CODOPS_LTLRT_API_TOKEN": TOKEN})
    with serving(app) as url:
        yield url
    client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="lookalike-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1480,1080",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver: webdriver.Chrome, condition, message: str):
    """The condition's first truthy value, or a failure naming what did not appear (and the page's
    error banner, if it shows one)."""
    try:
        return WebDriverWait(driver, WAIT).until(lambda d: condition(d))
    except Exception as exc:  # selenium's TimeoutException: say what was awaited
        banner = driver.find_element(By.ID, "error").text
        status = driver.find_element(By.ID, "status").text
        raise AssertionError(f"{message} (error banner: {banner!r}, status: {status!r}, "
                             f"console: {severe(driver)})") from exc


def severe(driver: webdriver.Chrome, allowed: tuple[str, ...] = ()) -> list[str]:
    """The console's SEVERE entries since the last call, less the failed requests a step provoked
    on purpose (Chromium logs each 4xx answer to fetch as one)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
            and not (entry.get("source") == "network" and any(status in entry["message"] for status in allowed))]


def hits(driver: webdriver.Chrome) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#hits li.hit")


def shown(driver: webdriver.Chrome) -> int:
    """How many answers the page has shown (it counts them on the hit list)."""
    return int(driver.find_element(By.ID, "hits").get_attribute("data-shown") or 0)


def answered(driver: webdriver.Chrome, before: int, what: str) -> list[str]:
    """The hit ids of the next answer after the ``before``-th."""
    wait(driver, lambda d: shown(d) > before, f"no hits for {what}")
    return [h.get_attribute("data-id") for h in hits(driver)]


def search(driver: webdriver.Chrome, text: str) -> list[str]:
    """Type a query, press Enter, and return the hit ids of its answer."""
    before = shown(driver)
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(text + "\n")
    return answered(driver, before, repr(text))


def test_the_explorer_page_in_chromium(site: str, browser: webdriver.Chrome) -> None:
    driver = browser
    driver.get(site + "/")
    assert driver.title == "lookalike explorer"
    csp = driver.execute_script("return document.querySelector('link[rel=stylesheet]').sheet !== null")
    assert csp, "the style sheet did not load"

    # Sign in: the token is typed into the page and never appears in the URL.
    driver.find_element(By.ID, "codops").send_keys("ltlrt")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "connect").click()
    wait(driver, lambda d: d.find_element(By.ID, "who").is_displayed(), "not signed in")
    assert TOKEN not in driver.current_url
    # One collection: chosen at once, described, and mapped (coloured by language).
    wait(driver, lambda d: "documents" in d.find_element(By.ID, "collection-info").text, "no description")
    dots = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#map .dots circle"), "no map")
    assert len(dots) > 200
    assert driver.find_element(By.ID, "legend").text.startswith("section")
    # Coloured by another field: drawn again, with its legend.
    Select(driver.find_element(By.ID, "color-field")).select_by_value("language")
    wait(driver, lambda d: d.find_element(By.ID, "legend").text.startswith("language"), "no new legend")
    assert "en" in driver.find_element(By.ID, "legend").text.split()
    assert "of the variance" in driver.find_element(By.ID, "map-caption").text

    # A text query: hits with scores, metadata and an explanation; the query and hits on the map.
    first = search(driver, "compress files into an archive")
    assert len(first) == 10
    card = hits(driver)[0]
    assert card.find_element(By.CSS_SELECTOR, ".score").text
    assert "language" in card.find_element(By.CSS_SELECTOR, ".chips").text
    assert card.find_element(By.CSS_SELECTOR, "details.explain")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#highlights .hit-mark")) == 10,
         "the hits are not on the map")
    assert driver.find_elements(By.CSS_SELECTOR, "#highlights .query-star")
    driver.find_element(By.CSS_SELECTOR, "#options summary").click()
    card.find_element(By.CSS_SELECTOR, "details.explain summary").click()
    assert "similarity" in card.find_element(By.CSS_SELECTOR, "details.explain table").text
    if SCREENSHOTS:
        driver.save_screenshot(str(DOCS / "explorer-search.png"))
    # Coloured by the service's clusters (k-means), the query and its hits still on the map.
    Select(driver.find_element(By.ID, "color-field")).select_by_value("cluster:6")
    wait(driver, lambda d: d.find_element(By.ID, "legend").text.startswith("cluster"), "no cluster legend")
    assert "#1" in driver.find_element(By.ID, "legend").text
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#highlights .hit-mark")) == 10,
         "the hits are not on the map coloured by cluster")
    if SCREENSHOTS:
        driver.find_element(By.CSS_SELECTOR, ".map-panel").screenshot(str(DOCS / "explorer-map.png"))

    # More like this: clicking a hit queries by its id; the hit itself is left out.
    chosen, before = first[2], shown(driver)
    hits(driver)[2].find_element(By.CSS_SELECTOR, "button.more").click()
    similar = answered(driver, before, f"more like {chosen}")
    assert driver.find_elements(By.CSS_SELECTOR, f'#query-card li[data-id="{chosen}"]')
    assert chosen not in similar and len(similar) == 10

    # Recommendation options: one hit per package, and a filter.
    Select(driver.find_element(By.ID, "group-by")).select_by_value("package")
    driver.find_element(By.ID, "filter").send_keys('language == "en"')
    driver.find_element(By.CSS_SELECTOR, '[data-mode="text"]').click()  # "more like this" queried by id
    grouped = search(driver, "compress files into an archive")
    chips = [h.find_element(By.CSS_SELECTOR, ".chips").text for h in hits(driver)]
    assert all("language en" in c for c in chips), chips
    titles = [h.find_element(By.CSS_SELECTOR, ".hit-title").text for h in hits(driver)]
    assert len(set(titles)) == len(titles) == len(grouped)
    # Keywords beside the text: a hybrid search, each hit explained by its two routes.
    driver.find_element(By.ID, "keywords").send_keys("library")
    search(driver, "compress files into an archive")
    explained = hits(driver)[0].find_element(By.CSS_SELECTOR, "details.explain")
    explained.find_element(By.TAG_NAME, "summary").click()
    assert "rank" in explained.text
    driver.find_element(By.ID, "keywords").clear()
    assert not severe(driver), "the console shows errors"

    # The service's refusals are shown on the page: a bad filter (400), another organisation (403),
    # a wrong token (401).
    driver.find_element(By.ID, "filter").send_keys(" and")
    driver.find_element(By.ID, "query").send_keys("\n")
    wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed(), "no error shown for a bad filter")
    assert "400" in driver.find_element(By.ID, "error").text
    driver.find_element(By.ID, "signout").click()
    codops = driver.find_element(By.ID, "codops")
    codops.clear()
    codops.send_keys("bbc")  # a valid token, another organisation
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "connect").click()
    wait(driver, lambda d: "403" in d.find_element(By.ID, "error").text, "no 403 shown")
    driver.find_element(By.ID, "token").clear()
    driver.find_element(By.ID, "token").send_keys("not-the-token")
    driver.find_element(By.ID, "connect").click()
    wait(driver, lambda d: "401" in d.find_element(By.ID, "error").text, "no auth error shown")
    assert "not valid" in driver.find_element(By.ID, "error").text
    assert not severe(driver, allowed=("400", "401", "403")), "the console shows errors"
