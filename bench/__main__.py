"""`python -m bench`: run every case through Postfix and send-sikkert, print the table.

    python -m bench [--quick] [--rounds N] [--cases untagged_5k,tunnel_5k] [--json F]

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import crl, measure
from bench.cases import CASES, Case
from bench.load import Message, drive
from bench.servers import Gateway, Postfix, Sink, tls_certificate

WARMUP = 300
ROUNDS = 3  # passes of each case, pooled (see drive_all)


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


@dataclass
class Sample:
    """One pass of a case through one server: the raw figures, pooled over the rounds."""

    sent: int
    accepted: int
    refused: int
    delivered: int
    duplicates: int
    accept_seconds: float  # from the first MAIL to the last 250
    e2e_seconds: float  # from the first MAIL to the last arrival at the sink
    accept_lat: list[float]
    e2e_lat: list[float]
    cpu: float
    peak: int
    grown: int
    errors: list[str]


async def run_case(case: Case, count: int, target: Target, sink: Sink,
                   message: Message | None = None, tag: str = "") -> Sample:
    sink.clear()
    root = target.pid
    rss_before = measure.reset_peaks(root)
    cpu_before = measure.cpu_seconds(root)
    with measure.PeakSampler(root) as sampler:
        outcome = await drive("127.0.0.1", target.port,
                              f"{case.name}{tag}.{target.name.replace(' ', '_')}",
                              [message or case.message()] * count, case.sessions, target.tls)
        await asyncio.to_thread(sink.wait_for, len(outcome.accepted), 30 + case.size / 1e6,
                                600, whole(case))
        await asyncio.sleep(0.5)  # let the relay finish its bookkeeping after the last delivery
    cpu = measure.cpu_seconds(root) - cpu_before
    arrivals = sink.arrivals(min_size=whole(case))
    delivered = [i for i in outcome.accepted if i in arrivals]
    last_accept = max(outcome.accepted.values(), default=outcome.started)
    last_arrival = max((arrivals[i].time for i in delivered), default=outcome.started)
    return Sample(
        sent=len(outcome.sent), accepted=len(outcome.accepted), refused=len(outcome.refused),
        delivered=len(delivered), duplicates=sink.count() - len(arrivals),
        accept_seconds=last_accept - outcome.started,
        e2e_seconds=last_arrival - outcome.started,
        accept_lat=outcome.accept_latencies(),
        e2e_lat=[arrivals[i].time - outcome.sent[i] for i in delivered],
        cpu=cpu, peak=sampler.peak, grown=measure.growth(root, rss_before),
        errors=outcome.errors[:3] + list(outcome.refused.values())[:3])


def pooled(case: Case, server: str, samples: list[Sample]) -> dict[str, Any]:
    """One row of the table: every round's messages together (rates over the summed time,
    percentiles over all latencies), and each round's own figures for the spread."""
    total = {key: sum(getattr(s, key) for s in samples)
             for key in ("sent", "accepted", "refused", "delivered", "duplicates",
                         "accept_seconds", "e2e_seconds", "cpu")}
    accept_lat = [x for s in samples for x in s.accept_lat]
    e2e = [x for s in samples for x in s.e2e_lat]
    return {
        "case": case.name, "title": case.title, "server": server, "rounds": len(samples),
        "sent": total["sent"], "accepted": total["accepted"], "refused": total["refused"],
        "delivered": total["delivered"], "duplicates": total["duplicates"],
        "missing": total["accepted"] - total["delivered"],
        "accept_rate": total["accepted"] / max(1e-9, total["accept_seconds"]),
        "e2e_rate": total["delivered"] / max(1e-9, total["e2e_seconds"]),
        "accept_p50_ms": percentile(accept_lat, 50) * 1000,
        "accept_p99_ms": percentile(accept_lat, 99) * 1000,
        "e2e_p50_ms": percentile(e2e, 50) * 1000,
        "e2e_p99_ms": percentile(e2e, 99) * 1000,
        "cpu_ms_per_msg": total["cpu"] * 1000 / max(1, total["accepted"]),
        # The first round's: later rounds follow the 1 MB and 25 MB cases, whose memory a
        # relay's allocator may keep (each round's is in by_round).
        "peak_rss_mb": samples[0].peak / 2**20,
        "rss_growth_mb": max(s.grown for s in samples) / 2**20,
        "by_round": [{"e2e_rate": s.delivered / max(1e-9, s.e2e_seconds),
                      "accept_p99_ms": percentile(s.accept_lat, 99) * 1000,
                      "cpu_ms_per_msg": s.cpu * 1000 / max(1, s.accepted),
                      "peak_rss_mb": s.peak / 2**20}
                     for s in samples],
        "errors": [e for s in samples for e in s.errors][:6],
    }


