"""`python -m bench`: run every case through Postfix and send-sikkert, print the table.

    python -m bench [--quick] [--cases untagged_5k,tunnel_5k] [--json results.json]

Both relays run side by side, each measured alone in turn on the same cores, delivering
to the same counting sink (smtp-sink); tunnel mail goes through a Postfix TLS front to
that sink. See README "Performance".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import crl, measure
from bench.cases import CASES, Case
from bench.load import Message, drive
from bench.servers import Gateway, Postfix, Sink, tls_certificate

WARMUP = 300


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


class Target:
    """A server the load goes to: where it listens and whose processes to measure."""

    def __init__(self, name: str, port: int, pid: Any, tls: ssl.SSLContext | None = None):
        self.name, self.port, self._pid, self.tls = name, port, pid, tls

    @property
    def pid(self) -> int:
        return self._pid() if callable(self._pid) else self._pid


def whole(case: Case) -> int:
    """The least size of a complete dump (smtp-sink writes LF where the mail had CRLF)."""
    return int(case.size * 0.9)


async def run_case(case: Case, count: int, target: Target, sink: Sink,
                   message: Message | None = None) -> dict[str, Any]:
    sink.clear()
    root = target.pid
    rss_before = measure.reset_peaks(root)
    cpu_before = measure.cpu_seconds(root)
    with measure.PeakSampler(root) as sampler:
        outcome = await drive("127.0.0.1", target.port,
                              f"{case.name}.{target.name.replace(' ', '_')}",
                              [message or case.message()] * count, case.sessions, target.tls)
        await asyncio.to_thread(sink.wait_for, len(outcome.accepted), 30 + case.size / 1e6,
                                600, whole(case))
        await asyncio.sleep(0.5)  # let the relay finish its bookkeeping after the last delivery
    cpu = measure.cpu_seconds(root) - cpu_before
    grown = measure.growth(root, rss_before)
    arrivals = sink.arrivals(min_size=whole(case))
    files = sink.count()
    delivered = [i for i in outcome.accepted if i in arrivals]
    e2e = sorted(arrivals[i].time - outcome.sent[i] for i in delivered)
    last_accept = max(outcome.accepted.values(), default=outcome.started)
    last_arrival = max((arrivals[i].time for i in delivered), default=outcome.started)
    accept_lat = outcome.accept_latencies()
    row = {
        "case": case.name, "title": case.title, "server": target.name,
        "sent": len(outcome.sent), "accepted": len(outcome.accepted),
        "refused": len(outcome.refused), "delivered": len(delivered),
        "duplicates": files - len(arrivals),
        "missing": len(outcome.accepted) - len(delivered),
        "accept_rate": len(outcome.accepted) / max(1e-9, last_accept - outcome.started),
        "e2e_rate": len(delivered) / max(1e-9, last_arrival - outcome.started),
        "accept_p50_ms": percentile(accept_lat, 50) * 1000,
        "accept_p99_ms": percentile(accept_lat, 99) * 1000,
        "e2e_p50_ms": percentile(e2e, 50) * 1000,
        "e2e_p99_ms": percentile(e2e, 99) * 1000,
        "cpu_ms_per_msg": cpu * 1000 / max(1, len(outcome.accepted)),
        "peak_rss_mb": sampler.peak / 2**20,
        "rss_growth_mb": grown / 2**20,
        "errors": outcome.errors[:3] + list(outcome.refused.values())[:3],
    }
    return row


def ratio(rows: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str],
          key: str) -> float | None:
    def find(case: str, server: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["case"] == case and r["server"] == server), None)
    x, y = find(*a), find(*b)
    if x is None or y is None or not y[key]:
        return None
    return x[key] / y[key]


def goals(rows: list[dict[str, Any]], crl_result: dict[str, Any] | None) -> list[dict[str, Any]]:
    g = "send-sikkert"
    found: list[dict[str, Any]] = []

    def add(text: str, value: float | None, target: float, higher: bool = True,
            unit: str = "x") -> None:
        met = value is not None and (value >= target if higher else value <= target)
        found.append({"goal": text, "value": value, "target": target, "met": met,
                      "unit": unit})

    add("untagged end-to-end vs Postfix", ratio(rows, ("untagged_5k", g),
                                                ("untagged_5k", "postfix"), "e2e_rate"), 1.0)
    add("tunnel end-to-end vs Postfix untagged", ratio(rows, ("tunnel_5k", g),
                                                       ("untagged_5k", "postfix"), "e2e_rate"),
        0.8)
    add("S/MIME 5 KB end-to-end vs own untagged", ratio(rows, ("smime_5k", g),
                                                        ("untagged_5k", g), "e2e_rate"), 0.5)
    add("untagged p99 accept latency vs Postfix", ratio(rows, ("untagged_5k", g),
                                                        ("untagged_5k", "postfix"),
                                                        "accept_p99_ms"), 1.0, higher=False)
    big = next((r for r in rows if r["case"] == "big_25m" and r["server"] == g), None)
    if big:
        add("25 MB message: RSS growth / message size", big["rss_growth_mb"] / 25, 3.0,
            higher=False)
    if crl_result:
        add("CRL of 200,000 serials: ms per lookup", crl_result["lookup_p50_ms"], 5.0,
            higher=False, unit="ms")
    return found


COLUMNS = (("case", "case", "{}"), ("server", "server", "{}"), ("sent", "sent", "{}"),
           ("accepted", "acc", "{}"), ("delivered", "dlv", "{}"),
           ("accept_rate", "acc/s", "{:.0f}"), ("e2e_rate", "e2e/s", "{:.0f}"),
           ("accept_p50_ms", "acc p50", "{:.1f}"), ("accept_p99_ms", "acc p99", "{:.1f}"),
           ("e2e_p50_ms", "e2e p50", "{:.1f}"), ("e2e_p99_ms", "e2e p99", "{:.1f}"),
           ("cpu_ms_per_msg", "CPU ms/msg", "{:.2f}"), ("peak_rss_mb", "peak PSS MB", "{:.0f}"),
           ("rss_growth_mb", "RSS +MB", "{:.0f}"))


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, so the README can take it as it is."""
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def goal_lines(found: list[dict[str, Any]]) -> str:
    out = []
    for g in found:
        value = "n/a" if g["value"] is None else f"{g['value']:.2f}{g['unit']}"
        sign = ">=" if "vs Postfix untagged" in g["goal"] or "end-to-end" in g["goal"] else "<="
        out.append(f"- {g['goal']}: {value} (goal {sign} {g['target']}{g['unit']}): "
                   f"{'met' if g['met'] else 'NOT met'}")
    return "\n".join(out)


