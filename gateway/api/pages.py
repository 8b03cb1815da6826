"""The people's side of the HTTP listener: the check page, the add-in's files, departments.

Static files come from `api/static/` with their exact types, a validator (ETag,
Last-Modified) and a cache policy each: pages and scripts are revalidated on every load
so that an upgrade reaches every Outlook at once, icons are kept for a day, API answers
never. Every answer carries a Content Security Policy that lets a page load Office.js
from Microsoft (the only source outside this gateway) and nothing else from outside
(CSP Level 3, W3C). The handlers get what they need as a callable that returns the
current configuration, so SIGHUP changes what they serve without a restart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.config import Config

STATIC = Path(__file__).with_name("static")
OFFICE_JS_ORIGIN = "https://appsforoffice.microsoft.com"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".xml": "application/xml; charset=utf-8",
}
REVALIDATE = "no-cache"  # keep, but ask again (a 304 is cheap) before every use
ICONS = "public, max-age=86400"
NO_STORE = "no-store"

_POLICY = "; ".join((
    "default-src 'none'",
    f"script-src 'self' {OFFICE_JS_ORIGIN}",
    "connect-src 'self'",
    "img-src 'self'",
    "style-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "object-src 'none'",
))
# The check page is never framed; the add-in's pages must be, by Outlook on the web
# (outlook.office.com, an on-premises OWA host): their frame-ancestors stays open.
CHECK_PAGE_POLICY = f"{_POLICY}; frame-ancestors 'none'"
ADDIN_POLICY = _POLICY

ConfigSource = Callable[[], Config]
CONFIG = web.AppKey("pages_config", object)


def add_pages(app: web.Application, config: ConfigSource) -> None:
    """Route `/`, `/static/...` and `/api/departments`, and secure every answer's headers."""
    app[CONFIG] = config
    app.router.add_get("/", check_page)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/api/departments", departments)
    app.on_response_prepare.append(_security_headers)


def _config(request: web.Request) -> Config:
    return request.app[CONFIG]()  # type: ignore[operator]


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    policy = ADDIN_POLICY if request.path.startswith("/addin/") else CHECK_PAGE_POLICY
    headers.setdefault("Content-Security-Policy", policy)
    if request.path.startswith("/api/"):
        headers.setdefault("Cache-Control", NO_STORE)


def file_response(path: Path) -> web.FileResponse:
    """One static file with its type and cache policy; 404 for anything not served."""
    content_type = CONTENT_TYPES.get(path.suffix)
    if content_type is None or not path.is_file():
        raise web.HTTPNotFound()
    cache = ICONS if path.suffix == ".png" else REVALIDATE
    return web.FileResponse(path, headers={"Content-Type": content_type,
                                           "Cache-Control": cache})


def generated_response(request: web.Request, body: bytes, content_type: str) -> web.Response:
    """A response built in memory, revalidated by a strong ETag of its content (RFC 9110)."""
    etag = hashlib.sha256(body).hexdigest()[:32]
    headers = {"Cache-Control": REVALIDATE, "ETag": f'"{etag}"'}
    match = request.if_none_match
    if match is not None and any(tag.value in (etag, "*") for tag in match):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers={**headers, "Content-Type": content_type})


async def check_page(request: web.Request) -> web.FileResponse:
    return file_response(STATIC / "index.html")


async def static_file(request: web.Request) -> web.FileResponse:
    # One level only: a name never holds a separator, so nothing outside static/ is reachable.
    return file_response(STATIC / request.match_info["name"])


async def departments(request: web.Request) -> web.Response:
    """The departments in configuration order, and the header that marks a mail for one."""
    config = _config(request)
    body = {
        "departments": [{"id": d.id, "name": d.name, "mailbox": d.mailbox}
                        for d in config.departments],
        "header": config.tags.header,
    }
    return web.json_response(body, dumps=lambda v: json.dumps(v, ensure_ascii=False))
