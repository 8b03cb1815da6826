"""The non-daemon commands: check, config check, queue, scan, certs dev-init and certs
import.

Each returns its exit status (CONTRACT "Command line"). Queue changes go through the
running daemon's loopback API when it answers, else straight to the spool.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import BaseModel

from gateway import app
from gateway.api.tls import https_context
from gateway.cluster import connected, database_password
from gateway.config import Config
from gateway.devpki import dev_init
from gateway.directory import DirectoryUnavailable
from gateway.directory.files import read_certificates
from gateway.directory.learnt import Learner, import_certificates, open_store
from gateway.directory.service import open_validator
from gateway.directory.validate import is_ca
from gateway.model import RecipientClass
from gateway.policy.address import InvalidAddress, normalise
from gateway.policy.dlp.scan import ScanResult, limits_from, scan_message
from gateway.spool import admin, partitions
from gateway.spool.store import Spool, SpoolBusy
from gateway.transform.mime import canonical

EXIT_OK, EXIT_UNSAFE, EXIT_USAGE, EXIT_TEMPFAIL = 0, 1, 2, 75


async def run(args: argparse.Namespace, config: Config, argv: list[str]) -> int:
    if args.command == "serve" and args.worker is not None:
        from gateway import worker
        return await worker.run(config, args.worker, args.workers, args.control_fd,
                                args.counts_fd, args.parent)
    if args.command == "serve":
        from gateway import supervisor
        return await supervisor.serve(config, argv)
    if args.command == "check":
        return await check(config, args.addresses, args.json)
    if args.command == "config":
        return await config_check(config)
    if args.command == "scan":
        return await asyncio.to_thread(scan, config, args.files, args.json)
    if args.command == "certs" and args.action == "import":
        return await certs_import(config, [Path(f) for f in args.files])
    if args.command == "certs":
        out = Path(args.dir) if args.dir else config.path.parent.parent / "certs"
        for path in await asyncio.to_thread(dev_init, config, out):
            print(f"wrote {path}")
        return EXIT_OK
    return await queue(args, config)


async def check(config: Config, addresses: list[str], as_json: bool) -> int:
    """Classify addresses exactly as the daemon would."""
    try:
        for address in addresses:
            normalise(address)
    except InvalidAddress as e:
        print(f"send-sikkert: {e}", file=sys.stderr)
        return EXIT_USAGE
    async with connected(config) as database:
        loaded = await app.load_policy(config, with_departments=False, database=database)
        try:
            decisions = await asyncio.gather(
                *(loaded.policy.classifier.classify(a) for a in addresses))
        finally:
            if loaded.directory is not None:
                await loaded.directory.close()
    if as_json:
        print(json.dumps({"results": [d.as_json() for d in decisions]}, ensure_ascii=False))
    else:
        for d in decisions:
            print(f"{d.address}\t{d.cls}\t{d.cls.colour}\t{d.reason}")
    classes = {d.cls for d in decisions}
    if RecipientClass.UNSAFE in classes:
        return EXIT_UNSAFE
    if RecipientClass.UNKNOWN in classes:
        return EXIT_TEMPFAIL
    return EXIT_OK


async def certs_import(config: Config, files: list[Path]) -> int:
    """Validate each certificate as a directory certificate and add it to the learnt store.

    With a daemon running, it does the learning (and counts it in
    sendsikkert_certificates_learnt_total{source="import"}); the files are read here.
    """
    if config.inbound.harvest is None or config.directory.backend is None:
        print("send-sikkert: certs import needs inbound.harvest (the store of learnt "
              "certificates) and a [directory] with trust_anchors", file=sys.stderr)
        return EXIT_USAGE
    read = [(path, *await asyncio.to_thread(_offers, path)) for path in files]
    offers = [offer for _, offered, _ in read for offer in offered]
    answer: tuple[int, dict] | None = (200, {"results": []})
    if offers:
        body = {"certificates": [{"der": _b64(o.der), "chain": [_b64(c) for c in o.chain],
                                  "note": o.note} for o in offers]}
        answer = await asyncio.to_thread(_ask_daemon, config, "POST", "/api/certificates",
                                         body)
        if answer is None:  # no daemon: learn here
            answer = await _learn_here(config, offers)
    status, result = answer
    if status >= 300:
        print(f"send-sikkert: {result.get('error', status)}", file=sys.stderr)
        return EXIT_UNSAFE
    learnt = iter(result["results"])
    refused = 0
    for path, offered, problem in read:  # one line each, in the order of the files
        if problem:
            print(f"send-sikkert: {path}: refused{problem}", file=sys.stderr)
            refused += 1
        for one in (next(learnt) for _ in offered):
            if one["refused"]:
                print(f"send-sikkert: {path}: refused {one['subject']}: {one['refused']}",
                      file=sys.stderr)
                refused += 1
            for address in one["added"]:
                print(f"{path}: added {one['subject']} for {address}")
            for address in one["known"]:
                print(f"{path}: already known: {one['subject']} for {address}")
    return EXIT_UNSAFE if refused else EXIT_OK


@dataclass(frozen=True)
class _Offer:
    """One recipient certificate of a file given to `certs import`."""

    der: bytes
    chain: tuple[bytes, ...]  # the CA certificates of the same file, for path building
    note: str


def _offers(path: Path) -> tuple[list[_Offer], str]:
    """The recipient certificates in one file, or why none can be offered."""
    try:
        certs = read_certificates(path)
    except OSError as e:
        return [], f": cannot read it: {e.strerror}"
    except ValueError:
        return [], ": not a certificate (PEM, DER or PKCS#7)"
    chain = tuple(c.public_bytes(Encoding.DER) for c in certs if is_ca(c))
    leaves = [c for c in certs if not is_ca(c)]
    if not leaves:
        return [], ": only CA certificates, no recipient's"
    return [_Offer(c.public_bytes(Encoding.DER), chain, f"certs import {path.name}")
            for c in leaves], ""


async def _learn_here(config: Config, offers: list[_Offer]) -> tuple[int, dict]:
    """What the daemon's /api/certificates does, for when no daemon runs."""
    async with connected(config) as database:
        store = open_store(config, database)
        assert store is not None
        validator = open_validator(config.directory, config.path)
        try:
            learnt = await import_certificates(Learner(store, validator),
                                               [(o.der, o.chain, o.note) for o in offers])
        except DirectoryUnavailable as e:  # the store cannot be written
            return 503, {"error": str(e)}
        finally:
            if validator.crls is not None:
                await validator.crls.close()
            validator.close()
    return 200, {"results": [asdict(one) for one in learnt]}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def config_check(config: Config) -> int:
    """Load everything the configuration names; print the effective configuration."""
    loaded = await app.load_policy(config)
    if loaded.directory is not None:
        await loaded.directory.close()
    app.inbound_tls(config)
    if config.cluster.database:
        database_password(config)
    https_context(config)
    print(json.dumps(_plain(config), indent=2, ensure_ascii=False))
    print(f"configuration {config.path} is valid: {len(loaded.sepo)} SEPO domain(s), "
          f"{len(loaded.policy.departments)} department(s)", file=sys.stderr)
    return EXIT_OK


