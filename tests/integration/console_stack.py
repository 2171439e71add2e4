"""A whole street stack behind the console, for the console's tests: accounts (the token
issuer every service trusts through its JWKS), inspection, scoring, tasks, notify, photos
and the console, each on its own port in this process, with people to sign in as."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import requests

from services.accounts.service import AccountsService
from services.console.service import ConsoleService
from services.inspection.service import InspectionService
from services.notify.service import NotifyService
from services.photos.service import PhotosService
from services.scoring.service import ScoringService
from services.tasks.service import TasksService
from tests import support
from tests.integration.test_accounts_service import PASSWORD, make_user

STREET = "411502008000"       # 金牛山街道: the stack's office
COMMUNITY = "411502008001"    # 周家山社区
NEIGHBOUR = "411502008002"    # 另一个社区
SERVICES = {"accounts": AccountsService, "inspection": InspectionService, "scoring": ScoringService,
            "tasks": TasksService, "notify": NotifyService, "photos": PhotosService, "console": ConsoleService}
PEOPLE = {
    "wangfang": ("王芳", STREET, [("inspector", STREET)]),
    "zhoujie": ("周杰", COMMUNITY, [("rectifier", COMMUNITY)]),
    "zhangwei": ("张伟", STREET, [("administrator", STREET), ("viewer", STREET)]),
}


@dataclass
class ConsoleStack:
    urls: dict[str, str]
    database_url: str
    known: dict

    @property
    def console(self) -> str:
        return self.urls["console"]

    def token(self, username: str) -> str:
        response = requests.post(f"{self.urls['accounts']}/auth/login",
                                 json={"username": username, "password": PASSWORD}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def api(self, service: str, username: str) -> support.ApiClient:
        return support.ApiClient(self.urls[service], token=self.token(username))


@contextmanager
def console_stack(amqp_uri: str, database_url: str, photos_dir, **extra):
    ports = {name: support.free_port() for name in SERVICES}
    config = support.base_config(
        amqp_uri, database_url, WEB_ADDRESSES={name: f"127.0.0.1:{port}" for name, port in ports.items()},
        AUTH_JWKS_URL=f"http://127.0.0.1:{ports['accounts']}/.well-known/jwks.json", PHOTOS_DIR=str(photos_dir),
        TASKS_SWEEP_INTERVAL=0, NOTIFY_BULLETIN_SCHEDULE=False, NOTIFY_POLL_INTERVAL=0.5, **extra)
    config.pop("AUTH_JWKS")  # every service trusts what accounts publishes, as in a real stack
    with support.running_services(config, *SERVICES.values()):
        for username, (name, node, grants) in PEOPLE.items():
            make_user(database_url, username, node, grants, name=name)
        stack = ConsoleStack({name: f"http://127.0.0.1:{port}" for name, port in ports.items()}, database_url, {})
        admin = stack.api("inspection", "zhangwei")
        subject = admin.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山社区"})
        assert subject.status_code == 201, subject.text
        other = admin.post("/subjects", {"subject_type": "child_unit", "node": NEIGHBOUR, "name": "新华社区"})
        assert other.status_code == 201, other.text
        place = admin.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕", "node": COMMUNITY,
                                       "responsible_subject_id": subject.json()["subject_id"]})
        assert place.status_code == 201, place.text
        stack.known.update(subject=subject.json(), neighbour=other.json(), place=place.json())
        yield stack
