"""The console in a real headless browser (Debian's chromium driven by its chromedriver
through selenium; no browser is downloaded): an inspector records an inspection with a
photo on a phone-sized window, the task reaches the ledger, the community's rectifier
submits the fix with an after-photo, the inspector verifies and closes it out, and the
dashboard and the public board change. Every page is saved as a screenshot under
var/screenshots/<test>/ (or $CW_SCREENSHOTS) and the directory is printed.

Waits are on page conditions (an element, a text, a URL), never fixed sleeps; where the
page depends on an event another service consumes, the page is reloaded until it shows it.
"""
from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests import support
from tests.integration.console_stack import COMMUNITY, console_stack
from tests.integration.test_accounts_service import PASSWORD
from tests.unit.photos.test_photo_domain import XINYANG, jpeg

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PHONE = (390, 844)
WAIT = 90  # generous: other services consume events on a shared, busy machine


@pytest.fixture
def screenshots(request):
    base = Path(os.environ.get("CW_SCREENSHOTS") or ROOT / "var" / "screenshots")
    directory = base / request.node.name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    yield directory
    print(f"\nscreenshots: {directory}")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(binary) and os.path.exists(driver_path)):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver (apt; .ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--lang=zh-CN"):
        options.add_argument(argument)
    # A phone's screen (headless windows are at least 500 px wide; emulation is not).
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": {
        "width": PHONE[0], "height": PHONE[1], "pixelRatio": 2.0, "touch": True}})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def stack(amqp_uri, database_url, tmp_path):
    with console_stack(amqp_uri, database_url, tmp_path / "photos") as running:
        yield running


class Console:
    """The browser on the console, with the waits the flow needs."""

    def __init__(self, driver, base: str, screenshots: Path):
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait
        self.driver, self.base, self.dir = driver, base, screenshots
        # A page that reloads itself after an action replaces the elements a check holds: look again.
        self.wait = WebDriverWait(driver, WAIT, poll_frequency=0.2,
                                  ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))
        self.shots = 0

    def css(self, selector: str):
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str):
        from selenium.webdriver.common.by import By
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def shot(self, name: str) -> None:
        self.shots += 1
        self.driver.save_screenshot(str(self.dir / f"{self.shots:02d}-{name}.png"))

    def until(self, predicate, message: str):
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException

        def check(_driver):
            try:
                return predicate()
            except StaleElementReferenceException:
                return False  # the page re-rendered between finding an element and reading it
            except WebDriverException as exc:  # chromedriver's words for the same race
                if "does not belong to the document" in str(exc):
                    return False
                raise
        try:
            return self.wait.until(check, message=message)
        except TimeoutException:
            # Keep what the page showed instead: the artifact explains the failure.
            self.driver.save_screenshot(str(self.dir / "failed.png"))
            raise AssertionError(f"waiting for {message}; the page at {self.driver.current_url} shows:\n"
                                 f"{self.css('body').text}") from None

    def click(self, element) -> None:
        # The running score sticks to the bottom of a phone's screen: bring the target to the middle.
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()

    def text(self, selector: str) -> str:
        found = self.all(selector)
        return found[0].text if found else ""

    def reload_until(self, path: str, predicate, message: str):
        def check():
            self.driver.get(self.base + path)
            return predicate()
        return self.until(check, message)

    def sign_in(self, username: str, name: str) -> None:
        self.driver.get(self.base + "/login")
        self.until(lambda: self.all("#username"), "the sign-in form")
        self.css("#username").send_keys(username)
        self.css("#password").send_keys(PASSWORD)
        self.css("#login-submit").click()
        self.until(lambda: self.text("#who") == name, f"{name} signed in")

    def sign_out(self) -> None:
        self.click(self.css("#logout"))
        self.until(lambda: self.driver.current_url.startswith(self.base + "/login"), "the sign-in page")


