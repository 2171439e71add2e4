"""Console service: the campaign office's web console (中文), and the public ranking board.

Entrypoints only: pages in `operations` (which services each page asks) and `views`
(what it shows), HTML and cookies in `web`, templates in templates/, scripts and styles in
static/, the chart library and the CJK font from npm packages installed at build time
(assets/package.json; `npm ci --prefix services/console/assets`), never from the internet.

The console keeps nothing of its own. It signs people in through the accounts service
(cookies: `cw_access` and `cw_refresh` HttpOnly, `cw_csrf` readable for the double
submit), renders pages from the other services' HTTP APIs called with the person's own
token, and relays the pages' scripts to those APIs under /api/<service>/… (same origin,
CSRF-checked by the shared HTTP layer). What a person may see or do is decided by the
service asked.

    GET  /login, POST /login, POST /logout, GET /session/refresh    signing in and out
    GET  /                        dashboard (仪表盘)
    GET  /inspect                 inspection entry for phones (检查录入; drafts kept offline)
    GET  /inspections/<id>        an inspection with its score and tasks
    GET  /ledger, /ledger/<id>    the ledger (整改台账) and a task with its actions
    GET  /scores                  scores with their explanation (得分说明)
    GET  /bulletins               bulletins (通报)
    GET  /admin                   users and roles, contacts, the policy in force (管理)
    GET  /board                   the public ranking board (公开榜单, no sign-in)

Config (infra/nameko.yaml):
  SERVICE_URLS            where the other services answer (default: their WEB_ADDRESSES)
  CONSOLE_SECURE_COOKIES  mark cookies Secure (default true; browsers accept them on localhost)
  CONSOLE_ASSETS_DIR      the npm packages' directory (default services/console/assets/node_modules)
  CONSOLE_MAX_UPLOAD_BYTES  largest body relayed to a service (default 16 MB: photos)
  CONSOLE_RELAY_SECRET    shared with accounts: sign-ins carry the person's address (X-Forwarded-For),
                          so accounts' login limits count people, not the console
  CONSOLE_TRUST_FORWARDED_FOR  true only behind a reverse proxy that sets X-Forwarded-For
"""
from __future__ import annotations

import secrets

from werkzeug.wrappers import Response

from services.console import operations as ops
from services.console import web
from services.console.schemas import DashboardQuery, LedgerFilters, NextQuery, ScoresQuery
from services.contracts.errors import UnknownReference
from services.contracts.identity import ADMINISTRATOR, INSPECTOR
from services.plumbing import operator_endpoints
from services.plumbing.auth import Authenticator, PUBLIC, signed_in
from services.plumbing.clock import Clock
from services.plumbing.http import CSRF_COOKIE, ApiError, api
from services.plumbing.rate_limit import RELAY_HEADER, client_address, relay_secret
from services.plumbing.upstream import Upstreams
from nameko.extensions import DependencyProvider

page = web.page
FORWARDED_HEADERS = ("Content-Type", "Idempotency-Key", "X-Request-Id")


class Upstream(DependencyProvider):
    """The other services' HTTP APIs and the console's settings."""

    def setup(self):
        config = self.container.config
        self.client = Upstreams(config)
        self.secure_cookies = str(config.get("CONSOLE_SECURE_COOKIES", True)).lower() not in ("false", "0", "no")
        self.assets_dir = config.get("CONSOLE_ASSETS_DIR") or None
        self.max_upload = int(config.get("CONSOLE_MAX_UPLOAD_BYTES", 16 * 1024 * 1024))
        self.relay_secret = relay_secret(config)
        self.trust_forwarded_for = str(config.get("CONSOLE_TRUST_FORWARDED_FOR", "false")).lower() == "true"

    def sign_in_headers(self, request) -> dict[str, str]:
        """For accounts' /auth/*: the person's address, vouched for with the relay secret, so
        that accounts' rate limits count each person's address, not the console's (issue 27)."""
        if not self.relay_secret:
            return {}
        return {"X-Forwarded-For": client_address(request, trust_forwarded_for=self.trust_forwarded_for),
                RELAY_HEADER: self.relay_secret}

    def get_dependency(self, worker_ctx):
        return self


