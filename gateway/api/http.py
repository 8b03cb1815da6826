"""The HTTP API on `http.listen`: address check, health, readiness, metrics, queue admin.

It runs in the supervisor (gateway/supervisor.py), beside the workers: `/api/check`
answers with the same classifier the workers use, `/metrics` adds up every process,
and the queue endpoints pass retry and delete to the worker that owns the message.
They are for `send-sikkert queue` on the same host and answer loopback clients only.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.addin import add_addin
from gateway.api.pages import add_pages
from gateway.cluster import DatabaseUnavailable
from gateway.control import WorkerUnavailable
from gateway.directory import DirectoryUnavailable
from gateway.directory.learnt import import_certificates
from gateway.policy.address import InvalidAddress, normalise
from gateway.spool import admin

if TYPE_CHECKING:
    from gateway.supervisor import Supervisor as Gateway

GATEWAY = web.AppKey("gateway", object)


def make_app(gateway: Gateway) -> web.Application:
    app = web.Application()
    app[GATEWAY] = gateway
    app.router.add_get("/api/check", check)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/api/queue", queue_list)
    app.router.add_post("/api/queue/retry", queue_retry)
    app.router.add_post("/api/queue/{id}/retry", queue_retry)
    app.router.add_delete("/api/queue/{id}", queue_delete)
    app.router.add_post("/api/certificates", certificates_import)
    add_pages(app, lambda: gateway.config)
    add_addin(app)
    return app


def _gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY]  # type: ignore[return-value]


async def check(request: web.Request) -> web.Response:
    """Classify each `address` parameter, in request order."""
    addresses = request.query.getall("address", [])
    if not addresses:
        return web.json_response({"error": "give at least one address parameter"}, status=400)
    try:
        for address in addresses:
            normalise(address)
    except InvalidAddress as e:
        return web.json_response({"error": str(e)}, status=400)
    classifier = _gateway(request).classifier
    decisions = await asyncio.gather(*(classifier.classify(a) for a in addresses))
    return web.json_response({"results": [d.as_json() for d in decisions]},
                             dumps=_dumps)


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the SEPO list is loaded, the spool writable and the directory reachable.

    A cluster database that cannot be reached is named under `warnings`.
    """
    gateway = _gateway(request)
    reasons = []
    if gateway.loaded.sepo is None:
        reasons.append("SEPO list not loaded")
    if not await asyncio.to_thread(gateway.spool.writable):
        reasons.append(f"spool {gateway.spool.dir} is not writable")
    directory = gateway.loaded.directory
    if directory is not None:
        try:
            await directory.ping()
        except DirectoryUnavailable as e:
            reasons.append(f"certificate directory unreachable: {e}")
    reasons += gateway.readiness_problems()
    # Every node shares the database: an outage is no reason to take this one out of the
    # balancer, and accepting mail never depends on it. It is said, not failed.
    warnings = []
    if gateway.database is not None:
        try:
            await gateway.database.ping()
        except DatabaseUnavailable as e:
            warnings.append(f"cluster database unreachable: {e} (lookups that need it "
                            "answer unknown; mail waits)")
    extra = {"warnings": warnings} if warnings else {}
    if reasons:
        return web.json_response({"status": "not ready", "reasons": reasons, **extra},
                                 status=503)
    return web.json_response({"status": "ready", **extra})


async def prometheus(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(_gateway(request).render_metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _loopback_only(request: web.Request) -> None:
    try:
        if ipaddress.ip_address(request.remote or "").is_loopback:
            return
    except ValueError:
        pass
    raise web.HTTPForbidden(text="queue administration is for loopback clients only\n")


async def queue_list(request: web.Request) -> web.Response:
    _loopback_only(request)
    envelopes = await _gateway(request).queue_envelopes()
    return web.json_response(admin.listing(envelopes), dumps=_dumps)


async def queue_retry(request: web.Request) -> web.Response:
    _loopback_only(request)
    queue_id = request.match_info.get("id")
    try:
        found = await _gateway(request).retry(queue_id)
    except WorkerUnavailable as e:
        return web.json_response({"error": str(e)}, status=503)
    if not found:
        return web.json_response({"error": f"no message {queue_id}"}, status=404)
    return web.json_response({"retry": queue_id or "all"})


async def queue_delete(request: web.Request) -> web.Response:
    _loopback_only(request)
    gateway = _gateway(request)
    queue_id = request.match_info["id"]
    try:
        found = await gateway.delete(queue_id)
    except admin.Busy as e:
        return web.json_response({"error": str(e)}, status=409)
    except WorkerUnavailable as e:
        return web.json_response({"error": str(e)}, status=503)
    if not found:
        return web.json_response({"error": f"no message {queue_id}"}, status=404)
    return web.json_response({"deleted": queue_id})


async def certificates_import(request: web.Request) -> web.Response:
    """`send-sikkert certs import`: learn the certificates it read, here, where the daemon
    counts them (sendsikkert_certificates_learnt_total{source="import"})."""
    _loopback_only(request)
    receiver = _gateway(request).loaded.policy.receiver
    learner = receiver.learner if receiver is not None else None
    if learner is None:
        return web.json_response({"error": "the running daemon has no learnt store "
                                           "(inbound.harvest)"}, status=409)
    try:
        offers = [(base64.b64decode(c["der"], validate=True),
                   [base64.b64decode(d, validate=True) for d in c["chain"]], str(c["note"]))
                  for c in (await request.json())["certificates"]]
    except (ValueError, KeyError, TypeError) as e:
        return web.json_response({"error": f"not a certificates request: {e}"}, status=400)
    try:
        learnt = await import_certificates(learner, offers)
    except DirectoryUnavailable as e:  # the store cannot be written
        return web.json_response({"error": str(e)}, status=503)
    return web.json_response({"results": [asdict(one) for one in learnt]}, dumps=_dumps)
