"""The console over HTTP (no browser): signing in and out, pages that need a sign-in,
the CSRF double-submit on the relay, the public board and the served assets."""
from __future__ import annotations

import re

import pytest
import requests

from tests.integration.console_stack import console_stack
from tests.integration.test_accounts_service import PASSWORD
from tests.unit.photos.test_photo_domain import jpeg

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(infrastructure, rabbit_admin, pg_admin, tmp_path_factory):
    from tests import support
    vhost = support.unique_name("chuangwei-console")
    rabbit_admin.create_vhost(vhost)
    database_url = pg_admin.create_database(support.unique_name("chuangwei_console"))
    try:
        # requests keeps Secure cookies away from http://; browsers accept them on 127.0.0.1.
        with console_stack(support.with_vhost(infrastructure["amqp_uri"], vhost), database_url,
                           tmp_path_factory.mktemp("photos"), CONSOLE_SECURE_COOKIES=False) as running:
            yield running
    finally:
        rabbit_admin.delete_vhost(vhost)
        pg_admin.drop_database(database_url.rsplit("/", 1)[1])


def signed_in(stack, username: str, next_path: str = "/") -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    page = session.get(f"{stack.console}/login", params={"next": next_path}, timeout=30)
    assert page.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = session.post(f"{stack.console}/login", data={"username": username, "password": PASSWORD,
                                                              "csrf_token": csrf, "next": next_path},
                            allow_redirects=False, timeout=30)
    return session, response


def test_pages_need_a_sign_in_and_sign_in_sets_the_session_cookies(stack):
    anonymous = requests.get(f"{stack.console}/ledger?status=open", allow_redirects=False, timeout=30)
    assert anonymous.status_code == 303
    assert anonymous.headers["Location"] == "/login?next=/ledger?status=open"

    session, response = signed_in(stack, "wangfang", "/ledger")
    assert response.status_code == 303 and response.headers["Location"] == "/ledger"
    cookies = {c.name: c for c in session.cookies}
    assert {"cw_access", "cw_refresh", "cw_csrf"} <= set(cookies)
    assert cookies["cw_access"].has_nonstandard_attr("HttpOnly") and cookies["cw_refresh"].has_nonstandard_attr("HttpOnly")
    assert not cookies["cw_csrf"].has_nonstandard_attr("HttpOnly")

    dashboard = session.get(f"{stack.console}/", timeout=30)
    assert dashboard.status_code == 200 and "仪表盘" in dashboard.text and "王芳" in dashboard.text
    assert dashboard.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in dashboard.headers["Content-Security-Policy"]
    assert 'href="/inspect"' in dashboard.text and 'href="/admin"' not in dashboard.text  # an inspector's menu

    # Signing out revokes the refresh token and clears the cookies.
    csrf = session.cookies["cw_csrf"]
    out = session.post(f"{stack.console}/logout", data={"csrf_token": csrf}, allow_redirects=False, timeout=30)
    assert out.status_code == 303 and out.headers["Location"] == "/login"
    assert "cw_access" not in session.cookies and "cw_refresh" not in session.cookies
    assert session.get(f"{stack.console}/", allow_redirects=False, timeout=30).status_code == 303


def test_a_wrong_password_a_missing_csrf_token_and_an_open_redirect_are_refused(stack):
    session = requests.Session()
    page = session.get(f"{stack.console}/login", timeout=30)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    wrong = session.post(f"{stack.console}/login", data={"username": "wangfang", "password": "不对的密码123",
                                                           "csrf_token": csrf}, allow_redirects=False, timeout=30)
    assert wrong.status_code == 401 and "用户名或密码错误" in wrong.text and "cw_access" not in session.cookies
    forged = requests.post(f"{stack.console}/login", data={"username": "wangfang", "password": PASSWORD},
                           allow_redirects=False, timeout=30)
    assert forged.status_code == 403 and "页面已过期" in forged.text

    _, response = signed_in(stack, "wangfang", "//evil.example/steal")
    assert response.status_code == 303 and response.headers["Location"] == "/"