def seed_scores(stack) -> None:
    """Earlier inspections this month, so both communities reach the minimum sample once
    the browser's inspection is in: 周家山社区 once (100), 新华社区 twice (100, 100)."""
    inspection = stack.api("inspection", "wangfang")
    when = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    for subject in (stack.known["subject"], stack.known["neighbour"], stack.known["neighbour"]):
        response = inspection.post("/inspections", {
            "kind": "routine", "subject_id": subject["subject_id"],
            "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳"],
            "inspected_at": when, "results": [{"item_code": "PT-01", "findings": 0}]})
        assert response.status_code == 201, response.text
    scoring = stack.api("scoring", "zhangwei")
    month = datetime.now(timezone(timedelta(hours=8))).strftime("%Y-%m")

    def scored():
        ranking = scoring.get("/rankings", params={"period": month}).json()
        return {f["name"]: f["inputs"] for f in ranking["ranking"] + ranking["below_minimum_sample"]}
    support.wait_until(lambda: scored() == {"周家山社区": 1, "新华社区": 2}, timeout=WAIT, message="the seeded scores")
    # Last month, both ranked (two inspections each, all clean): the month a bulletin is issued
    # for, since a month still running has none (issue 27).
    cst = timezone(timedelta(hours=8))
    mid_last_month = (datetime.now(cst).replace(day=1, hour=10) - timedelta(days=15))
    for subject in (stack.known["subject"], stack.known["subject"], stack.known["neighbour"], stack.known["neighbour"]):
        response = inspection.post("/inspections", {
            "kind": "routine", "subject_id": subject["subject_id"],
            "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳"],
            "inspected_at": mid_last_month.isoformat(), "results": [{"item_code": "PT-01", "findings": 0}]})
        assert response.status_code == 201, response.text
    last_month = mid_last_month.strftime("%Y-%m")
    support.wait_until(lambda: {f["name"]: f["inputs"] for f in scoring.get(
        "/rankings", params={"period": last_month}).json()["ranking"]} == {"周家山社区": 2, "新华社区": 2},
        timeout=WAIT, message="last month's seeded scores")


