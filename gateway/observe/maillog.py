"""Logging: one line per mail event, keyed by queue id, as text (like Postfix) or JSON.

A mail administrator asked "where is my mail?" greps the queue id (or the Message-ID,
which the `received` line names) and reads the message's road: `received`, one
`classified` per recipient of tagged mail, `dlp` when the scan of an untagged mail found
a CPR number or could not read all of it (for mail from outside: `inbound`, and
`learnt`, `routed` where they happen), one `delivered`, `deferred` or `bounced` per
recipient and attempt, `dsn` when a notice was queued (naming the notice's own queue id),
`removed` when the message left the queue. Refusals before a message has a queue id are
`reject` events under `NOQUEUE`, as Postfix writes them.

The vocabulary lives here and nowhere else: modules call the event functions below, one
call per event, one line per call. The fields are the same in both formats: `text`
writes `QUEUEID: event key=value ...` (addresses in angle brackets, values with spaces
quoted), `json` one object per line with the same keys (`serve --log-format json`).
Message bodies and keys never reach these functions; free text that comes from outside
(replies, reasons, Message-IDs) has anything shaped like a CPR number masked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
from datetime import datetime
from typing import IO, Literal

from gateway.observe import pid
from gateway.policy.dlp.cpr import mask_possible

LogFormat = Literal["text", "json"]
Outcome = Literal["delivered", "deferred", "bounced"]
NOQUEUE = "NOQUEUE"

mail = logging.getLogger("gateway.mail")

_ADDRESS_KEYS = frozenset({"from", "to"})
_FREE_TEXT_KEYS = frozenset({"reason", "reply", "message_id", "helo", "found", "incomplete"})
_CPR_SHAPED = re.compile(r"\d{6}[- ]?\d{4}")
CPR_MASK = "XXXXXX-XXXX"
MAX_TEXT = 1000  # characters of one free-text value (a Message-ID may be 998 bytes long)


class Event:
    """One mail event: what happened to which queued message, and its fields.

    Used as the log record's message, so a plain `logging` handler (pytest's caplog, a
    QueueHandler) still sees the text line; the formatters below read the fields.
    """

    __slots__ = ("event", "fields", "queue_id")

    def __init__(self, queue_id: str, event: str, fields: dict[str, object]) -> None:
        self.queue_id = queue_id
        self.event = event
        self.fields = fields

    def __str__(self) -> str:
        parts = [f"{self.queue_id}: {self.event}"]
        for key, value in self.fields.items():
            parts.append(f"{key}={_text_value(key, value)}")
        return " ".join(parts)

    def as_json(self) -> dict[str, object]:
        return {"event": self.event, "queue_id": self.queue_id, **self.fields}


def _text_value(key: str, value: object) -> str:
    if key in _ADDRESS_KEYS:
        value = f"<{value}>"
    elif isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    # Quoted (JSON string rules) when empty, spaced, or holding what would break the line.
    if (not text or " " in text or '"' in text or "=" in text or "\\" in text
            or not text.isprintable()):
        return json.dumps(text, ensure_ascii=False)
    return text


def _mask(text: str) -> str:
    """Free text with every CPR-shaped number that is a valid CPR number masked."""
    if not _CPR_SHAPED.search(text):
        return text  # the common case: no ten-digit run at all
    return mask_possible(text, CPR_MASK)


def _emit(queue_id: str, event: str, fields: dict[str, object],
          level: int = logging.INFO) -> None:
    if not mail.isEnabledFor(level):
        return
    kept: dict[str, object] = {}
    for key, value in fields.items():
        if (value is None or value == "") and key not in _ADDRESS_KEYS:
            continue  # absent, except an address: the null sender is from=<>
        if key in _FREE_TEXT_KEYS:
            value = _mask(str(value)[:MAX_TEXT])
        kept[key] = value
    line = Event(queue_id, event, kept)
    # makeRecord + handle: what Logger.log does, less finding the caller's frame, which no
    # format here shows and which costs more than formatting the line.
    mail.handle(mail.makeRecord(mail.name, level, "", 0, line, (), None,
                                extra={"mail_event": line}))


# The events, in the order a message meets them.

def received(queue_id: str, *, client: str, helo: str, sender: str, size: int,
             message_id: str, tagged: bool, department: str, nrcpt: int) -> None:
    """The edge accepted a message and it is on disk (the 250 went out)."""
    _emit(queue_id, "received", {"client": client, "helo": helo, "from": sender,
                                 "size": size, "message_id": message_id, "tagged": tagged,
                                 "department": department, "nrcpt": nrcpt})


def reject(*, client: str, sender: str, recipient: str, reply: str) -> None:
    """The edge refused a command before the message had a queue id."""
    _emit(NOQUEUE, "reject", {"client": client, "from": sender, "to": recipient,
                              "reply": reply})


def classified(queue_id: str, recipient: str, cls: str, reason: str) -> None:
    """A recipient of tagged mail got its class for this attempt."""
    _emit(queue_id, "classified", {"to": recipient, "class": cls, "reason": reason})


def outcome(event: Outcome, queue_id: str, recipient: str, *, cls: str, status: str,
            delay: float, relay: str = "", tls_version: str = "", tls_cipher: str = "",
            reply: str = "", reason: str = "") -> None:
    """What one attempt did for one recipient.

    `reply` is the next hop's answer (with `relay`, and the TLS the session used);
    `reason` is the gateway's own when no next hop was asked.
    """
    _emit(queue_id, event, {"to": recipient, "class": cls, "relay": relay,
                            "tls_version": tls_version, "tls_cipher": tls_cipher,
                            "status": status, "reply": reply, "reason": reason,
                            "delay": round(delay, 2)})


def dlp(queue_id: str, *, mode: str, findings: int, found: str, incomplete: str) -> None:
    """The DLP scan of an untagged message found CPR numbers (where, never a number) or
    could not read all of it (what, and why)."""
    _emit(queue_id, "dlp", {"mode": mode, "findings": findings, "found": found,
                            "incomplete": incomplete}, level=logging.WARNING)


def inbound(queue_id: str, *, result: str, signature: str, department: str = "",
            signer: str = "", reason: str = "") -> None:
    """Mail from outside was opened: decrypted or not (`reason`), and its signature."""
    _emit(queue_id, "inbound", {"result": result, "signature": signature,
                                "department": department, "signer": signer, "reason": reason},
          logging.WARNING if result == "not_decrypted" else logging.INFO)


def learnt(queue_id: str, *, address: str, certificate: str, source: str) -> None:
    """A recipient certificate went into the learnt store (a valid signature, an import)."""
    _emit(queue_id, "learnt", {"address": address, "certificate": certificate,
                               "source": source})


def routed(queue_id: str, recipient: str, *, targets: list[str]) -> None:
    """A decrypted reply to a department mailbox goes to whoever wrote the mail it answers."""
    _emit(queue_id, "routed", {"to": recipient, "targets": ",".join(targets)})


def dsn(queue_id: str, *, dsn_id: str, action: str, recipient: str) -> None:
    """A delivery status notification about `queue_id` was queued as `dsn_id`."""
    _emit(queue_id, "dsn", {"dsn_id": dsn_id, "action": action, "to": recipient})


def removed(queue_id: str) -> None:
    """Every recipient is final: the message left the queue."""
    _emit(queue_id, "removed", {})


# Formatters and setup.

_second: tuple[int, str, str] = (-1, "", "")  # the last second formatted, and its offset


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 local time with milliseconds and the UTC offset; one strftime a second."""
    global _second
    whole = int(record.created)
    if whole != _second[0]:
        moment = datetime.fromtimestamp(whole).astimezone()
        offset = moment.isoformat()[19:]  # "+02:00"
        _second = (whole, moment.strftime("%Y-%m-%dT%H:%M:%S"), offset)
    return f"{_second[1]}.{int(record.msecs):03d}{_second[2]}"