async def drive_all(chosen: list[Case], quick: bool, targets: list[Target],
                    references: list[Target], sink: Sink) -> list[dict[str, Any]]:
    """Every case through the reference path, then Postfix, then send-sikkert."""
    rows = []
    for target in targets:
        await run_case(CASES[0], WARMUP, target, sink)
    for case in chosen:
        count = case.quick_count if quick else case.count
        if case.name in ("untagged_5k", "tunnel_5k"):
            ref = references[0 if case.name == "untagged_5k" else 1]
            rows.append(await run_case(case, count, ref, sink, message=CASES[0].message()))
        for target in targets:
            row = await run_case(case, count, target, sink)
            rows.append(row)
            print(f"{case.name:12} {target.name:16} {row['e2e_rate']:7.0f} msgs/s e2e "
                  f"({row['delivered']}/{row['sent']} delivered)", file=sys.stderr)
    return rows


def run(args: argparse.Namespace) -> int:
    chosen = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    # The relays' queues on disk, where fsync costs what it costs in production; the
    # sink's dumps in memory (/dev/shm), so that counting does not slow the relays down.
    base = Path(tempfile.mkdtemp(prefix="send-sikkert-bench-", dir=args.workdir))
    shm = Path("/dev/shm")
    dumps = Path(tempfile.mkdtemp(prefix="send-sikkert-sink-", dir=shm if shm.is_dir() else None))
    for folder in (base, dumps):
        folder.chmod(0o755)  # Postfix and smtp-sink drop privileges and must reach them
    load_before = os.getloadavg()
    sink = Sink(dumps / "sink").start()
    cert, key = tls_certificate(base / "tls")
    front = Postfix(base, "front", {
        "smtpd_tls_cert_file": str(cert), "smtpd_tls_key_file": str(key),
        "smtpd_tls_security_level": "may", "smtpd_proxy_filter": f"127.0.0.1:{sink.port}",
        "smtpd_proxy_timeout": "600s",
    })
    relay = Postfix(base, "relay", {
        "relayhost": f"[127.0.0.1]:{sink.port}",
        "transport_maps": f"inline:{{ sepo.bench.dk=smtp:[127.0.0.1]:{front.port} }}",
        "smtp_tls_policy_maps": f"inline:{{ {{[127.0.0.1]:{front.port} = secure "
                                f"match=localhost}} }}",
        "smtp_tls_CAfile": str(cert),
    })
    gateway = Gateway(base, sink.port, front.port, cert, extra=args.gateway_config)
    started: list[Any] = [sink]
    try:
        for server in (front, relay, gateway):
            server.start()
            started.append(server)
        client_tls = ssl.create_default_context(cafile=str(cert))
        assert gateway.proc is not None and sink.proc is not None
        targets = [Target("postfix", relay.port, relay.master_pid),
                   Target("send-sikkert", gateway.port, gateway.proc.pid)]
        references = [Target("sink direct", sink.port, sink.proc.pid),
                      Target("TLS front direct", front.port, front.master_pid, client_tls)]
        rows = asyncio.run(drive_all(chosen, args.quick, targets, references, sink))
    finally:
        for server in reversed(started):
            server.stop()
    crl_result = None
    if not args.cases or "crl" in args.cases.split(","):
        crl_result = crl.measure(base / "crl")
    load_after = os.getloadavg()
    found = goals(rows, crl_result)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_before": load_before, "load_after": load_after,
                    "time": time.strftime("%Y-%m-%d %H:%M:%S %z")},
        "quick": args.quick, "rows": rows, "crl": crl_result, "goals": found,
    }
    print(table(rows))
    if crl_result:
        print(f"\nCRL with {crl_result['serials']:,} revoked serials: "
              f"{crl_result['lookup_p50_ms']:.2f} ms per lookup (p50), "
              f"{crl_result['lookup_max_ms']:.2f} ms max, revoked one found: "
              f"{crl_result['revoked_found']}")
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"{os.cpu_count()} CPUs\n")
    print(goal_lines(found))
    incomplete = [r for r in rows if r["missing"] or r["accepted"] < r["sent"]]
    for r in incomplete:
        print(f"INCOMPLETE: {r['case']} {r['server']}: sent {r['sent']}, accepted "
              f"{r['accepted']}, delivered {r['delivered']}: {r['errors']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    shutil.rmtree(dumps, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if incomplete else 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer messages per case")
    p.add_argument("--cases", default="", help="comma-separated case names (and 'crl')")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--workdir", default=None, help="where the relays' queues go (a disk; "
                                                  "default: the system's temporary folder)")
    p.add_argument("--gateway-config", default="", help="TOML appended to the gateway's")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