def ratio(rows: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str],
          key: str) -> tuple[float | None, list[float]]:
    """x / y of the pooled rows, and the same ratio round by round."""
    def find(case: str, server: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["case"] == case and r["server"] == server), None)
    x, y = find(*a), find(*b)
    if x is None or y is None or not y[key]:
        return None, []
    rounds = zip(x["by_round"], y["by_round"], strict=True)
    return x[key] / y[key], [xr[key] / yr[key] for xr, yr in rounds if yr[key]]


def goals(rows: list[dict[str, Any]], crl_result: dict[str, Any] | None) -> list[dict[str, Any]]:
    g = "send-sikkert"
    found: list[dict[str, Any]] = []

    def add(text: str, value: tuple[float | None, list[float]], target: float,
            higher: bool = True, unit: str = "x") -> None:
        pooled, by_round = value
        met = pooled is not None and (pooled >= target if higher else pooled <= target)
        found.append({"goal": text, "value": pooled, "target": target, "met": met,
                      "unit": unit, "higher": higher, "by_round": by_round})

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
        add("25 MB message: RSS growth / message size", (big["rss_growth_mb"] / 25, []), 3.0,
            higher=False)
    if crl_result:
        add("CRL of 200,000 serials: ms per lookup", (crl_result["lookup_p50_ms"], []), 5.0,
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
        rounds = ""
        if len(g["by_round"]) > 1:
            rounds = "; round by round " + ", ".join(f"{v:.2f}" for v in g["by_round"])
        out.append(f"- {g['goal']}: {value} (goal {'>=' if g['higher'] else '<='} "
                   f"{g['target']}{g['unit']}): {'met' if g['met'] else 'NOT met'}{rounds}")
    return "\n".join(out)


async def drive_all(chosen: list[Case], quick: bool, rounds: int, targets: list[Target],
                    references: list[Target], sink: Sink) -> list[dict[str, Any]]:
    """Every case through the reference path and both relays, round after round.

    Every case runs `rounds` times, all cases of a round before the next, the relays
    taking turns at going first: the disk of a shared machine stalls now and then (fsync
    waiting 100 to 400 ms), and a stall decides a p99 of one pass; spread over the run and
    pooled, both relays meet the same disk.
    """
    samples: dict[tuple[str, str], list[Sample]] = {}
    for target in targets:
        await run_case(CASES[0], WARMUP, target, sink)
    for n in range(rounds):
        for case in chosen:
            count = case.quick_count if quick else case.count
            tag = f".r{n}" if rounds > 1 else ""
            if case.name in ("untagged_5k", "tunnel_5k"):
                ref = references[0 if case.name == "untagged_5k" else 1]
                samples.setdefault((case.name, ref.name), []).append(
                    await run_case(case, count, ref, sink, CASES[0].message(), tag))
            for target in targets if n % 2 == 0 else targets[::-1]:
                sample = await run_case(case, count, target, sink, tag=tag)
                samples.setdefault((case.name, target.name), []).append(sample)
                print(f"{case.name:12} {target.name:16} round {n + 1}: "
                      f"{sample.delivered / max(1e-9, sample.e2e_seconds):7.0f} msgs/s e2e "
                      f"({sample.delivered}/{sample.sent} delivered)", file=sys.stderr)
    by_name = {c.name: c for c in chosen}
    order = [ref.name for ref in references] + [t.name for t in targets]
    return [pooled(by_name[case], server, found)
            for (case, server), found in sorted(samples.items(), key=lambda item: (
                [c.name for c in chosen].index(item[0][0]), order.index(item[0][1])))]


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
        rounds = args.rounds or (1 if args.quick else ROUNDS)
        rows = asyncio.run(drive_all(chosen, args.quick, rounds, targets, references,
                                     sink))
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
    p.add_argument("--rounds", type=int, default=0,
                   help=f"passes of each case (default {ROUNDS}; 1 with --quick)")
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
