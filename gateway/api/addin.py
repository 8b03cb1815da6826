"""The Outlook add-in under /addin/: its manifest, task pane and send-time check.

Served only while `addin.public_url` is set (CONTRACT "Outlook add-in"); otherwise every
/addin/ path answers 404. The manifest and /addin/launchevent.js are built from the
current configuration at each request (cheap, and so SIGHUP changes them at once): the
send-time check runs in classic Outlook's JavaScript-only runtime, which loads one file
and nothing else, so that file is the settings it needs followed by rows.js (the check
API client), cpr.js and addin/onsend.js, joined.
"""

from __future__ import annotations

import functools
import json
import re

from aiohttp import web

from gateway.api import manifest
from gateway.api.pages import (
    CONFIG,
    CONTENT_TYPES,
    STATIC,
    file_response,
    generated_response,
)
from gateway.config import Config

LAUNCH_PARTS = ("rows.js", "cpr.js", "addin/onsend.js")


def add_addin(app: web.Application) -> None:
    """Route /addin/...; add_pages() must have given the app its configuration source."""
    app.router.add_get("/addin/manifest.xml", manifest_xml)
    app.router.add_get("/addin/launchevent.js", launch_script)
    app.router.add_get("/addin/{name}", addin_file)


def _addin_config(request: web.Request) -> Config:
    """The configuration, or 404 when the add-in is off."""
    config: Config = request.app[CONFIG]()  # type: ignore[operator]
    if not config.addin.public_url:
        raise web.HTTPNotFound(text="the Outlook add-in is off: set addin.public_url\n")
    return config


def addin_info(config: Config) -> manifest.AddinInfo:
    return manifest.AddinInfo(public_url=config.addin.public_url, id=config.addin.id,
                              provider=config.organisation.name)


async def manifest_xml(request: web.Request) -> web.Response:
    body = manifest.render(addin_info(_addin_config(request)))
    return generated_response(request, body, CONTENT_TYPES[".xml"])


def js_pattern(pattern: re.Pattern[str]) -> str:
    """The subject tag pattern in JavaScript's syntax: Python's `(?P<name>` is `(?<name>`."""
    return re.sub(r"\(\?P<", "(?<", pattern.pattern)


def launch_settings(config: Config) -> dict[str, object]:
    """What the send-time check needs to know without asking the gateway first."""
    return {
        "base": config.addin.public_url,
        "header": config.tags.header,
        "subject": js_pattern(config.tags.subject),
        "departments": [{"id": d.id, "mailbox": d.mailbox} for d in config.departments],
    }


async def launch_script(request: web.Request) -> web.Response:
    config = _addin_config(request)
    settings = f"var SEND_SIKKERT_CONFIG = {json.dumps(launch_settings(config))};\n"
    body = "\n".join((settings, _launch_code())).encode("utf-8")
    return generated_response(request, body, CONTENT_TYPES[".js"])


@functools.cache
def _launch_code() -> str:
    """The scripts after the settings: files of the package, read once, not per request."""
    return "\n".join((STATIC / name).read_text(encoding="utf-8") for name in LAUNCH_PARTS)


async def addin_file(request: web.Request) -> web.FileResponse:
    _addin_config(request)
    return file_response(STATIC / "addin" / request.match_info["name"])
