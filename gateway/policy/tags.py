"""Which mail is tagged for secure sending, and for which department (CONTRACT "Tagging").

The tag is the header `tags.header` (yes/1/true, a department id or mailbox) or the
subject pattern `tags.subject` after RFC 2047 decoding, wherever it stands in the subject
(also after reply prefixes such as SV: or Re:).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway import rawmail
from gateway.config import TagsConfig
from gateway.policy.departments import Department

YES = {"yes", "1", "true"}
NO = {"no", "0", "false", ""}


@dataclass(frozen=True)
class Tagging:
    """What the tags in one message say."""

    tagged: bool
    header_value: str | None  # the tag header's value, when present
    keyword: str | None  # the subject keyword, when present
    subject: str  # the decoded subject


def read_tags(fields: list[rawmail.Field], config: TagsConfig) -> Tagging:
    """Find the tag header and subject keyword.

    A subject keyword that names no department still counts as a tag: the sender asked for
    secure sending, so the mail is bounced rather than sent in the clear.
    """
    header = rawmail.get(fields, config.header)
    subject = rawmail.get(fields, "Subject") or ""
    m = config.subject.search(subject)
    keyword = m["keyword"] if m else None
    header_tagged = header is not None and header.strip().lower() not in NO
    return Tagging(header_tagged or keyword is not None, header, keyword, subject)


def resolve_department(tagging: Tagging, sender: str,
                       departments: Sequence[Department]) -> Department | None:
    """The department from the header, else the subject keyword, else `default_for`."""
    by_name = {d.id.lower(): d for d in departments} | {d.mailbox: d for d in departments}
    value = (tagging.header_value or "").strip().lower()
    if value and value not in YES and value not in NO:
        return by_name.get(value)
    if tagging.keyword is not None:
        return by_name.get(tagging.keyword.lower())
    return next((d for d in departments if d.is_default_for(sender)), None)


def strip_tags(data: bytes, config: TagsConfig) -> bytes:
    """The message without the tag header and without the subject tag; body untouched."""
    fields, rest = rawmail.split(data)
    header = config.header.lower()
    kept = []
    for field in fields:
        name = field.name.lower()
        if name == header:
            continue
        if name == "subject":
            subject = field.value
            cleaned = _remove_keyword(subject, config.subject)
            if cleaned != subject:
                field = rawmail.make_field("Subject", cleaned)
        kept.append(field)
    return rawmail.join(kept, rest)


def _remove_keyword(subject: str, pattern: re.Pattern[str]) -> str:
    cleaned = pattern.sub("", subject)
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip()