class ConsoleService(operator_endpoints.OperatorEndpoints):
    name = "console"

    upstream = Upstream()
    clock = Clock()

    def _pages(self, request, principal) -> ops.Pages:
        return ops.Pages(self.upstream.client, Authenticator.token_of(request), principal, self.clock.now())

    # --- signing in and out (public: nobody is signed in yet) ---

    @page("GET", "/login", query=NextQuery, access=PUBLIC, summary="登录页 Sign-in page")
    def login_page(self, request, query: NextQuery):
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        response = web.render("login.html", next=web.safe_next(query.next), csrf=csrf, error=None, user=None)
        if not request.cookies.get(CSRF_COOKIE):
            response.set_cookie(CSRF_COOKIE, csrf, path="/", secure=self.upstream.secure_cookies, samesite="Strict")
        return response

    @page("POST", "/login", access=PUBLIC, summary="登录 Sign in (form: username, password, csrf_token, next)")
    def login(self, request):
        form = request.form
        target = web.safe_next(form.get("next"))
        csrf = request.cookies.get(CSRF_COOKIE)
        if not csrf or form.get("csrf_token") != csrf:
            return web.render("login.html", status=403, next=target, csrf=csrf or "", user=None,
                              error="页面已过期，请刷新后重新登录")
        answer = self.upstream.client.call("accounts", "POST", "/auth/login", None,
                                           data=_json({"username": form.get("username", ""),
                                                       "password": form.get("password", "")}),
                                           content_type="application/json",
                                           headers=self.upstream.sign_in_headers(request))
        if answer.status == 200:
            tokens = answer.json()
            response = web.redirect(target)
            refresh_ttl = max(60, int((_instant(tokens["refresh_expires_at"]) - self.clock.now()).total_seconds()))
            web.set_session(response, tokens["access_token"], tokens["expires_in"], tokens["refresh_token"],
                            refresh_ttl, secrets.token_urlsafe(32), self.upstream.secure_cookies)
            return response
        message = "用户名或密码错误" if answer.status in (401, 422) else "登录服务暂时不可用，请稍后重试"
        if answer.status == 429:
            message = "尝试次数过多，请稍后再试"
        return web.render("login.html", status=answer.status if answer.status < 500 else 503, next=target,
                          csrf=csrf, error=message, user=None)

    @page("GET", "/session/refresh", query=NextQuery, access=PUBLIC,
          summary="续期 Renew the access cookie with the refresh cookie, then go on")
    def refresh(self, request, query: NextQuery):
        target = web.safe_next(query.next)
        refresh_token = request.cookies.get(web.REFRESH_COOKIE)
        if refresh_token:
            answer = self.upstream.client.call("accounts", "POST", "/auth/refresh", None,
                                               data=_json({"refresh_token": refresh_token}),
                                               content_type="application/json",
                                               headers=self.upstream.sign_in_headers(request))
            if answer.status == 200:
                # Refresh tokens rotate: keep the replacement (a renewal racing this one within
                # accounts' grace gets a pair of its own, equally valid: whichever cookie the
                # browser keeps last works).
                tokens = answer.json()
                response = web.redirect(target)
                refresh_ttl = max(60, int((_instant(tokens["refresh_expires_at"]) - self.clock.now()).total_seconds()))
                web.set_session(response, tokens["access_token"], tokens["expires_in"], tokens["refresh_token"],
                                refresh_ttl, None, self.upstream.secure_cookies)
                return response
        response = web.redirect(f"/login?next={target}")
        web.clear_session(response, self.upstream.secure_cookies)
        return response

    @page("POST", "/logout", access=PUBLIC, summary="退出 Sign out (form: csrf_token)")
    def logout(self, request):
        csrf = request.cookies.get(CSRF_COOKIE)
        if not csrf or request.form.get("csrf_token") != csrf:
            raise ApiError("cross-site request refused: the form must repeat the cw_csrf cookie", status=403,
                           code="forbidden", field="csrf_token")
        refresh_token = request.cookies.get(web.REFRESH_COOKIE)
        if refresh_token:
            self.upstream.client.call("accounts", "POST", "/auth/logout", None,
                                      data=_json({"refresh_token": refresh_token}), content_type="application/json")
        response = web.redirect("/login")
        web.clear_session(response, self.upstream.secure_cookies)
        return response

    # --- pages ---

    @page("GET", "/", query=DashboardQuery, access=signed_in(), summary="仪表盘 Dashboard")
    def dashboard(self, request, query: DashboardQuery, principal):
        return web.render("dashboard.html", **self._pages(request, principal).dashboard(query.period))

    @page("GET", "/inspect", access=signed_in(INSPECTOR), summary="检查录入 Inspection entry (phone)")
    def inspect(self, request, principal):
        return web.render("inspect.html", **self._pages(request, principal).inspect_form())

    @page("GET", "/inspections/<inspection_id>", access=signed_in(), summary="检查结果 An inspection")
    def inspection(self, request, inspection_id, principal):
        context = self._pages(request, principal).inspection(inspection_id)
        if context is None:
            raise UnknownReference("inspection_id", "检查记录不存在或无权查看")
        return web.render("inspection.html", **context)

    @page("GET", "/ledger", query=LedgerFilters, access=signed_in(), summary="整改台账 The ledger")
    def ledger(self, request, query: LedgerFilters, principal):
        return web.render("ledger.html", **self._pages(request, principal).ledger(query.model_dump()))

    @page("GET", "/ledger/<task_id>", access=signed_in(), summary="整改任务 A task, its history and actions")
    def task(self, request, task_id, principal):
        context = self._pages(request, principal).task(task_id)
        if context is None:
            raise UnknownReference("task_id", "整改任务不存在或无权查看")
        return web.render("task.html", **context)

    @page("GET", "/scores", query=ScoresQuery, access=signed_in(), summary="得分 Scores with explanations")
    def scores(self, request, query: ScoresQuery, principal):
        return web.render("scores.html", **self._pages(request, principal).scores(query.subject_id, query.period))

    @page("GET", "/bulletins", access=signed_in(), summary="通报 Bulletins")
    def bulletins(self, request, principal):
        return web.render("bulletins.html", **self._pages(request, principal).bulletins())

    @page("GET", "/admin", access=signed_in(ADMINISTRATOR), summary="管理 Users, contacts, policy")
    def admin(self, request, principal):
        return web.render("admin.html", **self._pages(request, principal).admin())

    # --- the public board: the only anonymous page ---

    @page("GET", "/board", access=PUBLIC, summary="公开榜单 The released monthly ranking (红榜/黑榜)")
    def board(self, request):
        return web.render("board.html", board=ops.board(self.upstream.client), user=None)

    # --- static files and the scripts' relay to the services ---

    @api("GET", "/static/<path:name>", raw=True, access=PUBLIC, content_type="application/octet-stream",
         summary="静态文件 The console's scripts, styles, chart library and font")
    def static(self, request, name):
        response = web.static_file(name, self.upstream.assets_dir)
        if response is None:
            raise UnknownReference("name", f"no static file {name!r}")
        return response

    @api("GET,POST,PUT,DELETE", "/api/<service>/<path:rest>", raw=True, access=signed_in(),
         content_type="application/json", statuses=(201, 202, 204),
         summary="转发 The console's scripts call a service's API as the signed-in person (CSRF-checked)")
    def relay(self, request, service, rest, principal):
        try:
            path = ops.relay_path(service, rest)
        except ops.RelayRefused as refused:
            raise ApiError(refused.reason, field=refused.field, status=refused.status,
                           code="not_found" if refused.status == 404 else "bad_request") from refused
        body = None
        if request.method in ("POST", "PUT", "DELETE"):
            body = request.stream.read(self.upstream.max_upload + 1)
            if len(body) > self.upstream.max_upload:
                raise ApiError(f"request body exceeds {self.upstream.max_upload} bytes", field="body", status=413,
                               code="payload_too_large")
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers and h != "Content-Type"}
        headers["X-Request-Id"] = request.request_id
        answer = self.upstream.client.call(service, request.method, path, Authenticator.token_of(request),
                                           params=request.args, data=body,
                                           content_type=request.headers.get("Content-Type"), headers=headers)
        return Response(answer.body, status=answer.status, content_type=answer.content_type, headers=answer.headers)


def _json(document: dict) -> bytes:
    import json
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def _instant(value: str):
    from datetime import datetime
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
