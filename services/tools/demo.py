"""Four tiers on one machine: `chuangwei-demo` (or `python -m services.tools.demo`).

Starts a city → district → street → community chain of stacks on this machine's RabbitMQ
(one vhost per tier, wired with the federation plugin from infra/tiers/demo.yaml), feeds
it two months (2026-10 and 2026-11) of weekly inspections with real division codes of
信阳市, waits until the scores have travelled up every link, prints each tier's ranking
and its children's freshness, then stops the stacks and removes the vhosts.

    python -m services.tools.demo [--keep-running] [--keep] [--base-port 9100]

Each tier's stack is one `nameko run` of the four services with its own ports
(base + 10 × i + 1..6), its own SQLite file and log in var/demo/, its own vhost; the
tier's children that run stacks of their own are its CHILD_STACKS, so findings about
them are handed down, and its parent is its PARENT_STACK, so escalations go up to it.
Ctrl-C (or any error) stops every stack this command started.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import requests

from services.contracts.checklists import default_catalogue
from services.contracts.nodes import is_within, tier_of
from services.contracts.periods import CST
from services.contracts.vocab import movement_text
from services.plumbing.auth import ROLES, SigningKey, access_claims
from services.tools import federation

ROOT = Path(__file__).resolve().parent.parent.parent
DEMO_FILE = ROOT / "infra" / "tiers" / "demo.yaml"
VAR = ROOT / "var" / "demo"
SERVICES = ("inspection", "scoring", "tasks", "notify", "photos", "console")
MONTHS = ("2026-10", "2026-11")
LAST_DAY = date(2026, 11, 20)          # the feed stops here (and never goes past now)
CHECKLIST_VERSION = "2010.1"
TIER_LABEL = {"city": "市", "district": "区", "street": "街道", "community": "社区"}
CHILD_TIER = {"city": "district", "district": "street", "street": "community", "community": "community"}

# --- who is inspected, where ---------------------------------------------------------------
# quality: (October, November) — how well a subject keeps its places; the chance of a finding
# on a checklist item is roughly (1 - quality). A change between the months moves the ranks.

STREET_COMMUNITIES = {
    "411502008000": [  # 金牛山街道
        ("411502008001", "周家山社区", (0.86, 0.95), "周家山路"),
        ("411502008006", "飨堂社区", (0.93, 0.88), "飨堂路"),
        ("411502008008", "十里河社区", (0.80, 0.86), "十里河路"),
        ("411502008004", "金牛社区", (0.90, 0.91), "金牛山路"),
    ],
    "411502001000": [  # 老城街道
        ("411502001001", "义阳社区", (0.88, 0.93), "义阳路"),
        ("411502001003", "三里店社区", (0.92, 0.85), "三里店路"),
        ("411502001008", "鲍氏街社区", (0.84, 0.90), "鲍氏街"),
        ("411502001014", "胜利社区", (0.90, 0.89), "胜利路"),
    ],
}
DISTRICT_STREETS = {
    "411502000000": [  # 浉河区: two streets with stacks of their own, two without
        ("411502008000", "金牛山街道", (0.90, 0.93), "金牛山"),
        ("411502001000", "老城街道", (0.88, 0.90), "老城"),
        ("411502002000", "民权街道", (0.85, 0.84), "民权路"),
        ("411502003000", "车站街道", (0.91, 0.87), "车站路"),
    ],
    "411503000000": [  # 平桥区
        ("411503001000", "羊山街道", (0.92, 0.94), "羊山新区"),
        ("411503002000", "前进街道", (0.86, 0.83), "前进路"),
        ("411503004000", "平桥街道", (0.83, 0.90), "平桥大道"),
    ],
}
CITY_DISTRICTS = [
    ("411502000000", "浉河区", (0.88, 0.92), "中山路"),
    ("411503000000", "平桥区", (0.90, 0.86), "平中大街"),
]
COMMUNITY_UNITS = {
    "411502008001": [  # 周家山社区 inspects the units and places in its area
        ("周家山小区物业服务中心", "residential_compound", "周家山小区", "national-ten-areas", (0.86, 0.93)),
        ("老街热干面馆", "five_smalls", "老街热干面馆（周家山路18号）", "five-smalls", (0.80, 0.90)),
        ("周家山农贸市场管理办", "farmers_market", "周家山农贸市场", "farmers-market", (0.90, 0.86)),
    ],
}

NOTES = {
    "PT-01": "保洁员公示牌缺失", "PT-02": "便池有积粪、尿碱", "PT-03": "通风不良，异味明显",
    "PT-04": "消毒记录未及时填写", "PT-05": "化粪池盖板破损", "PT-06": "洗手池水龙头损坏",
    "PT-07": "男女标识褪色不清",
    "BA-01": "路面坑洼积水", "BA-02": "两盏路灯不亮", "BA-03": "窨井盖缺失", "BA-04": "墙角有暴露垃圾",
    "BA-05": "居民楼下乱堆杂物", "BA-06": "电线杆上有牛皮癣小广告", "BA-07": "流动摊点占道经营",
    "ORG-03": "创卫档案资料不完整", "EDU-01": "健康教育宣传栏内容未按期更换", "EDU-02": "办公室有烟头、无禁烟标识",
    "CITY-01": "卫生死角有积存垃圾", "CITY-02": "乱拉乱挂横幅", "CITY-03": "门前三包责任牌缺失",
    "FOOD-02": "餐具消毒柜未使用", "PUB-01": "从业人员健康证过期", "VEC-02": "餐饮店未设挡鼠板",
    "VEC-03": "废旧轮胎积水孳生蚊虫", "UNIT-01": "垃圾未日产日清", "UNIT-02": "楼道乱堆乱放",
    "UNIT-03": "散养家禽", "UV-02": "垃圾收集点满溢",
    "FS-01": "未亮证经营", "FS-02": "一名从业人员健康证过期", "FS-03": "餐具未消毒", "FS-04": "后厨无挡鼠板",
    "FS-05": "后厨地面油污", "FS-06": "出店经营，门前摆桌",
    "FM-03": "市场周边占道经营", "FM-04": "摊位台面有污物", "FM-05": "地面积水", "FM-06": "灭蝇灯损坏",
    "FM-07": "垃圾桶未加盖", "FM-08": "配套公厕无人保洁",
    "RS-01": "站房门敞开，垃圾外露", "RS-03": "站房周边污水横流", "RS-05": "垃圾未日产日清",
    "RS-06": "站房内未定期消杀",
}
INSPECTORS = {
    "city": [["市创卫办 暗访组 张伟", "刘洋"], ["市创卫办 暗访组 陈静", "杨帆"]],
    "district": [["区爱卫办 王磊", "赵敏"], ["区爱卫办 孙浩", "周婷"]],
    "street": [["王芳", "李强"], ["吴刚", "郑丽"]],
    "community": [["网格员 黄敏"], ["网格员 徐杰"]],
}


# --- the plan -----------------------------------------------------------------------------


@dataclass
class Stack:
    index: int
    tier: federation.Tier
    level: str                     # city | district | street | community
    children: list[str]
    base_port: int
    process: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def node(self) -> str:
        return self.tier.node

    @property
    def name(self) -> str:
        return self.tier.name or self.tier.node

    def port(self, service: str) -> int:
        return self.base_port + 10 * self.index + 1 + SERVICES.index(service)

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.port(service)}{path}"


@dataclass
class Visit:
    """One inspection to submit: when, by which tier, of which subject and place."""
    at: datetime
    stack: Stack
    subject: str               # key into the tier's registered subjects
    place: str | None
    checklist: str
    kind: str
    quality: float
    note: str | None = None
    extra: dict = field(default_factory=dict)


def level_of(node: str) -> str:
    return str(tier_of(node))


def demo_weeks() -> list[date]:
    """Mondays of the weeks fed: after the National Day holiday up to LAST_DAY."""
    monday, out = date(2026, 10, 5), []
    while monday <= LAST_DAY:
        out.append(monday)
        monday += timedelta(days=7)
    return out


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=CST)


def month_quality(quality: tuple[float, float], moment: datetime) -> float:
    return quality[0] if moment.month == 10 else quality[1]


def plan_visits(stacks: dict[str, Stack], rng: random.Random) -> list[Visit]:
    now = datetime.now(timezone.utc)
    visits: list[Visit] = []
    weeks = demo_weeks()
    for street, communities in STREET_COMMUNITIES.items():
        if street not in stacks:
            continue
        for n, (code, name, quality, _) in enumerate(communities):
            for w, monday in enumerate(weeks):
                day = monday + timedelta(days=1 + (n + w) % 4)   # Tue..Fri, holiday week from the 8th
                if day < date(2026, 10, 8):
                    day = date(2026, 10, 8) + timedelta(days=n % 2)
                place_kind = "toilet" if w % 2 == 0 else "alley"
                visits.append(Visit(at(day, 9, 10 * n), stacks[street], code, f"{code}:{place_kind}",
                                    "public-toilet" if place_kind == "toilet" else "back-alley", "routine",
                                    quality[0] if day.month == 10 else quality[1]))
                if w % 2 == 1:
                    visits.append(Visit(at(day, 10, 10 * n), stacks[street], code, None, "national-ten-areas",
                                        "routine", quality[0] if day.month == 10 else quality[1]))
    for district, streets in DISTRICT_STREETS.items():
        if district not in stacks:
            continue
        for n, (code, name, quality, _) in enumerate(streets):
            for month, days in ((10, (14, 27)), (11, (11, 18))):
                q = quality[0] if month == 10 else quality[1]
                big = date(2026, month, days[0]) + timedelta(days=n % 2)
                visits.append(Visit(at(big, 9, 30), stacks[district], code, None, "national-ten-areas",
                                    "announced", q, note="月度大检查"))
                market = date(2026, month, days[1]) + timedelta(days=n % 2)
                visits.append(Visit(at(market, 14, 0), stacks[district], code, f"{code}:market", "farmers-market",
                                    "special_campaign", q, note="农贸市场专项整治"))
    city = next((s for s in stacks.values() if s.level == "city"), None)
    if city is not None:
        for n, (code, name, quality, _) in enumerate(CITY_DISTRICTS):
            # 暗访 every two weeks, alternating back alleys and refuse stations.
            for k, day in enumerate((date(2026, 10, 13), date(2026, 10, 27), date(2026, 11, 10),
                                     date(2026, 11, 19))):
                day = day + timedelta(days=n)
                place = "alley" if k % 2 == 0 else "refuse"
                visits.append(Visit(at(day, 15, 0), city, code, f"{code}:{place}",
                                    "back-alley" if place == "alley" else "refuse-station", "unannounced",
                                    quality[0] if day.month == 10 else quality[1], note="市创卫办暗访"))
    for community, units in COMMUNITY_UNITS.items():
        if community not in stacks:
            continue
        for n, (unit, _, _, checklist, quality) in enumerate(units):
            for w, monday in enumerate(weeks):
                day = monday + timedelta(days=(n + w) % 5)
                if day < date(2026, 10, 8):
                    day = date(2026, 10, 8)
                visits.append(Visit(at(day, 16, 0), stacks[community], unit, unit, checklist, "routine",
                                    quality[0] if day.month == 10 else quality[1]))
        # 自查: the community office checks itself weekly; this is the score it reports to its street.
        quality = next((q for street in STREET_COMMUNITIES.values() for code, _, q, _ in street if code == community),
                       (0.9, 0.9))
        for w, monday in enumerate(weeks):
            day = max(monday + timedelta(days=4), date(2026, 10, 9))
            visits.append(Visit(at(day, 15, 30), stacks[community], "self", None, "national-ten-areas", "self_check",
                                min(0.98, (quality[0] if day.month == 10 else quality[1]) + 0.03), note="社区自查"))
    visits = [v for v in visits if v.at.date() <= LAST_DAY and v.at <= now]
    visits.sort(key=lambda v: (v.at, v.stack.index, v.subject))
    return visits


def findings_for(checklist_code: str, quality: float, rng: random.Random) -> list[dict]:
    checklist = default_catalogue().checklist(CHECKLIST_VERSION, checklist_code)
    items = [item for _, item in checklist.items()]
    # Long checklists (the ten content areas, 30 items) are checked by sampling: fewer hits per item.
    chance = (1 - quality) * (1.6 if len(items) <= 8 else 0.6)
    results = []
    for item in items:
        if rng.random() < chance:
            findings = 2 if rng.random() < 0.2 else 1
            results.append({"item_code": item.code, "findings": findings, "note": NOTES.get(item.code)})
    return results


# --- HTTP ---------------------------------------------------------------------------------


class DemoError(RuntimeError):
    pass


class DemoIdentity:
    """The demo plays every office's staff: it signs its own access tokens with a key made for
    this run, and every stack trusts that key (AUTH_JWKS_FILE). A real installation gets its
    tokens from the accounts service instead."""
    key: SigningKey | None = None
    jwks_file: Path | None = None

    @classmethod
    def start(cls, directory: Path) -> None:
        cls.key = SigningKey.generate(kid="demo")
        cls.jwks_file = directory / "jwks.json"
        cls.jwks_file.write_text(json.dumps(cls.key.jwks()), encoding="utf-8")

    @classmethod
    def headers(cls, person: tuple[str, str, str] | None = None) -> dict:
        """The operator (every role on the province), or `person` = (account, name, grants as
        "role@node"): a subject's contact fixes, an inspector of the inspecting side verifies,
        and who fixed a task may never verify it."""
        if cls.key is None:
            return {}
        if person is None:
            claims = access_claims("demo-operator", "演示操作员",
                                   [{"role": role, "node": "410000000000"} for role in ROLES], ttl=600)
        else:
            account, name, grant = person
            role, node = grant.split("@")
            claims = access_claims(account, name, [{"role": role, "node": node}], ttl=600)
        return {"Authorization": f"Bearer {cls.key.sign(claims)}"}


def call(method: str, url: str, body: dict | None = None, ok=(200, 201), timeout: float = 30,
         person: tuple[str, str, str] | None = None) -> dict | list:
    response = requests.request(method, url, json=body, timeout=timeout, headers=DemoIdentity.headers(person))
    if response.status_code not in ok:
        raise DemoError(f"{method} {url}: {response.status_code} {response.text[:500]}")
    return response.json()


def upload_photo(url: str, rng, person: tuple[str, str, str]) -> dict:
    """A small JPEG of its own colour, uploaded as `person`: {"uri", "sha256"} to cite."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), tuple(rng.randrange(256) for _ in range(3))).save(buffer, "JPEG")
    headers = {**DemoIdentity.headers(person), "Content-Type": "image/jpeg"}
    response = requests.post(url, data=buffer.getvalue(), headers=headers, timeout=30)
    if response.status_code not in (200, 201):
        raise DemoError(f"POST {url}: {response.status_code} {response.text[:500]}")
    return {"uri": response.json()["uri"], "sha256": response.json()["sha256"]}


