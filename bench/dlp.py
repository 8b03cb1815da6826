"""DLP benchmark: recall on the labelled corpus, scan throughput (MB/s) for text, PDF and
DOCX, and what the scan costs the relay rate of untagged mail without a CPR number
(dlp.cpr = "off" against "secure").

Run from the repository root:  .venv/bin/python -m bench.dlp [--messages 400]

Not a test: it prints figures. The relay comparison runs two real daemons (the console
script, on loopback, delivering to a `file:` outbox) side by side in the same run, both
loaded at once in every round so that both see the same machine load; an off-against-off
run first shows the noise of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import smtplib
import statistics
import tempfile
import threading
import time
from pathlib import Path

from gateway.policy.dlp.extract import extract
from gateway.policy.dlp.scan import Scanner, scan_message
from tests.support import documents
from tests.support.corpus import corpus
from tests.support.daemon import Daemon, GatewayConfig
from tests.support.pki import CA

LINE = "Kære Ole. Din mor har fået rengøring onsdag, og hun er glad for banko om fredagen. "


def sample_messages() -> dict[str, bytes]:
    text = (LINE * 12 + "\n") * 1000  # about 1 MB of plain text
    pdf = documents.pdf(*[LINE[:80]] * 40, pages=150)
    import io

    import docx
    document = docx.Document()
    for _ in range(4000):
        document.add_paragraph(LINE)
    out = io.BytesIO()
    document.save(out)
    return {
        "text": documents.mail(text, cte="quoted-printable"),
        "pdf": documents.mail("Se bilag", attachments=[("brev.pdf", documents.PDF_TYPE, pdf)]),
        "docx": documents.mail("Se bilag", attachments=[("notat.docx", documents.DOCX_TYPE,
                                                         out.getvalue())]),
    }


def throughput(rounds: int = 5) -> None:
    print("scan throughput (one core, scan_message in process; MB of the whole message)")
    for kind, message in sample_messages().items():
        scan_message(message)  # warm up imports and caches
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            result = scan_message(message)
            times.append(time.perf_counter() - started)
        assert not result.found
        best = min(times)
        mb = len(message) / 1e6
        text = sum(len(t.text) for t in extract(message).texts) / 1e6
        print(f"  {kind:5} {mb:6.2f} MB ({text:5.2f} M characters of text)  median "
              f"{statistics.median(times) * 1000:7.1f} ms  {mb / best:6.1f} MB/s, "
              f"{text / best:5.2f} M characters/s (best of {rounds})")


def recall() -> None:
    """Recall and false positives on the labelled corpus (also a unit test)."""
    messages = expected = hits = wrong = 0
    for _, message, numbers in corpus():
        found = {f.masked for f in scan_message(message).findings}
        messages += 1
        expected += len(numbers)
        hits += len(numbers & found)
        wrong += len(found - numbers)
    print(f"corpus: {messages} messages, {expected} CPR numbers: recall {hits}/{expected} "
          f"({hits / expected:.0%}), false positives {wrong}")


SMALL = documents.mail("Kære Henrik\n\nTak for din henvendelse. Ja, vi sørger for kørsel til "
                       "frisøren den 25. januar kl. 10.30 og til bankospil senere samme dag."
                       "\n\nVenlig hilsen\nÆldre og Omsorg\n", subject="Kørsel til frisøren")


def step_cost(count: int = 5000) -> None:
    """CPU the daemon spends on the DLP step of one small untagged mail, as `Scanner` runs it
    (on the event loop: small text needs no thread hop)."""
    scanner = Scanner()

    async def run() -> None:
        for _ in range(count):
            await scanner.scan(SMALL)

    asyncio.run(run())  # warm up
    started = time.process_time()
    asyncio.run(run())
    per_message = (time.process_time() - started) / count * 1e6
    print(f"DLP step for a small untagged mail ({len(SMALL)} bytes, on the event loop): "
          f"{per_message:.0f} µs CPU per message")


def relay_rate(messages: int, rounds: int, modes: tuple[str, str] = ("off", "secure")) -> None:
    body = SMALL
    ca = CA("bench CA")
    with tempfile.TemporaryDirectory() as tmp:
        daemons = {}
        for i, mode in enumerate(modes):
            root = Path(tmp) / f"{i}-{mode}"
            root.mkdir()
            config = GatewayConfig(root, ca, extra=f'[dlp]\ncpr = "{mode}"\n',
                                   max_message_size=10_000_000)
            daemons[f"{i}-{mode}"] = Daemon(config).start()
        try:
            rates: dict[str, list[float]] = {name: [] for name in daemons}
            cpu: dict[str, list[float]] = {name: [] for name in daemons}
            for number in range(rounds):
                # Both daemons at once: a burst of load from elsewhere hits them alike; who
                # starts first alternates.
                results: dict[str, tuple[float, float]] = {}
                order = list(daemons.items())[:: 1 if number % 2 == 0 else -1]
                threads = [threading.Thread(target=_timed_round,
                                            args=(name, daemon, body, messages, results))
                           for name, daemon in order]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                for name, (rate, cpu_ms) in results.items():
                    rates[name].append(rate)
                    cpu[name].append(cpu_ms)
            print(f"relay rate of untagged mail without a CPR number ({messages} messages per "
                  f"daemon and round over 4 SMTP connections, {rounds} rounds with both daemons "
                  "loaded at once; accepted and delivered to the file outbox)")
            for name, values in rates.items():
                mode = name.split("-", 1)[1]
                print(f"  dlp.cpr = {mode:6}  median {statistics.median(values):7.1f} msg/s"
                      f"  (rounds {', '.join(f'{v:.0f}' for v in values)});"
                      f"  daemon CPU {statistics.median(cpu[name]):.2f} ms/msg")
            first, second = daemons
            change = statistics.median(b / a for a, b in zip(rates[first], rates[second],
                                                             strict=True)) - 1
            cpu_change = statistics.median(b / a for a, b in zip(cpu[first], cpu[second],
                                                                 strict=True)) - 1
            print(f"  {modes[1]} against {modes[0]}, median of the rounds' ratios: rate "
                  f"{change * 100:+.1f} %, daemon CPU per message {cpu_change * 100:+.1f} %")
        finally:
            for daemon in daemons.values():
                daemon.stop()


def big_pdf(megabytes: int = 40, text_pages: int = 400) -> bytes:
    """A PDF of about `megabytes` (a scanned-looking photo) with `text_pages` of text."""
    import io

    from fpdf import FPDF
    from PIL import Image

    side = int((megabytes * 1e6 / 1.2) ** 0.5)  # noise JPEG at q95: about 1.2 bytes/pixel
    photo = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(
        photo, "JPEG", quality=95)
    doc = FPDF()
    doc.set_font("Helvetica", size=11)
    doc.add_page()
    doc.image(io.BytesIO(photo.getvalue()), w=180)
    for _ in range(text_pages):
        doc.add_page()
        for _ in range(40):
            doc.cell(0, 6, LINE[:80], new_x="LMARGIN", new_y="NEXT")
    return bytes(doc.output())


def responsiveness(samples: int = 40) -> None:
    """SMTP latency of small mails while a 40 MB PDF is being scanned, against idle."""
    pdf = big_pdf()
    big = documents.mail("Se bilag", attachments=[("scanning.pdf", documents.PDF_TYPE, pdf)])
    with tempfile.TemporaryDirectory() as tmp:
        config = GatewayConfig(Path(tmp), CA("bench CA"), extra='[dlp]\ncpr = "secure"\n',
                               max_message_size=100_000_000)
        daemon = Daemon(config).start()
        try:
            idle = [_latency(daemon) for _ in range(samples)]
            started = time.perf_counter()
            daemon.send("signo@brondby.dk", ["hm@hotmail.dk"], big)
            accepted = time.perf_counter() - started
            busy = [_latency(daemon) for _ in range(samples)]
            delivered = daemon.wait_outbox(2 * samples + 1, timeout=600)
            scanning = time.perf_counter() - started
            assert len(delivered) == 2 * samples + 1
        finally:
            daemon.stop()
    print(f"a {len(big) / 1e6:.0f} MB mail with a {len(pdf) / 1e6:.0f} MB PDF (a photo, 400 pages "
          "of text): "
          f"accepted in {accepted:.1f} s, scanned and delivered after {scanning:.1f} s")

    def p(values: list[float], q: float) -> float:
        return sorted(values)[int(q * (len(values) - 1))] * 1000

    print(f"  one small mail's SMTP transaction: idle p50 {p(idle, .5):.1f} ms, p95 "
          f"{p(idle, .95):.1f} ms; while the PDF is scanned p50 {p(busy, .5):.1f} ms, p95 "
          f"{p(busy, .95):.1f} ms")


def _latency(daemon: Daemon) -> float:
    started = time.perf_counter()
    daemon.send("signo@brondby.dk", ["hm@hotmail.dk"], SMALL)
    return time.perf_counter() - started


def _cpu_seconds(daemon: Daemon) -> float:
    """User + system CPU time of the daemon process so far (Linux /proc)."""
    assert daemon.proc is not None
    fields = Path(f"/proc/{daemon.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed_round(name: str, daemon: Daemon, body: bytes, messages: int,
                 results: dict[str, tuple[float, float]]) -> None:
    before = _cpu_seconds(daemon)
    rate = _round(daemon, body, messages)
    results[name] = (rate, (_cpu_seconds(daemon) - before) / messages * 1000)


def _round(daemon: Daemon, body: bytes, messages: int) -> float:
    before = len(daemon.outbox())
    per_connection = messages // 4

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", daemon.config.smtp_port, timeout=60) as client:
            for _ in range(per_connection):
                client.sendmail("signo@brondby.dk", ["hm@hotmail.dk"], body)

    started = time.perf_counter()
    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    daemon.wait_outbox(before + per_connection * 4, timeout=300)
    daemon.wait_queue_empty(timeout=300)
    return per_connection * 4 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    recall()
    throughput()
    step_cost()
    responsiveness()
    relay_rate(args.messages, args.rounds, ("off", "off"))  # the noise floor of this machine
    relay_rate(args.messages, args.rounds)


if __name__ == "__main__":
    main()