class TextFormatter(logging.Formatter):
    """`2025-06-02T10:15:00.123+02:00 INFO gateway.mail[4711]: 0A1B2C: delivered to=<...>`.

    In a cluster the node's name follows the time, as syslog puts the host there.
    """

    def __init__(self, node: str = "") -> None:
        super().__init__()
        self.node = f" {node}" if node else ""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{_timestamp(record)}{self.node} {record.levelname} "
                f"{record.name}[{record.process or pid.current()}]: {record.getMessage()}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, (node,) level, logger, pid, then the event's fields."""

    def __init__(self, node: str = "") -> None:
        super().__init__()
        self.node = {"node": node} if node else {}

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {"time": _timestamp(record), **self.node,
                                   "level": record.levelname.lower(),
                                   "logger": record.name,
                                   "pid": record.process or pid.current()}
        event = getattr(record, "mail_event", None)
        if isinstance(event, Event):
            data.update(event.as_json())
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


PIPE_BUF = 4096  # bytes a pipe writes whole though other processes write to it too


class TurnHandler(logging.StreamHandler):
    """A StreamHandler that writes the lines of one event-loop turn together.

    A message makes four lines, which were four write calls on the worker's loop. Once
    the daemon's loop is named (`per_turn`), what its thread logs waits for the end of
    the turn (`call_soon`) and goes out in as few writes as fit PIPE_BUF, so the lines of
    several workers on one pipe never mix. Order is kept: a line from another thread, or
    while the loop is not running, writes what waits first, then itself. `flush` writes
    what waits; logging calls it at exit, and `per_turn(None)` when the loop stops, so a
    line is lost only with a process killed (SIGKILL) in the turn that logged it.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._size = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0  # the loop's thread (get_running_loop() costs a getpid in 3.11)
        self._scheduled = False

    def per_turn(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Batch the lines that `loop`'s thread logs (None: write each line at once)."""
        with self.lock:
            self._loop, self._thread = loop, threading.get_ident() if loop else 0
            self._scheduled = False
            self._write()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # handle() holds it already; another thread's flush() may not
            self._lines.append(line)
            self._size += len(line) if line.isascii() else len(line.encode())
            loop = self._loop
            if (loop is None or threading.get_ident() != self._thread
                    or self._size >= PIPE_BUF or not loop.is_running()):
                self._write()
            elif not self._scheduled:
                self._scheduled = True
                loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:
            self._scheduled = False
            self._write()

    def _write(self) -> None:
        """Write what waits, each write at most PIPE_BUF bytes (a longer line alone)."""
        if not self._lines:
            return
        lines, self._lines, self._size = self._lines, [], 0
        chunk: list[str] = []
        size = 0
        try:
            for line in lines:
                length = len(line) if line.isascii() else len(line.encode())
                if chunk and size + length > PIPE_BUF:
                    self.stream.write("".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += length
            self.stream.write("".join(chunk))
            if hasattr(self.stream, "flush"):
                self.stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "the mail log could not be written"}))


def per_turn(loop: asyncio.AbstractEventLoop | None) -> None:
    """Write what `loop`'s thread logs once per loop turn (None: at once, as before)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, TurnHandler):
            handler.per_turn(loop)


def setup(fmt: LogFormat = "text", stream: IO[str] | None = None,
          level: int = logging.INFO, node: str = "") -> None:
    """Send every log record to `stream` (stderr) in one format, replacing other handlers.

    `node` (`cluster.node`, given when several nodes share a database) goes on every line.
    The formats name no thread or process name, and the pid comes from `observe.pid`:
    records are made without looking those up (the logging HOWTO's "Optimization").
    """
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = TurnHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else TextFormatter(node))
    root = logging.getLogger()
    for old in root.handlers[:]:
        old.flush()
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