def test_inspection_to_close_out_in_the_browser(stack, browser, screenshots, tmp_path):
    seed_scores(stack)
    before_photo, after_photo = tmp_path / "before.jpg", tmp_path / "after.jpg"
    before_photo.write_bytes(jpeg(size=(1200, 900), taken="2026:11:20 09:31:12", gps=XINYANG))
    after_photo.write_bytes(jpeg(size=(800, 600)))
    ui = Console(browser, stack.console, screenshots)

    # The public board before anything is released.
    browser.get(stack.console + "/board")
    ui.until(lambda: ui.text("#board-empty") == "本月榜单尚未发布", "the empty board")
    ui.shot("board-before")

    # 1. The inspector, on a phone: place → checklist, two findings on one item, a photo.
    ui.sign_in("wangfang", "王芳")
    ui.shot("dashboard-inspector")
    browser.get(stack.console + "/inspect")
    from selenium.webdriver.support.ui import Select
    Select(ui.css("#place")).select_by_visible_text("周家山路公厕")
    ui.until(lambda: len(ui.all("fieldset.item")) > 1, "the checklist's items")
    assert Select(ui.css("#subject")).first_selected_option.text == "周家山社区"
    assert ui.text("#running-score") == "100"
    item = ui.all("fieldset.item")[1]
    item_code = item.get_attribute("data-item")
    ui.click(item.find_element("css selector", ".plus"))
    ui.click(item.find_element("css selector", ".plus"))
    ui.until(lambda: item.find_element("css selector", ".findings").text == "2", "two findings")
    running = ui.text("#running-score")
    assert float(running) < 100
    item.find_element("css selector", ".item-note").send_keys("便池有积粪，异味明显")
    item.find_element("css selector", ".photo-input").send_keys(str(before_photo))
    ui.until(lambda: item.find_element("css selector", ".thumbs").get_attribute("data-count") == "1", "the photo")
    ui.shot("inspect-phone")
    ui.click(ui.css("#submit-inspection"))
    ui.until(lambda: "/inspections/" in browser.current_url and ui.text("#score"), "the submitted inspection")
    assert ui.text("#score") == running  # the phone's running score is the server's score
    ui.until(lambda: all(img.get_attribute("naturalWidth") not in (None, "0") for img in ui.all("img.thumb"))
             and ui.all("img.thumb"), "the photo's thumbnail")
    ui.shot("inspection-score")

    # 2. The task reaches the ledger (tasks consumes inspection_submitted).
    ui.reload_until("/ledger", lambda: len(ui.all("#ledger tbody tr")) == 1, "the task in the ledger")
    assert ui.text("#ledger td.status") == "待整改"
    ui.shot("ledger-inspector")
    task_path = "/ledger/" + ui.css("#ledger tbody tr").get_attribute("data-task-id")
    browser.get(stack.console + task_path)
    assert ui.all("#photos-before img") and not ui.all("#actions")  # the inspector has nothing to do yet
    ui.shot("task-inspector")
    ui.driver.get(stack.console + "/")
    ui.until(lambda: ui.text("#light-green") == "1", "one green light")
    ui.sign_out()

    # 3. The community's rectifier starts the fix and submits it with an after-photo.
    ui.sign_in("zhoujie", "周杰")
    browser.get(stack.console + task_path)
    ui.until(lambda: ui.all("#action-start"), "the start button")
    ui.click(ui.css("#action-start"))
    ui.until(lambda: ui.text("#task-status") == "整改中" and ui.all("#action-fix"), "the task in progress")
    ui.css("#action-note").send_keys("已冲洗便池并消毒")
    ui.css("#after-photo").send_keys(str(after_photo))
    ui.until(lambda: ui.css("#after-thumbs").get_attribute("data-count") == "1", "the after-photo")
    ui.shot("task-rectifier")
    ui.click(ui.css("#action-fix"))
    ui.until(lambda: ui.text("#task-status") == "待核实", "the fix submitted")
    assert len(ui.all("#photos-after img")) == 1
    ui.shot("task-fix-submitted")
    ui.sign_out()

    # 4. The inspector verifies and closes it out (销号).
    ui.sign_in("wangfang", "王芳")
    browser.get(stack.console + task_path)
    ui.until(lambda: ui.all("#action-verify"), "the verify button")
    ui.css("#action-note").send_keys("现场复查合格")
    ui.click(ui.css("#action-verify"))
    ui.until(lambda: ui.text("#task-status") == "已销号", "the task closed")
    ui.shot("task-closed")

    # 5. The dashboard changed: no open light left; both communities ranked.
    ui.reload_until("/", lambda: ui.text("#light-green") == "0" and len(ui.all("#ranking tbody tr")) == 2,
                    "the dashboard after close-out")
    ranked = [row.text for row in ui.all("#ranking tbody tr")]
    assert ranked[0].startswith("1 新华社区 100") and ranked[1].startswith("2 周家山社区")
    ui.until(lambda: ui.css("#trend").get_attribute("data-drawn") == "true", "the trend chart")
    ui.shot("dashboard-after")
    ui.sign_out()

    # 6. The office issues the bulletin of the last month that has ended (the page's default);
    # the public board shows that month's ranking.
    ui.sign_in("zhangwei", "张伟")
    browser.get(stack.console + "/bulletins")
    ui.click(ui.css("#generate-bulletin"))
    ui.until(lambda: len(ui.all("#bulletins tbody tr")) == 1, "the bulletin")
    ui.shot("bulletins")
    ui.sign_out()
    browser.delete_all_cookies()
    ui.reload_until("/board", lambda: len(ui.all("#board tbody tr")) == 2, "the released ranking")
    rows = [row.text for row in ui.all("#board tbody tr")]
    assert sorted(row.split()[1] for row in rows) == ["周家山社区", "新华社区"] and all("100" in row for row in rows)
    assert "王芳" not in browser.page_source and "便池有积粪" not in browser.page_source
    assert item_code not in browser.page_source
    ui.shot("board-after")
    assert sorted(p.name for p in screenshots.iterdir()) == [
        "01-board-before.png", "02-dashboard-inspector.png", "03-inspect-phone.png", "04-inspection-score.png",
        "05-ledger-inspector.png", "06-task-inspector.png", "07-task-rectifier.png", "08-task-fix-submitted.png",
        "09-task-closed.png", "10-dashboard-after.png", "11-bulletins.png", "12-board-after.png"]
    assert COMMUNITY