def scan(config: Config, files: list[str], as_json: bool) -> int:
    """The DLP scan of each .eml file: findings masked, where, what could not be read.

    Scans whatever `dlp.cpr` says, so a rule can be tried before it is switched on.
    """
    limits = limits_from(config.dlp)
    reports, status = [], EXIT_OK
    for name in files:
        try:
            data = Path(name).read_bytes()
        except OSError as e:
            reports.append({"file": name, "error": e.strerror or str(e)})
            status = EXIT_USAGE
            continue
        result = scan_message(canonical(data), limits)
        reports.append(_scan_report(name, result))
        if result.found and status == EXIT_OK:
            status = EXIT_UNSAFE
    if as_json:
        print(json.dumps({"files": reports}, ensure_ascii=False))
    else:
        for report in reports:
            _print_scan(report)
    return status


def _scan_report(name: str, result: ScanResult) -> dict[str, Any]:
    return {
        "file": name,
        "found": result.found,
        "findings": [{"where": f.where, "name": f.name, "number": f.masked, "reason": f.reason}
                     for f in result.findings],
        "incomplete": [{"reason": g.reason, "name": g.name, "detail": g.detail}
                       for g in result.gaps],
    }


def _print_scan(report: dict[str, Any]) -> None:
    if "error" in report:
        print(f"send-sikkert: {report['file']}: cannot read: {report['error']}",
              file=sys.stderr)
        return
    findings = report["findings"]
    print(f"{report['file']}: " + (f"{len(findings)} CPR number(s) found" if findings
                                   else "no CPR number found"))
    for f in findings:
        where = f"attachment {f['name']}" if f["where"] == "attachment" else f["where"]
        print(f"  {f['number']}  {where}  ({f['reason']})")
    for g in report["incomplete"]:
        print(f"  not read in full: {g['reason']}: {g['name'] or 'the message'} ({g['detail']})")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "pattern"):
        return value.pattern
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


