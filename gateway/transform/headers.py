"""The header block every outgoing copy gets, on every route (CONTRACT "Tagging", "S/MIME
output"): without the tag headers, without the subject tag, and without Bcc.

Bcc and Resent-Bcc (RFC 5322 3.6.3, 3.6.6) name hidden recipients: no copy carries them,
whatever its route (RFC 5321 7.2 lets the MTA remove them; Postfix does the same).
A Subject that loses its tag is written anew by `rawmail.make_field`, RFC 2047-encoded,
so decoded text (a CR LF in an encoded word) never becomes a header of its own. The
body keeps every byte.
"""

from __future__ import annotations

from gateway import rawmail
from gateway.config import TagsConfig
from gateway.policy.tags import is_tag_header, without_keyword

_HIDDEN = {"bcc", "resent-bcc"}


def outgoing(data: bytes, tags: TagsConfig) -> bytes:
    """The message as it may leave the gateway."""
    fields, rest = rawmail.split(data)
    kept = []
    for field in fields:
        if is_tag_header(field, tags) or field.name.lower() in _HIDDEN:
            continue
        if field.name.lower() == "subject":
            field = without_keyword(field, tags)
        kept.append(field)
    return rawmail.join(kept, rest)