# --- stacks -------------------------------------------------------------------------------


def build_stacks(config: federation.TierConfig, base_port: int) -> list[Stack]:
    stacks = []
    for i, tier in enumerate(config.tiers):
        stacks.append(Stack(i, tier, level_of(tier.node), [c.node for c in config.children(tier.node)], base_port))
    return stacks


def start_stack(stack: Stack, config: federation.TierConfig) -> None:
    stack.log = VAR / f"{stack.node}.log"
    env = dict(os.environ)
    for key in ("AMQP_URI", "DATABASE_URL"):
        env.pop(key, None)
    env.update({
        "NODE_CODE": stack.node,
        "AMQP_URI": config.amqp_uri(stack.tier),
        "DATABASE_URL": f"sqlite:///var/demo/{stack.node}.db",
        "WEB_SERVER_ADDRESS": f"127.0.0.1:{stack.base_port + 10 * stack.index + 9}",
        "INSPECTION_ADDRESS": f"127.0.0.1:{stack.port('inspection')}",
        "SCORING_ADDRESS": f"127.0.0.1:{stack.port('scoring')}",
        "TASKS_ADDRESS": f"127.0.0.1:{stack.port('tasks')}",
        "NOTIFY_ADDRESS": f"127.0.0.1:{stack.port('notify')}",
        "PHOTOS_ADDRESS": f"127.0.0.1:{stack.port('photos')}",
        "CONSOLE_ADDRESS": f"127.0.0.1:{stack.port('console')}",
        "PHOTOS_DIR": str(VAR / stack.node / "photos"),
        # each tier's audit logs are anchored in a file of its own (one chain per database)
        "AUDIT_ANCHOR_FILE": str(VAR / stack.node / "audit-anchors.jsonl"),
        "CHILD_STACKS": ",".join(stack.children),
        # The tier above runs a stack of its own in the demo: escalations go up the link to it.
        "PARENT_STACK": stack.tier.parent or "",
        "TASKS_SWEEP_INTERVAL": "0",
        "NOTIFY_BULLETIN_SCHEDULE": "false",
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": "1",  # no mail leaves the demo
        "OUTBOX_POLL_INTERVAL": "0.2",
        "AUTH_JWKS_FILE": str(DemoIdentity.jwks_file),
    })
    command = [sys.executable, "-m", "nameko", "run", "--config", str(ROOT / "infra" / "nameko.yaml"),
               *[f"services.{name}.service" for name in SERVICES]]
    with open(stack.log, "wb") as log:
        stack.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)