def test_the_relay_needs_the_csrf_header_and_acts_as_the_signed_in_person(stack):
    session, _ = signed_in(stack, "wangfang")
    photo = jpeg()
    refused = session.post(f"{stack.console}/api/photos/photos", data=photo,
                           headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert refused.status_code == 403 and refused.json()["errors"][0]["field"] == "X-CSRF-Token"
    uploaded = session.post(f"{stack.console}/api/photos/photos", data=photo,
                            headers={"Content-Type": "image/jpeg", "X-CSRF-Token": session.cookies["cw_csrf"]},
                            timeout=30)
    assert uploaded.status_code == 201, uploaded.text
    sha = uploaded.json()["sha256"]
    assert session.get(f"{stack.console}/api/photos/photos/{sha}", timeout=30).content == photo
    me = session.get(f"{stack.console}/api/accounts/me", timeout=30)
    assert me.status_code == 200 and me.json()["username"] == "wangfang"
    assert session.get(f"{stack.console}/api/nowhere/x", timeout=30).status_code == 404
    assert session.get(f"{stack.console}/api/accounts/.well-known/jwks.json", timeout=30).status_code == 404
    # Another person's session does not see the uploader's photo without an inspection showing it.
    rectifier, _ = signed_in(stack, "zhoujie")
    assert rectifier.get(f"{stack.console}/api/photos/photos/{sha}", timeout=30).status_code == 404
    assert requests.get(f"{stack.console}/api/photos/photos/{sha}", timeout=30).status_code == 401


def test_roles_decide_the_pages(stack):
    rectifier, _ = signed_in(stack, "zhoujie")
    page = rectifier.get(f"{stack.console}/inspect", timeout=30)
    assert page.status_code == 403 and "无权访问" in page.text
    assert rectifier.get(f"{stack.console}/admin", timeout=30).status_code == 403
    admin, _ = signed_in(stack, "zhangwei")
    page = admin.get(f"{stack.console}/admin", timeout=30)
    assert page.status_code == 200 and "wangfang" in page.text and "现行考评办法" in page.text
    bad = admin.get(f"{stack.console}/ledger", params={"period": "2026-13"}, timeout=30)
    assert bad.status_code == 422 and "query.period" in bad.text


def test_the_board_and_the_assets_need_no_sign_in(stack):
    board = requests.get(f"{stack.console}/board", timeout=30)
    assert board.status_code == 200 and "本月榜单尚未发布" in board.text
    chart = requests.get(f"{stack.console}/static/vendor/chart.js/chart.umd.min.js", timeout=30)
    assert chart.status_code == 200 and chart.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "Chart" in chart.text[:2000]
    font = requests.get(f"{stack.console}/static/vendor/noto-sans-sc/400.css", timeout=30)
    assert font.status_code == 200 and "Noto Sans SC" in font.text
    woff = re.search(r"url\(\./(files/[^)]+\.woff2)\)", font.text).group(1)
    assert requests.get(f"{stack.console}/static/vendor/noto-sans-sc/{woff}", timeout=30).headers[
        "Content-Type"] == "font/woff2"
    for hidden in ("vendor/chart.js/../package.json", "vendor/noto-sans-sc/package.json", "../service.py"):
        assert requests.get(f"{stack.console}/static/{hidden}", timeout=30).status_code == 404


def test_an_expired_access_cookie_is_renewed_with_the_refresh_cookie(stack):
    session, _ = signed_in(stack, "wangfang")
    refresh = session.cookies["cw_refresh"]
    session.cookies.clear(domain="127.0.0.1", path="/", name="cw_access")  # as when its max-age ran out
    first = session.get(f"{stack.console}/ledger?light=red", allow_redirects=False, timeout=30)
    assert first.status_code == 303 and first.headers["Location"] == "/session/refresh?next=/ledger?light=red"
    renewed = session.get(f"{stack.console}{first.headers['Location']}", allow_redirects=False, timeout=30)
    assert renewed.status_code == 303 and renewed.headers["Location"] == "/ledger?light=red"
    # Refresh tokens rotate (issue 27): the console keeps the replacement.
    assert session.cookies.get("cw_access") and session.cookies["cw_refresh"] not in ("", refresh)
    assert session.get(f"{stack.console}/ledger?light=red", timeout=30).status_code == 200

    # A refresh token that no longer works ends the session: back to the sign-in page.
    session.cookies.clear(domain="127.0.0.1", path="/", name="cw_access")
    session.cookies.set("cw_refresh", "cwr_revoked", domain="127.0.0.1", path="/")
    ended = session.get(f"{stack.console}/session/refresh?next=/ledger", allow_redirects=False, timeout=30)
    assert ended.status_code == 303 and ended.headers["Location"] == "/login?next=/ledger"
    assert "cw_refresh" not in session.cookies


def test_every_console_route_declares_its_access_and_turns_anonymous_callers_away(stack):
    """Pages answer an anonymous caller with the sign-in page (303), the relay with 401; only
    sign-in, sign-out, the board, the static assets and the operators' probes are public."""
    from services.plumbing.auth import PUBLIC
    from services.plumbing.http import ROUTES
    public, refused = set(), {}
    for (service, methods, url), route in ROUTES.items():
        if service != "console":
            continue
        assert route.access is not None, f"{methods} {url} does not declare who may call it"
        path = re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", "x", url).replace("/api/x/x", "/api/inspection/subjects")
        for method in methods.split(","):
            if route.access is PUBLIC:
                public.add((method, url))
                continue
            answer = requests.request(method, f"{stack.console}{path}", allow_redirects=False, timeout=30)
            refused[(method, url)] = answer.status_code
    assert public == {("GET", "/login"), ("POST", "/login"), ("GET", "/session/refresh"), ("POST", "/logout"),
                      ("GET", "/board"), ("GET", "/static/<path:name>"),
                      ("GET", "/health"), ("GET", "/health/live"), ("GET", "/health/ready"), ("GET", "/metrics")}
    assert refused and all(status in (303, 401) for status in refused.values()), refused
    assert {status for (_, url), status in refused.items() if url.startswith("/api/")} == {401}


def test_a_write_relayed_by_the_console_is_on_record_with_the_person_and_the_request_id(stack):
    session, _ = signed_in(stack, "zhangwei")
    created = session.post(f"{stack.console}/api/inspection/subjects",
                           json={"subject_type": "child_unit", "node": "411502008002", "name": "控制台新建社区"},
                           headers={"X-CSRF-Token": session.cookies["cw_csrf"]}, timeout=30)
    assert created.status_code == 201, created.text
    request_id = created.headers["X-Request-Id"]
    entries = stack.api("inspection", "zhangwei").get(f"/audit?request_id={request_id}")
    assert entries.status_code == 200, entries.text
    [entry] = entries.json()
    assert (entry["actor_name"], entry["actor_kind"], entry["action"], entry["request_id"]) == (
        "张伟", "user", "POST /subjects", request_id), entry
    assert entry["request"]["name"] == "控制台新建社区"


def _raw(stack, session: requests.Session, method: str, path: str, body: bytes = b"") -> tuple[int, str]:
    """A request whose path is sent byte for byte (requests would normalise dot segments)."""
    import http.client
    from urllib.parse import urlsplit
    where = urlsplit(stack.console)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    cookies = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    connection.request(method, path, body=body or None, headers={
        "Cookie": cookies, "Content-Type": "application/json", "X-CSRF-Token": session.cookies["cw_csrf"]})
    answer = connection.getresponse()
    text = answer.read().decode("utf-8", "replace")
    connection.close()
    return answer.status, text


@pytest.mark.parametrize("path", [
    "/api/accounts/%2e/auth/refresh", "/api/accounts/%2E/auth/login", "/api/accounts/./auth/refresh",
    "/api/accounts/x/../auth/refresh", "/api/accounts/x/%2e%2e/auth/refresh", "/api/accounts//auth/refresh",
    "/api/accounts/%252e/auth/refresh", "/api/accounts/%2fauth/refresh", "/api/accounts/Auth/refresh",
    "/api/accounts/.well-known/jwks.json", "/api/accounts/%2ewell-known/jwks.json",
    "/api/accounts/x%5c..%5cauth/refresh"])
def test_the_relay_normalises_paths_before_deciding_and_never_passes_sign_in(stack, path):
    """Issue 27: /api/accounts/%2e/auth/refresh passed the relay's block on auth/."""
    session, _ = signed_in(stack, "wangfang")
    refresh_token = session.cookies["cw_refresh"]
    status, text = _raw(stack, session, "POST", path, ('{"refresh_token": "%s"}' % refresh_token).encode())
    assert status in (400, 404), (status, text)
    assert "access_token" not in text
    error = requests.models.complexjson.loads(text)
    if error["errors"]:  # refused by the relay (a path no route matches is a plain 404)
        assert error["errors"][0]["field"] in ("path", "service")
        assert re.search(r"[\u4e00-\u9fff]", error["message"])
    # What normalises cleanly still goes through.
    assert _raw(stack, session, "GET", "/api/accounts/me")[0] == 200


def test_silent_renewal_rotates_the_refresh_cookie_and_survives_a_race(stack):
    """Issue 27: refresh tokens rotate. The console keeps the replacement, and two renewals
    with the same cookie at once (two tabs, a page's parallel loads) both keep the person
    signed in (accounts' grace)."""
    session, _ = signed_in(stack, "wangfang")
    old = session.cookies["cw_refresh"]
    cookies = {"cw_refresh": old, "cw_csrf": session.cookies["cw_csrf"]}
    answers = []
    for _ in range(2):  # the same cookie twice: the second is the racing renewal
        answers.append(requests.get(f"{stack.console}/session/refresh", params={"next": "/ledger"}, cookies=cookies,
                                    allow_redirects=False, timeout=30))
    for answer in answers:
        assert answer.status_code == 303 and answer.headers["Location"] == "/ledger", answer.headers
        renewed = answer.cookies.get("cw_refresh")
        assert renewed and renewed != old
        # The renewed session works.
        page = requests.get(f"{stack.console}/ledger", cookies={"cw_access": answer.cookies["cw_access"],
                                                               "cw_refresh": renewed}, timeout=30)
        assert page.status_code == 200 and "整改台账" in page.text


def test_the_dashboard_counts_no_unreleased_unannounced_inspection_for_the_subject_side(stack):
    """检查次数 on the dashboard is the scoring figure's input count, read with the signed-in
    person's token: the community's rectifier must not see it grow for a 暗访 its office has
    not released; the office counts it."""
    from datetime import datetime, timedelta, timezone

    from tests import support
    from tests.integration.console_stack import COMMUNITY
    inspector = stack.api("inspection", "wangfang")
    when = (datetime.now(timezone.utc) - timedelta(minutes=10)).isoformat()
    made = []
    for kind in ("routine", "routine", "unannounced"):
        response = inspector.post("/inspections", {
            "kind": kind, "subject_id": stack.known["subject"]["subject_id"],
            "checklist": {"version": "2010.1", "code": "national-ten-areas"}, "inspectors": ["王芳"],
            "inspected_at": when, "results": []})
        assert response.status_code == 201, response.text
        made.append(response.json())
    scoring = stack.api("scoring", "zhangwei")
    month = datetime.now(timezone(timedelta(hours=8))).strftime("%Y-%m")

    def office_inputs():
        answer = scoring.get(f"/subjects/{COMMUNITY}/scores/{month}")
        return answer.json()["inputs"] if answer.status_code == 200 else 0
    support.wait_until(lambda: office_inputs() >= 3, message="the three inspections scored")
    office = office_inputs()

    def counted(username) -> int:
        session, _ = signed_in(stack, username)
        page = session.get(f"{stack.console}/", timeout=30)
        assert page.status_code == 200, page.text
        row = re.search(r'周家山社区</a></td>\s*<td class="score">[^<]*</td><td>[^<]*</td><td>[^<]*</td><td>(\d+)</td>',
                        page.text)
        assert row, page.text
        return int(row.group(1))

    assert counted("zhangwei") == office
    assert counted("zhoujie") == office - 1  # the 暗访 is not there for the subject
    released = inspector.post(f"/inspections/{made[-1]['inspection_id']}/release")
    assert released.status_code == 200, released.text
    support.wait_until(lambda: counted("zhoujie") == office, message="the release reaches scoring")
