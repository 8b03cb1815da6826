"""Which mail is tagged for secure sending, and for which department (CONTRACT "Tagging",
"Tags fail closed").

The tag is the header `tags.header` (yes/1/true, a department id or mailbox) or the
subject pattern `tags.subject` after RFC 2047 decoding, wherever it stands in the subject
(also after reply prefixes such as SV: or Re:). Whatever could mean "secure" counts as
a tag: more than one tag header, more than one Subject, a tag value that is neither a
"no" nor understood, an encoded word that cannot be decoded. Such mail goes securely or
bounces; it is never sent in the clear.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway import rawmail
from gateway.config import TagsConfig
from gateway.policy.departments import Department

YES = {"yes", "1", "true"}
NO = {"no", "0", "false"}


@dataclass(frozen=True)
class Tagging:
    """What the tags in one message say."""

    tagged: bool
    header_values: tuple[str, ...]  # every tag header's decoded value, in order
    keywords: tuple[str, ...]  # every subject keyword found, in order
    subject: str  # the decoded subject (every Subject field, one per line)
    doubt: str = ""  # why the message counts as tagged without a clear tag, for logs

    @property
    def header_value(self) -> str | None:
        return self.header_values[0] if self.header_values else None

    @property
    def keyword(self) -> str | None:
        return self.keywords[0] if self.keywords else None


def read_tags(fields: list[rawmail.Field], config: TagsConfig) -> Tagging:
    """Find the tag headers and subject keywords; take any doubt as a tag.

    A subject keyword that names no department still counts as a tag: the sender asked for
    secure sending, so the mail is bounced rather than sent in the clear.
    """
    doubts = []
    values = []
    for field in rawmail.all_named(fields, config.header):
        value, readable = field.decoded
        values.append(value)
        if not readable:
            doubts.append("a tag header that cannot be decoded")
    if len(values) > 1:
        doubts.append("more than one tag header")
    subjects = []
    keywords = []
    for field in rawmail.all_named(fields, "Subject"):
        subject, readable = field.decoded
        subjects.append(subject)
        keywords += [m["keyword"] for m in config.subject.finditer(subject)]
        if not readable:
            doubts.append("a subject that cannot be decoded")
    if len(subjects) > 1:
        doubts.append("more than one Subject")
    header_tagged = any(v.strip().lower() not in NO for v in values)
    return Tagging(header_tagged or bool(keywords) or bool(doubts), tuple(values),
                   tuple(keywords), "\n".join(subjects), "; ".join(doubts))


def resolve_department(tagging: Tagging, sender: str,
                       departments: Sequence[Department]) -> Department | None:
    """The department from the header, else the subject keyword, else `default_for`.

    Tags that name different departments name none: the mail is bounced, not guessed.
    """
    by_name = {d.id.lower(): d for d in departments} | {d.mailbox: d for d in departments}
    named = {v.strip().lower() for v in tagging.header_values} - YES - NO
    if named:
        return by_name.get(named.pop()) if len(named) == 1 else None
    keywords = {k.lower() for k in tagging.keywords}
    if keywords:
        return by_name.get(keywords.pop()) if len(keywords) == 1 else None
    return next((d for d in departments if d.is_default_for(sender)), None)


def is_tag_header(field: rawmail.Field, config: TagsConfig) -> bool:
    return field.name.lower() == config.header.lower()


def without_keyword(field: rawmail.Field, config: TagsConfig) -> rawmail.Field:
    """A Subject field with the subject tag taken out, newly encoded; else as it was."""
    subject = field.value
    if not config.subject.search(subject):
        return field
    cleaned = subject
    while config.subject.search(cleaned):  # "x%aeldreomsorg%%%" leaves "x%%": a tag again
        shorter = config.subject.sub("", cleaned)
        if len(shorter) >= len(cleaned):  # a pattern that matches the empty string
            break
        cleaned = shorter
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned).strip()
    return rawmail.make_field(field.name, cleaned)
