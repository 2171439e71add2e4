import pytest

from services.accounts.service import AccountsService
from services.indicators.service import IndicatorsService
from services.inspection.service import InspectionService
from services.intake.service import IntakeService
from services.notify.service import NotifyService
from services.photos.service import PhotosService
from services.scoring.service import ScoringService
from services.tasks.service import TasksService
from tests import support


@pytest.fixture
def inspection_stack(amqp_uri, database_url):
    """The inspection service of a street stack (金牛山街道) on a free port."""
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url,
                                 WEB_ADDRESSES={"inspection": f"127.0.0.1:{port}"}, MAX_BODY_BYTES=200_000)
    with support.running_services(config, InspectionService) as runner:
        yield {"api": support.ApiClient(f"http://127.0.0.1:{port}"), "config": config, "runner": runner,
               "database_url": database_url, "amqp_uri": amqp_uri}


STACK_SERVICES = {"inspection": InspectionService, "scoring": ScoringService, "tasks": TasksService,
                  "notify": NotifyService, "accounts": AccountsService, "indicators": IndicatorsService,
                  "photos": PhotosService, "intake": IntakeService}


@pytest.fixture(scope="module")
def stack(infrastructure, rabbit_admin, pg_admin, tmp_path_factory):
    """A street stack's five services in this process, seeded with a subject, a place, an
    inspection and its task; the services' base URLs, the stored ids (`known`) and the
    stack's config (`config`: its broker and database)."""
    vhost = support.unique_name("chuangwei-fuzz")
    rabbit_admin.create_vhost(vhost)
    database = support.unique_name("chuangwei_fuzz")
    database_url = pg_admin.create_database(database)
    ports = {name: support.free_port() for name in STACK_SERVICES}
    config = support.base_config(
        support.with_vhost(infrastructure["amqp_uri"], vhost), database_url,
        WEB_ADDRESSES={name: f"127.0.0.1:{port}" for name, port in ports.items()},
        TASKS_SWEEP_INTERVAL=0, NOTIFY_BULLETIN_SCHEDULE=False, NOTIFY_POLL_INTERVAL=0.5,
        NOTIFY_WEBHOOK_ALLOW_PRIVATE=True, PHOTOS_DIR=str(tmp_path_factory.mktemp("photos")))
    try:
        with support.running_services(config, *STACK_SERVICES.values()):
            urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
            yield {**urls, "known": _seed(urls), "config": config}
    finally:
        rabbit_admin.delete_vhost(vhost)
        pg_admin.drop_database(database)


def _seed(urls: dict[str, str]) -> dict[str, str]:
    """A subject, a place, a submitted inspection and its tasks: ids for the fuzzer to aim at."""
    inspection = support.ApiClient(urls["inspection"])
    subject = inspection.post("/subjects", {"subject_type": "child_unit", "node": "411502008001",
                                            "name": "周家山社区"}).json()
    place = inspection.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕",
                                        "node": "411502008001",
                                        "responsible_subject_id": subject["subject_id"]}).json()
    from datetime import datetime, timedelta, timezone
    record = inspection.post("/inspections", {
        "kind": "routine", "subject_id": subject["subject_id"], "place_id": place["place_id"],
        "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳"],
        "inspected_at": (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(),
        "results": [{"item_code": "PT-02", "findings": 1, "note": "便池有积粪"}]})
    assert record.status_code == 201, record.text
    tasks = support.ApiClient(urls["tasks"])
    [task] = support.wait_until(lambda: tasks.get("/tasks").json() or None, message="the finding's task")
    # A 数字城管 case, once intake has learned the community's subject from the inspection.
    platform = support.ApiClient(urls["intake"], token=support.token("数字城管平台", [("platform", "411502000000")]))
    case = support.wait_until(lambda: (r := platform.post("/open311/v2/requests.json", {
        "service_code": "0101", "description": "暴露垃圾", "division_code": "411502008001"})).status_code == 201
        and r.json(), message="intake to take a case")
    indicators = support.ApiClient(urls["indicators"])
    assert indicators.post("/questionnaires", {"code": "residents", "title": "群众满意度调查", "items": [
        {"code": "Q1", "text": "您对公厕卫生是否满意？", "place_type": "public_toilet",
         "scale": [{"value": "5", "label": "满意"}, {"value": "1", "label": "不满意"}], "satisfied": ["5"]}]}
    ).status_code == 201
    survey = indicators.post("/surveys", {"questionnaire": {"code": "residents", "version": 1}, "period": "2026-11",
                                          "areas": [{"node": "411502008001", "frame_size": 20, "sample_size": 3}]})
    assert survey.status_code == 201, survey.text
    return {"subject_id": subject["subject_id"], "place_id": place["place_id"],
            "inspection_id": record.json()["inspection_id"], "task_id": task["task_id"],
            "node": "411502008000", "version": "2010.1", "code": "public-toilet",
            "survey_id": survey.json()["survey_id"], "case_id": case[0]["service_request_id"]}