def test_an_inspection_made_offline_waits_on_the_phone_and_is_submitted_once_when_the_network_returns(
        stack, browser, screenshots, tmp_path):
    photo = tmp_path / "offline.jpg"
    photo.write_bytes(jpeg(size=(640, 480), taken="2026:11:21 10:00:00"))
    ui = Console(browser, stack.console, screenshots)
    ui.sign_in("wangfang", "王芳")
    browser.get(stack.console + "/inspect")
    from selenium.webdriver.support.ui import Select
    Select(ui.css("#place")).select_by_visible_text("周家山路公厕")
    ui.until(lambda: len(ui.all("fieldset.item")) > 1, "the checklist's items")

    # The network drops at the place: the finding, its photo and the submission stay on the phone.
    browser.set_network_conditions(offline=True, latency=0, download_throughput=-1, upload_throughput=-1)
    ui.until(lambda: browser.execute_script("return navigator.onLine") is False, "the phone offline")
    item = ui.all("fieldset.item")[0]
    ui.click(item.find_element("css selector", ".plus"))
    item.find_element("css selector", ".photo-input").send_keys(str(photo))
    ui.until(lambda: item.find_element("css selector", ".thumbs").get_attribute("data-count") == "1",
             "the photo kept in the draft")
    ui.click(ui.css("#submit-inspection"))
    ui.until(lambda: "恢复网络后自动提交" in ui.text("#net-status") and len(ui.all("#pending li")) == 1,
             "the submission waiting")
    outbox = browser.execute_script("return JSON.parse(localStorage.getItem('cw-inspection-outbox'))")
    assert len(outbox) == 1 and outbox[0]["key"].startswith("console-")
    assert list(outbox[0]["results"].values())[0]["photos"][0]["pending"].startswith("data:image/jpeg;base64,")
    ui.shot("offline-draft")
    inspection = stack.api("inspection", "wangfang")
    assert inspection.get("/inspections", params={"subject_id": stack.known["subject"]["subject_id"]}).json() == []

    # The network returns: the photo is uploaded, then the inspection, with its idempotency key.
    browser.set_network_conditions(offline=False, latency=0, download_throughput=-1, upload_throughput=-1)
    ui.until(lambda: "/inspections/" in browser.current_url and ui.text("#score"), "the inspection submitted")
    ui.shot("offline-submitted")
    [stored] = inspection.get("/inspections", params={"subject_id": stack.known["subject"]["subject_id"]}).json()
    assert stored["idempotency_key"] == outbox[0]["key"]
    [evidence] = stored["results"][0]["evidence"]
    assert evidence["uri"] == f"photos/{evidence['sha256']}"
    assert evidence["taken_at"].startswith("2026-11-21T10:00:00")
    assert browser.execute_script("return JSON.parse(localStorage.getItem('cw-inspection-outbox'))") == []
    # The same key with another body (not the phone's retry, which sends its entry as it is):
    # refused, naming the key, and nothing new is stored (issue 27).
    again = inspection.post("/inspections", {**{k: v for k, v in stored.items() if k in (
        "kind", "subject_id", "place_id", "inspectors", "inspected_at")}, "checklist": stored["checklist"],
        "idempotency_key": stored["idempotency_key"], "results": []})
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "idempotency_key", again.text
    assert len(inspection.get("/inspections", params={"subject_id": stack.known["subject"]["subject_id"]}).json()) == 1
