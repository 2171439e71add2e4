"""The console's web layer: HTML pages on the shared HTTP entrypoint, the session cookies,
templates and static files. Pure of page logic (that is `views`), thin of nameko.

A page is an `@api` route like any other (it declares who may call it, and the shared
layer verifies the session cookie `cw_access` before the page runs); only the answer
differs: a page that needs a sign-in redirects to the sign-in page (or to a silent
refresh while the refresh cookie lasts) instead of answering 401, and errors come back as
a page in Chinese rather than JSON.
"""
from __future__ import annotations

import json
import mimetypes
import os
from pathlib import Path
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from werkzeug.security import safe_join
from werkzeug.wrappers import Response

from services.console.views import local_time
from services.plumbing.auth import ACCESS_COOKIE
from services.plumbing.http import CSRF_COOKIE, JsonApi

REFRESH_COOKIE = "cw_refresh"
HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
DEFAULT_ASSETS = HERE / "assets" / "node_modules"

# What the console serves from the npm packages installed at build time (assets/package.json):
# public URL prefix → (package directory, files allowed below it).
VENDOR = {
    "vendor/chart.js/": ("chart.js/dist", ("chart.umd.min.js",)),
    "vendor/noto-sans-sc/": ("@fontsource/noto-sans-sc", ("400.css", "700.css", "files/")),
}

ENVIRONMENT = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                          trim_blocks=True, lstrip_blocks=True)


def number(value) -> str:
    """90.0 → "90", 93.333 → "93.33": scores as people write them."""
    if value is None or value == "":
        return ""
    try:
        return f"{round(float(value), 2):g}"
    except (TypeError, ValueError):
        return str(value)


ENVIRONMENT.filters["num"] = number
ENVIRONMENT.filters["local"] = local_time


def render(template: str, status: int = 200, **context) -> Response:
    body = ENVIRONMENT.get_template(template).render(**context)
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    # Pages carry personal and embargoed data: never cached, never framed elsewhere.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data: blob:; "
                                                   "style-src 'self'; script-src 'self'; frame-ancestors 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def safe_next(target: str | None) -> str:
    """Only a path on this site: an open redirect would let a link send a signed-in user anywhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def redirect(location: str, status: int = 303) -> Response:
    return Response("", status=status, headers={"Location": location, "Cache-Control": "no-store"})


def set_session(response: Response, access_token: str, access_ttl: int, refresh_token: str | None,
                refresh_ttl: int | None, csrf: str | None, secure: bool) -> None:
    response.set_cookie(ACCESS_COOKIE, access_token, max_age=access_ttl, path="/", secure=secure, httponly=True,
                        samesite="Strict")
    if refresh_token:
        response.set_cookie(REFRESH_COOKIE, refresh_token, max_age=refresh_ttl, path="/", secure=secure,
                            httponly=True, samesite="Strict")
    if csrf:
        # Readable by the console's scripts, which repeat it in X-CSRF-Token (double submit).
        response.set_cookie(CSRF_COOKIE, csrf, max_age=refresh_ttl or access_ttl, path="/", secure=secure,
                            httponly=False, samesite="Strict")


def clear_session(response: Response, secure: bool) -> None:
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="Strict")


def static_file(name: str, assets_dir: str | os.PathLike | None) -> Response | None:
    """The console's own files, or a file of an npm package installed at build time; None if unknown."""
    path = None
    for prefix, (package, allowed) in VENDOR.items():
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if any(rest == a or (a.endswith("/") and rest.startswith(a)) for a in allowed):
                path = safe_join(str(Path(assets_dir or DEFAULT_ASSETS) / package), rest)
            break
    else:
        path = safe_join(str(STATIC), name)
    if not path or not os.path.isfile(path):
        return None
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if path.endswith(".woff2"):
        content_type = "font/woff2"
    if content_type.startswith("text/") or content_type == "application/javascript":
        content_type += "; charset=utf-8"
    with open(path, "rb") as fh:
        data = fh.read()
    return Response(data, content_type=content_type, headers={"Cache-Control": "public, max-age=86400",
                                                              "X-Content-Type-Options": "nosniff"})


class ConsolePage(JsonApi):
    """@page("GET", "/ledger", access=signed_in(), summary=...): an HTML page."""

    def __init__(self, method, url, access=None, summary: str = "", **kwargs):
        kwargs.setdefault("content_type", "text/html")
        super().__init__(method, url, access=access, summary=summary, raw=True, **kwargs)

    def handle_request(self, request):
        response = super().handle_request(request)
        if response.status_code < 400 or not (response.content_type or "").startswith("application/json"):
            return response
        if response.status_code == 401:
            target = quote(request.full_path.rstrip("?"), safe="/?=&")
            if request.cookies.get(REFRESH_COOKIE):
                return redirect(f"/session/refresh?next={target}")
            return redirect(f"/login?next={target}")
        try:
            problem = json.loads(response.get_data(as_text=True))
        except ValueError:
            problem = {}
        page = render("error.html", status=response.status_code, status_code=response.status_code,
                      message=problem.get("message", ""), errors=problem.get("errors", []), user=None)
        for header in ("X-Request-Id", "Retry-After"):
            if header in response.headers:
                page.headers[header] = response.headers[header]
        return page


page = ConsolePage.decorator
