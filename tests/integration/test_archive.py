"""The review archive (创卫档案, issue 15): a month of weekly toilet checks with one week left
out on purpose, imported as history, plus one task lived through with its after-photo; the
archive of that month and area opens, holds every record in order with an index and the
month's bulletin, and its completeness report names the planted gap."""
from __future__ import annotations

import base64
import csv
import io
import zipfile
from datetime import datetime, timedelta, timezone

import pytest
from openpyxl import Workbook

from services.contracts.periods import CST, Period, PeriodKind
from services.inspection.imports import COLUMNS, INSPECTIONS, LEDGER, PLACES, SUBJECTS
from services.inspection.service import InspectionService
from services.notify.archive import weeks_in
from services.notify.service import NotifyService
from services.plumbing import clock
from services.tasks.service import TasksService
from tests import support

STREET, COMMUNITY = "411502008000", "411502008001"
MONTH = Period.containing(PeriodKind.month, datetime.now(CST)).previous().previous()
START, END = (m.astimezone(timezone.utc) for m in MONTH.instants())
WEEKS = weeks_in(START, END)
GAP = WEEKS[2]


@pytest.fixture
def street(amqp_uri, database_url):
    ports = {name: support.free_port() for name in ("inspection", "tasks", "notify")}
    config = support.base_config(
        amqp_uri, database_url, WEB_ADDRESSES={k: f"127.0.0.1:{p}" for k, p in ports.items()},
        TASKS_SWEEP_INTERVAL=0, NOTIFY_BULLETIN_SCHEDULE=False, INSPECTION_SCHEDULE_SWEEP_SECONDS=0)
    with support.running_services(config, InspectionService, TasksService, NotifyService):
        yield {name: support.ApiClient(f"http://127.0.0.1:{port}") for name, port in ports.items()}


def visit_day(week: Period) -> datetime:
    week_start = week.instants()[0].astimezone(timezone.utc)
    return max(week_start, START) + timedelta(hours=2)  # 02:00 CST on the week's first day in the month


