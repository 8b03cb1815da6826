"""Read the gateway's mail events back from its log, in either format, as a reader would.

Text lines are parsed the way an administrator's awk or a log shipper's grok pattern
would (`QUEUEID: event key=value ...`); JSON lines with `json.loads`. Both give the same
dictionaries, so a test can ask the same questions of either format.
"""

from __future__ import annotations

import json
import re

_TEXT_LINE = re.compile(r"^(?P<time>\S+) (?:(?P<node>\S+) )?(?P<level>[A-Z]+) "
                        r"(?P<logger>\S+)\[(?P<pid>\d+)\]: (?P<message>.*)$")
_EVENT = re.compile(r"^(?P<queue_id>[0-9A-Z]+): (?P<event>[a-z]+)(?P<fields>.*)$")
_FIELD = re.compile(r' (?P<key>[a-z_]+)=(?P<value>"(?:[^"\\]|\\.)*"|\S*)')
_ADDRESS = ("from", "to")


def parse_text_fields(text: str) -> dict[str, object]:
    """`key=value` pairs; quoted values are JSON strings, addresses lose their brackets."""
    fields: dict[str, object] = {}
    position = 0
    for m in _FIELD.finditer(text):
        assert m.start() == position, f"unparsable at {text[position:]!r}"
        position = m.end()
        value: object = m["value"]
        if m["value"].startswith('"'):
            value = json.loads(m["value"])
        if m["key"] in _ADDRESS:
            assert isinstance(value, str) and value.startswith("<") and value.endswith(">")
            value = value[1:-1]
        fields[m["key"]] = value
    assert position == len(text), f"unparsable at {text[position:]!r}"
    return fields


def records(log: str, fmt: str) -> list[dict[str, object]]:
    """Every line of the log as a dictionary; an AssertionError names a malformed line."""
    out = []
    for line in log.splitlines():
        if fmt == "json":
            out.append(json.loads(line))
            continue
        m = _TEXT_LINE.match(line)
        if m is None:
            assert line.startswith((" ", "Traceback", "\t")) or out, line  # a traceback
            continue
        record: dict[str, object] = {k: m[k] for k in ("time", "level", "logger", "pid")}
        record["level"] = m["level"].lower()
        record["pid"] = int(m["pid"])
        if m["node"]:
            record["node"] = m["node"]
        event = _EVENT.match(m["message"]) if m["logger"] == "gateway.mail" else None
        if event is None:
            record["message"] = m["message"]
        else:
            record.update(queue_id=event["queue_id"], event=event["event"],
                          **parse_text_fields(event["fields"]))
        out.append(record)
    return out


def events(log: str, fmt: str, queue_id: str | None = None) -> list[dict[str, object]]:
    """The mail events, optionally of one queue id, with the numbers as numbers."""
    found = []
    for r in records(log, fmt):
        if "event" not in r or (queue_id is not None and r["queue_id"] != queue_id):
            continue
        if fmt == "text":  # text has no types: read them as JSON would have them
            for key in ("size", "nrcpt"):
                if key in r:
                    r[key] = int(str(r[key]))
            if "delay" in r:
                r["delay"] = float(str(r["delay"]))
            if "tagged" in r:
                r["tagged"] = r["tagged"] == "true"
        found.append(r)
    return found
