"""DLP benchmark: recall on the labelled corpus, scan throughput (MB/s) for text, PDF and
DOCX, and what the scan costs the relay rate of untagged mail without a CPR number
(dlp.cpr = "off" against "secure").

Run from the repository root:  .venv/bin/python -m bench.dlp [--messages 400]

Not a test: it prints figures. The relay comparison runs two real daemons (the console
script, on loopback, delivering to a `file:` outbox) side by side in the same run,
alternating rounds so that both see the same machine load.
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import tempfile
import threading
import time
from pathlib import Path

from gateway.policy.dlp.scan import scan_message
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
        print(f"  {kind:5} {mb:6.2f} MB  median {statistics.median(times) * 1000:7.1f} ms"
              f"  {mb / best:6.1f} MB/s (best of {rounds})")


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


def relay_rate(messages: int, rounds: int) -> None:
    body = documents.mail("Kære Henrik\n\nTak for din henvendelse. Ja, vi sørger for kørsel til "
                          "frisøren den 25. januar kl. 10.30 og til bankospil senere samme dag."
                          "\n\nVenlig hilsen\nÆldre og Omsorg\n", subject="Kørsel til frisøren")
    ca = CA("bench CA")
    with tempfile.TemporaryDirectory() as tmp:
        daemons = {}
        for mode in ("off", "secure"):
            root = Path(tmp) / mode
            root.mkdir()
            config = GatewayConfig(root, ca, extra=f'[dlp]\ncpr = "{mode}"\n',
                                   max_message_size=10_000_000)
            daemons[mode] = Daemon(config).start()
        try:
            rates: dict[str, list[float]] = {"off": [], "secure": []}
            for _ in range(rounds):
                for mode, daemon in daemons.items():
                    rates[mode].append(_round(daemon, body, messages))
            print(f"relay rate of untagged mail without a CPR number ({messages} messages, "
                  f"4 SMTP connections, {rounds} alternating rounds; accepted and delivered "
                  "to the file outbox)")
            for mode, values in rates.items():
                print(f"  dlp.cpr = {mode:6}  median {statistics.median(values):7.1f} msg/s"
                      f"  rounds {', '.join(f'{v:.1f}' for v in values)}")
            change = statistics.median(rates["secure"]) / statistics.median(rates["off"]) - 1
            print(f"  secure vs off: {change * 100:+.1f} %")
        finally:
            for daemon in daemons.values():
                daemon.stop()


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
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    recall()
    throughput()
    relay_rate(args.messages, args.rounds)


if __name__ == "__main__":
    main()