def history() -> bytes:
    book = Workbook()
    book.remove(book.active)
    sheets = {name: book.create_sheet(name) for name in (SUBJECTS, PLACES, INSPECTIONS, LEDGER)}
    for name, sheet in sheets.items():
        sheet.append([c.header for c in COLUMNS[name]])
    sheets[SUBJECTS].append(["下级单位", COMMUNITY, "周家山社区"])
    sheets[PLACES].append(["公厕", "周家山路公厕", COMMUNITY, None, "周家山社区"])
    for n, week in enumerate(WEEKS):
        if week == GAP:
            continue
        at = visit_day(week).astimezone(CST)
        sheets[INSPECTIONS].append([f"W{n}", "日常检查", "周家山社区", COMMUNITY, "周家山路公厕", "2010.1",
                                    "public-toilet", "王芳", at.strftime("%Y-%m-%d %H:%M"), None])
        sheets[LEDGER].append([f"W{n}", "PT-03", 1, None, "有异味", None, "已通风", "张伟",
                               (at + timedelta(hours=3)).strftime("%Y-%m-%d %H:%M"), "王芳",
                               (at + timedelta(hours=4)).strftime("%Y-%m-%d %H:%M")])
    # A ten-areas check with a food-safety finding: not the city-appearance area's record.
    at = visit_day(WEEKS[0]).astimezone(CST) + timedelta(hours=1)
    sheets[INSPECTIONS].append(["FOOD-1", "明查", "周家山社区", COMMUNITY, None, "2010.1", "national-ten-areas",
                                "李强", at.strftime("%Y-%m-%d %H:%M"), None])
    sheets[LEDGER].append(["FOOD-1", "FOOD-02", 1, None, "消毒记录不全", None, None, None, None, None, None])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def test_the_archive_of_a_month_opens_in_order_and_names_the_planted_gap(street):
    inspection, tasks, notify = street["inspection"], street["tasks"], street["notify"]
    imported = inspection.post("/imports", {"content_base64": base64.b64encode(history()).decode()})
    assert imported.status_code == 200, imported.text
    subject = next(s for s in inspection.get("/subjects").json() if s["node"] == COMMUNITY)
    place = inspection.get("/places").json()[0]

    # One problem lived through in the gap's neighbour week, closed with its after-photo.
    at = visit_day(WEEKS[1]) + timedelta(hours=5)
    clock.set_offset(at + timedelta(minutes=5) - datetime.now(timezone.utc))
    lived = inspection.post("/inspections", {
        "kind": "routine", "subject_id": subject["subject_id"], "place_id": place["place_id"],
        "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳"],
        "inspected_at": at.isoformat(), "results": [{"item_code": "PT-06", "findings": 1, "note": "洗手池损坏"}]})
    assert lived.status_code == 201, lived.text
    [task] = support.wait_until(lambda: [t for t in tasks.get("/tasks").json()
                                         if t["inspection_id"] == lived.json()["inspection_id"]], message="the task")
    rectifier = tasks.as_user("张伟", [("rectifier", COMMUNITY)])
    assert rectifier.post(f"/tasks/{task['task_id']}/start", {}).status_code == 200
    assert rectifier.post(f"/tasks/{task['task_id']}/fix", {
        "note": "已更换", "after_photos": [{"uri": "photos/wash-after.jpg", "sha256": "c" * 64}]}).status_code == 200
    assert tasks.as_user("王芳", [("inspector", STREET)]).post(f"/tasks/{task['task_id']}/verify", {}).status_code == 200
    clock.reset()

    expected_inspections = len(WEEKS)  # every week but the gap, plus the lived one
    # Every problem of the month (the food-safety one too) and every close-out but the food one.
    support.wait_until(lambda: (lambda f: (f["problems_found"], f["tasks_closed"]) == (
        expected_inspections + 1, expected_inspections))(
        notify.post("/bulletins", {"period": MONTH.key, "notify": False}).json()["data"]["figures"]),
        timeout=30, message="the month's bulletin with every problem and close-out")

    assert notify.as_user("王芳", [("inspector", STREET)]).get(
        "/archive", params={"since": MONTH.key, "until": MONTH.key}).status_code == 403
    assert notify.get("/archive", params={"since": MONTH.key, "until": MONTH.key, "area": "XX"}).status_code == 422
    response = notify.get("/archive", params={"since": MONTH.key, "until": MONTH.key, "area": "CITY"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    bulletin_pdf = [n for n in archive.namelist() if n.startswith("04-月度通报/")]
    assert archive.namelist() == ["00-目录.md", "01-检查记录.csv", "02-整改任务.csv", "03-排名.csv", *bulletin_pdf,
                                  "99-完整性报告.md"]
    assert bulletin_pdf and archive.read(bulletin_pdf[-1]).startswith(b"%PDF")
    index = archive.read("00-目录.md").decode("utf-8")
    assert "市容环境卫生" in index and MONTH.key in index and "01-检查记录.csv" in index

    inspections = list(csv.reader(io.StringIO(archive.read("01-检查记录.csv").decode("utf-8-sig"))))[1:]
    assert len(inspections) == expected_inspections
    assert [row[0] for row in inspections] == sorted(row[0] for row in inspections)  # in time order
    assert all(row[6] == "public-toilet" for row in inspections)  # the food-safety check is another area's
    tasks_rows = {row[1]: row for row in csv.reader(io.StringIO(archive.read("02-整改任务.csv").decode("utf-8-sig")))}
    assert tasks_rows[task["task_id"]][11] == "photos/wash-after.jpg"

    report = archive.read("99-完整性报告.md").decode("utf-8")
    gaps = report.split("## 二")[0]
    assert f"- {GAP.key}（" in gaps and gaps.count("\n- ") == 1, report
    unevidenced = report.split("## 二")[1].split("## 三")[0]
    assert unevidenced.count("\n- ") == expected_inspections - 1 and task["task_id"] not in unevidenced