def wait_healthy(stacks: list[Stack], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    pending = {(s.index, name) for s in stacks for name in SERVICES}
    while pending:
        for stack in stacks:
            if stack.process is not None and stack.process.poll() is not None:
                raise DemoError(f"the {stack.name} stack exited ({stack.process.returncode}); "
                                f"see {stack.log}:\n{tail(stack.log)}")
        for index, name in sorted(pending):
            stack = stacks[index]
            try:
                if requests.get(stack.url(name, "/health"), timeout=2).status_code == 200:
                    pending.discard((index, name))
            except requests.RequestException:
                pass
        if pending and time.monotonic() > deadline:
            missing = ", ".join(f"{stacks[i].name}/{n}" for i, n in sorted(pending))
            raise DemoError(f"not healthy after {timeout:.0f} s: {missing}")
        if pending:
            time.sleep(0.5)


def stop_stacks(stacks: list[Stack]) -> None:
    running = [s for s in stacks if s.process is not None and s.process.poll() is None]
    for stack in running:
        try:
            os.killpg(stack.process.pid, signal.SIGTERM)   # our own session: nameko and nothing else
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    for stack in running:
        try:
            stack.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(stack.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            stack.process.wait(timeout=5)


def tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


# --- feeding ------------------------------------------------------------------------------


@dataclass
class Registry:
    subjects: dict[tuple[int, str], str] = field(default_factory=dict)   # (stack, key) → subject_id
    places: dict[tuple[int, str], str] = field(default_factory=dict)


def register(stacks: dict[str, Stack]) -> Registry:
    reg = Registry()

    def subject(stack: Stack, key: str, subject_type: str, node: str, name: str) -> str:
        out = call("POST", stack.url("inspection", "/subjects"),
                   {"subject_type": subject_type, "node": node, "name": name})
        reg.subjects[(stack.index, key)] = out["subject_id"]
        return out["subject_id"]

    def place(stack: Stack, key: str, place_type: str, name: str, node: str, address: str, owner: str) -> None:
        out = call("POST", stack.url("inspection", "/places"),
                   {"place_type": place_type, "name": name, "node": node, "address": address,
                    "responsible_subject_id": owner})
        reg.places[(stack.index, key)] = out["place_id"]

    for street, communities in STREET_COMMUNITIES.items():
        if street not in stacks:
            continue
        s = stacks[street]
        for code, name, _, road in communities:
            sid = subject(s, code, "child_unit", code, name)
            place(s, f"{code}:toilet", "public_toilet", f"{road}公厕", code, f"浉河区{road}12号", sid)
            place(s, f"{code}:alley", "back_alley", f"{road}背街小巷", code, f"浉河区{road}", sid)
    for district, streets in DISTRICT_STREETS.items():
        if district not in stacks:
            continue
        s = stacks[district]
        for code, name, _, area in streets:
            sid = subject(s, code, "child_unit", code, name)
            place(s, f"{code}:market", "farmers_market", f"{area}农贸市场", code, f"{area}农贸市场", sid)
    city = next((s for s in stacks.values() if s.level == "city"), None)
    if city is not None:
        for code, name, _, road in CITY_DISTRICTS:
            sid = subject(city, code, "child_unit", code, name)
            place(city, f"{code}:alley", "back_alley", f"{road}背街小巷", code, f"{name}{road}", sid)
            place(city, f"{code}:refuse", "refuse_station", f"{road}垃圾中转站", code, f"{name}{road}", sid)
    for community, units in COMMUNITY_UNITS.items():
        if community not in stacks:
            continue
        s = stacks[community]
        # The office's own unit (本级), a child unit at the home node: its self-checks are its own score.
        subject(s, "self", "child_unit", community, s.name)
        for unit, place_type, place_name, _, _ in units:
            sid = subject(s, unit, "area_unit", community, unit)
            place(s, unit, place_type, place_name, community, f"浉河区金牛山街道{place_name}", sid)
    return reg


def feed(visits: list[Visit], reg: Registry, rng: random.Random) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {}
    for n, visit in enumerate(visits):
        s = visit.stack
        body = {
            "idempotency_key": f"demo-{s.node}-{n:04d}", "kind": visit.kind,
            "subject_id": reg.subjects[(s.index, visit.subject)],
            "checklist": {"version": CHECKLIST_VERSION, "code": visit.checklist},
            "inspectors": INSPECTORS[s.level][n % 2], "inspected_at": visit.at.isoformat(),
            "results": findings_for(visit.checklist, visit.quality, rng),
        }
        if visit.place is not None:
            body["place_id"] = reg.places[(s.index, visit.place)]
        if visit.note:
            body["note"] = visit.note
        out = call("POST", s.url("inspection", "/inspections"), body)
        if visit.kind == "unannounced":
            # The city tells a district of its 暗访 once the visit is done: only then do the
            # findings become the district's tasks.
            call("POST", s.url("inspection", f"/inspections/{out['inspection_id']}/release"))
        scores.setdefault(s.node, []).append(out["score"])
    return scores


def close_out(stacks: list[Stack], rng: random.Random, found_before: datetime, share: float = 0.9) -> int:
    """Most findings older than `found_before` get fixed and verified (整改、复查、销号) in the
    ledger that owns them; a parent's copy of a handed-down task follows by itself."""
    closed = 0
    for stack in stacks:
        for task in call("GET", stack.url("tasks", "/tasks?limit=10000")):
            found = datetime.fromisoformat(task["found_at"])
            if task["status"] == "closed" or found >= found_before or rng.random() > share:
                continue
            if any(is_within(task["responsible"]["node"], child) for child in stack.children):
                continue  # handed down: the child's ledger closes it and this copy follows
            if task.get("embargoed"):
                continue  # an unreleased unannounced inspection (暗访): not yet the subject's to fix
            base = stack.url("tasks", f"/tasks/{task['task_id']}")
            responsible = task["responsible"]
            # Who acts comes from the token: the subject's contact fixes, one of the
            # inspecting office's inspectors verifies.
            contact = (f"contact-{responsible['subject_id']}", f"{responsible['name']}负责人",
                       f"rectifier@{responsible['node']}")
            inspector = task["inspectors"][0] if task["inspectors"] else "检查员"
            verifier = (f"inspector-{task['inspecting_node']}-{inspector}", inspector,
                        f"inspector@{task['inspecting_node']}")
            try:
                if task["status"] == "open":
                    call("POST", base + "/start", {"note": "已安排整改"}, person=contact)
                # A cited photo must be the contact's own upload (tasks asks photos).
                photo = upload_photo(stack.url("photos", "/photos"), rng, person=contact)
                call("POST", base + "/fix", {"note": f"已整改：{task['note'] or task['item_text']}",
                                             "after_photos": [photo]}, person=contact)
                call("POST", base + "/verify", {"note": "现场复查合格，予以销号"}, person=verifier)
                closed += 1
            except DemoError as exc:
                if " 409 " not in str(exc):   # e.g. already closed by a retry
                    raise
    return closed


# --- reading the results ------------------------------------------------------------------


def ranking_of(stack: Stack, period: str) -> dict:
    subject_type = "area_unit" if stack.level == "community" else "child_unit"
    tier = CHILD_TIER[stack.level]
    return call("GET", stack.url("scoring", f"/rankings?period={period}&tier={tier}&subject_type={subject_type}"))


def freshness_of(stack: Stack) -> list[dict]:
    return call("GET", stack.url("scoring", "/children/freshness")) if stack.children else []


def snapshot(stacks: list[Stack]) -> str:
    parts = []
    for stack in stacks:
        for period in MONTHS:
            r = ranking_of(stack, period)
            parts.append([(x["subject_id"], x["score"], x["rank"], x["inputs"], x["revision"])
                          for x in r["ranking"] + r["below_minimum_sample"]])
        parts.append([(f["child"], f["events"]) for f in freshness_of(stack)])
    return json.dumps(parts, sort_keys=True)


def settled(stacks: list[Stack], timeout: float, quiet: float = 8.0) -> bool:
    """Wait until nothing changes anywhere for `quiet` seconds (every link has delivered)."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        current = snapshot(stacks)
        if current != last:
            last, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
        time.sleep(1.0)
    return False


def width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pad(text: str, size: int, right: bool = False) -> str:
    gap = " " * max(0, size - width(text))
    return gap + text if right else text + gap


def table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    sizes = [max(width(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    line = lambda r: "  ".join(pad(str(c), sizes[i], i in right) for i, c in enumerate(r)).rstrip()
    return "\n".join([line(headers), line(["-" * s for s in sizes])] + [line(r) for r in rows])


def note_for(row: dict) -> str:
    notes = []
    if row["vetoed"]:
        notes.append("一票否决：" + "、".join(sorted({v.split("（")[0] for v in row["veto_reasons"]})))
    if not row["ranked"]:
        notes.append(row.get("why_unranked", ""))
    return "；".join(n for n in notes if n)


def print_tier(stack: Stack) -> bool:
    now_month, before = MONTHS[-1], MONTHS[0]
    current, previous = ranking_of(stack, now_month), ranking_of(stack, before)
    prev = {r["subject_id"]: r for r in previous["ranking"] + previous["below_minimum_sample"]}
    what = "辖区单位" if stack.level == "community" else f"下级{TIER_LABEL[CHILD_TIER[stack.level]]}"
    print(f"\n== {stack.name}（{stack.node}）{what}排名 {now_month} ==")
    rows = []
    for r in current["ranking"] + current["below_minimum_sample"]:
        p = prev.get(r["subject_id"])
        before_text = (f"{p['rank']}（{p['score']:.2f}）" if p and p.get("rank") else
                       (f"—（{p['score']:.2f}）" if p and p.get("score") is not None else "—"))
        rows.append([str(r["rank"]) if r["ranked"] else "—", r["name"],
                     f"{r['score']:.2f}" if r["score"] is not None else "—", r["grade"] or "—",
                     str(r["inputs"]), movement_text(r["movement"]) if r["ranked"] else "",
                     before_text, note_for(r)])
    if rows:
        print(table(["名次", "单位", "得分", "等级", "样本", "升降", f"{before}名次（得分）", "备注"], rows,
                    right={0, 2, 4}))
    else:
        print("（无排名 no ranking yet）")
    fresh = freshness_of(stack)
    if fresh:
        parts = []
        for f in fresh:
            heard = f"{f['seconds_since']:.0f} 秒前" if f["seconds_since"] is not None else "从未上报 never heard"
            parts.append(f"{f['name']}（{f['child']}）{heard}，{f['events']} 条")
        print("下级上报时效 child freshness: " + "；".join(parts))
    if stack.tier.parent is not None:
        try:
            own = call("GET", stack.url("scoring", f"/subjects/{stack.node}/scores/{now_month}"))
            print(f"本级得分 reported to the tier above: {own['score']:.2f}（{own['grade']}，样本 {own['inputs']}，"
                  f"revision {own['revision']}）")
        except DemoError:
            print("本级得分 reported to the tier above: none yet")
    tasks = call("GET", stack.url("tasks", "/tasks?limit=10000"))
    from_above = sum(1 for t in tasks if t["inspecting_node"] != stack.node)
    open_tasks = sum(1 for t in tasks if t["status"] != "closed")
    print(f"整改台账 ledger: {len(tasks)} 项（上级交办 {from_above} 项，未销号 {open_tasks} 项）")
    return bool(current["ranking"])


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEMO_FILE), help="tiers file (default infra/tiers/demo.yaml)")
    parser.add_argument("--base-port", type=int, default=9100, help="tier i listens on base+10i+1..6 (default 9100)")
    parser.add_argument("--keep-running", action="store_true", help="leave the stacks running at the end")
    parser.add_argument("--keep", action="store_true", help="leave the vhosts and federation links in place")
    parser.add_argument("--settle-timeout", type=float, default=180, help="seconds to wait for the scores")
    parser.add_argument("--seed", type=int, default=2026, help="random seed of the findings")
    args = parser.parse_args(argv)

    config = federation.load_config(args.config)
    stacks = build_stacks(config, args.base_port)
    by_node = {s.node: s for s in stacks}
    rng = random.Random(args.seed)
    ok = False

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)   # also when started in the background (SIGINT ignored)
    started = time.monotonic()
    try:
        shutil.rmtree(VAR, ignore_errors=True)
        VAR.mkdir(parents=True)
        DemoIdentity.start(VAR)
        print(f"wiring {len(stacks)} tiers (vhost per tier, federation links) from {args.config}", flush=True)
        federation.unwire(config)   # a fresh start: no queue or message left from an earlier run
        federation.wire(config)
        for stack in stacks:
            start_stack(stack, config)
            print(f"  started {stack.name:<6}（{stack.node}，{TIER_LABEL[stack.level]}）ports "
                  f"{stack.port('inspection')}-{stack.port('console')} (board /board), children: "
                  f"{', '.join(by_node[c].name for c in stack.children) or '—'}, log {stack.log.relative_to(ROOT)}",
                  flush=True)
        wait_healthy(stacks)
        print(f"all {len(stacks) * len(SERVICES)} services healthy after {time.monotonic() - started:.0f} s", flush=True)

        reg = register(by_node)
        visits = plan_visits(by_node, rng)
        print(f"feeding {len(visits)} inspections ({visits[0].at:%Y-%m-%d} … {visits[-1].at:%Y-%m-%d}) …", flush=True)
        scores = feed(visits, reg, rng)
        for node, values in scores.items():
            print(f"  {by_node[node].name}: {len(values)} inspections, mean score {sum(values) / len(values):.1f}")
        print("waiting for the scores and tasks to travel along every link …", flush=True)
        if not settled(stacks, args.settle_timeout):
            print(f"  (still changing after {args.settle_timeout:.0f} s)")
        closed = close_out(stacks, rng, at(date(2026, 11, 13), 0))
        print(f"rectified and closed out {closed} findings made before 2026-11-13 (整改销号); waiting again …",
              flush=True)
        if not settled(stacks, args.settle_timeout):
            print(f"  (still changing after {args.settle_timeout:.0f} s; printing what is there)")
        for stack in stacks:  # the month's bulletin releases each office's ranking to its public board
            call("POST", stack.url("notify", "/bulletins"), {"period": MONTHS[-1], "notify": False})
        ranked = {}
        for stack in sorted(stacks, key=lambda s: (["city", "district", "street", "community"].index(s.level),
                                                   s.index)):
            ranked[stack.node] = print_tier(stack)
        empty = [by_node[n].name for n, has in ranked.items() if not has]
        print(f"\ndone in {time.monotonic() - started:.0f} s" + (f"; no ranking at: {', '.join(empty)}" if empty else ""))
        ok = not empty
        if args.keep_running:
            print("stacks left running (--keep-running):")
            for stack in stacks:
                print(f"  {stack.name}: pid {stack.process.pid}, http://127.0.0.1:{stack.port('scoring')}/rankings"
                      f"?period={MONTHS[-1]}&tier={CHILD_TIER[stack.level]}, public board "
                      f"http://127.0.0.1:{stack.port('console')}/board")
            pids = " ".join(f"-{s.process.pid}" for s in stacks)
            print(f"stop them with: kill -TERM -- {pids}\n"
                  f"then remove the vhosts: python -m services.tools.federation unwire {args.config}")
            return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the stacks", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the demo reports and cleans up whatever went wrong
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        for stack in stacks:
            if stack.process is not None and stack.process.poll() is not None and stack.log:
                print(f"--- {stack.log} ---\n{tail(stack.log)}", file=sys.stderr)
    finally:
        if not (args.keep_running and ok):
            stop_stacks(stacks)
            if not args.keep:
                try:
                    federation.unwire(config)
                except Exception as exc:  # noqa: BLE001
                    print(f"could not unwire: {exc}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