async def queue(args: argparse.Namespace, config: Config) -> int:
    """The queue of every worker's partition, read from disk; changes via the daemon."""
    root = config.spool.dir
    if args.action == "list":
        found = await asyncio.to_thread(partitions.scan, root)
        for record, error in found.unreadable.items():
            print(f"send-sikkert: cannot read spool record {record}: {error}; left as it is "
                  f"(the daemon's start quarantines what it cannot read)", file=sys.stderr)
        data = admin.listing(found.envelopes)
        if args.json:
            print(json.dumps(data, ensure_ascii=False))
        else:
            _print_listing(data)
        return EXIT_OK
    found = partitions.owner(root, args.id) if getattr(args, "id", None) else None
    env = found[1].read(args.id) if found else None
    if getattr(args, "id", None) and env is None:
        print(f"send-sikkert: no message {args.id} in the queue", file=sys.stderr)
        return EXIT_UNSAFE
    if args.action == "show":
        assert env is not None
        print(admin.describe(env))
        return EXIT_OK
    method, path = (("POST", f"/api/queue/{args.id}/retry" if args.id else "/api/queue/retry")
                    if args.action == "retry" else ("DELETE", f"/api/queue/{args.id}"))
    answer = await asyncio.to_thread(_ask_daemon, config, method, path)
    if answer is None:  # no daemon: act on the spool directly
        answer = await _offline(args.action, root, config, env)
    status, body = answer
    print(body.get("error") or json.dumps(body), file=sys.stderr if status >= 300 else sys.stdout)
    if status < 300:
        return EXIT_OK
    # 1 only for an unknown ID (CONTRACT); busy or unavailable: try again (like check's 75).
    return EXIT_UNSAFE if status == 404 else EXIT_TEMPFAIL


async def _offline(action: str, root: Path, config: Config, env: Any) -> tuple[int, dict]:
    try:
        Spool(root).lock()
    except SpoolBusy:
        return 503, {"error": f"a send-sikkert daemon holds {root}, but its API on "
                              f"http.listen does not answer; nothing was changed"}
    if action == "delete":
        found = partitions.owner(root, env.id)
        assert found is not None
        await admin.delete(found[1], config, env)
        return 200, {"deleted": env.id}
    for folder in partitions.partitions(root):
        spool = Spool(folder)
        for target in spool.load_all():
            if env is not None and target.id != env.id:
                continue
            for r in target.recipients:
                if not r.state.final:
                    r.next_attempt = 0.0
            await spool.update(target)
    return 200, {"retry": env.id if env else "all", "note": "applies when the daemon starts"}


def _ask_daemon(config: Config, method: str, path: str,
                body: dict | None = None) -> tuple[int, dict] | None:
    """Call the daemon's loopback API (queue, certificates); None when no daemon answers."""
    listen = config.http.listen
    if listen is None:
        return None
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    scheme, context = "http", None
    try:
        if config.http.tls is not None:
            # Our own listener: trust exactly its certificate, whatever name it was issued for.
            scheme = "https"
            context = ssl.create_default_context(cafile=config.http.tls.cert)
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            context.check_hostname = False
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(f"{scheme}://{host}:{listen.port}{path}", data=data,
                                         method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:  # not our API's answer (an older daemon, a proxy)
            return e.code, {"error": f"the daemon answered {e.code} {e.reason}"}
    except (urllib.error.URLError, OSError, ssl.SSLError):  # no daemon, or not ours
        return None


def _print_listing(data: dict[str, Any]) -> None:
    if not data["messages"]:
        print("queue is empty")
    now = time.time()
    for m in data["messages"]:
        wait = m["next_attempt"] - now
        print(f"{m['id']}  <{m['sender']}>  age {m['age_seconds']:.0f}s  "
              f"attempts {m['attempts']}  next {f'in {wait:.0f}s' if wait >= 1 else 'now'}")
        for r in m["recipients"]:
            print(f"    <{r['address']}> {r['state']} {r['class'] or ''} {r['last_error']}"
                  .rstrip())
