"""The support console in headless Chromium against a real API process: look a user up, read the answer as a person
would (probability, band, reasons in plain words, features-as-of, freshness, activity), get a clear message for an
unknown id and a closed account, page and search the high-risk list batch scoring wrote; /docs renders with no
internet. Screenshots go to build/test-artifacts/<test>/."""

import csv
import shutil
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as seen
from selenium.webdriver.support.ui import WebDriverWait

from churn_common.catalog import feature_descriptions
from churn_common.settings import Settings
from monitoring.scoring import score_batch
from tests.serving.world import CLOSED_USERS, FRESH_USERS, UNKNOWN_USER, World, running_server, server_env
from transformations.validation import USERS_SCHEMA

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.browser]

PAGE_SIZE = 3


@pytest.fixture(scope="module")
def console_world(world: World, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A copy of the serving world's data directory (same Feast project online) with its accounts as the
    validation gate writes them, so batch scoring can run there without touching the shared world."""
    data = tmp_path_factory.mktemp("console") / "data"
    shutil.copytree(world.settings.data_dir, data)
    settings = world.settings.model_copy(update={"data_dir": data})
    accounts = world.accounts.sort_values(["user_id", "valid_from"])
    users = accounts.groupby("user_id").agg(
        signup_at=("valid_from", "first"),
        country=("country", "first"),
        plan=("plan", "first"),
        acquisition_channel=("acquisition_channel", "first"),
    )
    closed = accounts[accounts["account_status"] == "closed"].groupby("user_id")["valid_from"].first()
    users["closed_at"] = closed.reindex(users.index)
    settings.paths.users.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(users.reset_index(), schema=USERS_SCHEMA, preserve_index=False), settings.paths.users
    )
    return settings


@pytest.fixture(scope="module")
def high_risk(console_world: Settings) -> list[dict]:
    """The list batch scoring wrote: what the console pages."""
    report = score_batch(console_world)
    with Path(report.high_risk_list).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) > 2 * PAGE_SIZE, "the world's model must rank enough users high to page through"
    return rows


@pytest.fixture(scope="module")
def api(console_world: Settings, high_risk) -> str:
    with running_server(server_env(console_world)) as base:
        yield base


def _wait(browser: WebDriver, condition, timeout: float = 20):
    return WebDriverWait(browser, timeout).until(condition)


def _text(browser: WebDriver, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


def _look_up(browser: WebDriver, user: str) -> None:
    box = browser.find_element(By.ID, "user-id")
    box.clear()
    box.send_keys(user)
    browser.find_element(By.ID, "lookup").click()
    _wait(
        browser,
        lambda b: b.find_element(By.ID, "result").is_displayed() or b.find_element(By.ID, "message").is_displayed(),
    )


def _table_users(browser: WebDriver) -> list[str]:
    return [
        row.find_elements(By.TAG_NAME, "td")[1].text
        for row in browser.find_elements(By.CSS_SELECTOR, "#risk-table tbody tr")
    ]


def test_agent_looks_up_users(console_world: Settings, api: str, chromium: WebDriver, artifacts: Path) -> None:
    user = FRESH_USERS[0]
    expected = httpx.get(f"{api}/predict", params={"user_id": user}).json()
    assert expected["status"] == "scored"
    chromium.get(f"{api}/console")
    _look_up(chromium, str(user))
    assert _text(chromium, "status") == "scored"
    assert _text(chromium, "probability") == f"{expected['churn_probability'] * 100:.1f} %"
    assert _text(chromium, "band") == f"{expected['risk_band']} risk"
    descriptions = feature_descriptions(console_world.event_catalog())
    reasons = [item.text for item in chromium.find_elements(By.CSS_SELECTOR, "#reasons li")]
    assert len(reasons) == len(expected["reasons"]) > 0
    for shown, reason in zip(reasons, expected["reasons"], strict=True):
        assert shown.startswith(descriptions[reason["feature"]] + ":"), shown  # words, not the feature's name
        assert reason["feature"] not in shown
    assert _text(chromium, "features-as-of").startswith(expected["features_as_of"][:19])
    assert "old" in _text(chromium, "freshness")
    series = chromium.find_elements(By.CSS_SELECTOR, "#activity .spark")
    assert series and all(len(s.find_elements(By.TAG_NAME, "rect")) >= 1 for s in series)
    assert series[0].get_attribute("data-feature") == "active_days_7d"
    chromium.save_screenshot(str(artifacts / "console-scored-user.png"))

    _look_up(chromium, str(CLOSED_USERS[0]))
    assert _text(chromium, "status") == "closed" and _text(chromium, "probability") == "not scored"
    assert "closed" in _text(chromium, "detail")
    chromium.save_screenshot(str(artifacts / "console-closed-user.png"))

    _look_up(chromium, str(UNKNOWN_USER))
    assert not chromium.find_element(By.ID, "result").is_displayed()
    assert _text(chromium, "message").startswith("Unknown user:") and str(UNKNOWN_USER) in _text(chromium, "message")
    chromium.save_screenshot(str(artifacts / "console-unknown-user.png"))

    _look_up(chromium, "12a")
    assert _text(chromium, "message") == "A user id is digits only (1, 2, 3, ...)."


def test_agent_pages_and_searches_the_high_risk_list(
    api: str, high_risk: list[dict], chromium: WebDriver, artifacts: Path
) -> None:
    chromium.get(f"{api}/console?page_size={PAGE_SIZE}")
    _wait(chromium, lambda b: len(_table_users(b)) == PAGE_SIZE)
    listed = [row["user_id"] for row in high_risk]
    pages = -(-len(listed) // PAGE_SIZE)
    assert _table_users(chromium) == listed[:PAGE_SIZE]
    assert _text(chromium, "risk-page") == f"Page 1 of {pages} ({len(listed)} users)"
    assert not chromium.find_element(By.ID, "risk-prev").is_enabled()
    chromium.save_screenshot(str(artifacts / "console-high-risk-page-1.png"))

    chromium.find_element(By.ID, "risk-next").click()
    _wait(chromium, lambda b: _text(b, "risk-page").startswith("Page 2 "))
    assert _table_users(chromium) == listed[PAGE_SIZE : 2 * PAGE_SIZE]

    target = listed[-1]
    search = chromium.find_element(By.ID, "risk-search")
    search.send_keys(target)
    search.submit()
    _wait(chromium, lambda b: _text(b, "risk-page").startswith("Page 1 "))
    assert target in _table_users(chromium)
    assert all(user.startswith(target) for user in _table_users(chromium))

    # A listed user's id opens their lookup.
    chromium.find_element(By.LINK_TEXT, target).click()
    _wait(chromium, seen.visibility_of_element_located((By.ID, "result")))
    assert chromium.find_element(By.ID, "user-id").get_attribute("value") == target
    chromium.save_screenshot(str(artifacts / "console-search-and-open.png"))


def test_docs_render_without_internet(api: str, chromium: WebDriver, artifacts: Path) -> None:
    page = httpx.get(f"{api}/docs").text
    assert "cdn." not in page and "fonts.googleapis" not in httpx.get(f"{api}/redoc").text
    chromium.get(f"{api}/docs")
    _wait(chromium, lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {e.text.replace("\u200b", "") for e in chromium.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/predict", "/predict/batch", "/console/api/user", "/console/api/high-risk"} <= paths
    chromium.save_screenshot(str(artifacts / "docs.png"))
