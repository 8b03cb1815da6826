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
    """The message as it may leave the gateway: `data` itself when nothing changes.

    Only the header block is parsed, and a message without tags or Bcc is not copied
    (a 25 MB body stays one 25 MB object).
    """
    kept = []
    changed = False
    for field in rawmail.head_fields(data):
        if is_tag_header(field, tags) or field.name.lower() in _HIDDEN:
            changed = True
            continue
        if field.name.lower() == "subject":
            cleaned = without_keyword(field, tags)
            changed |= cleaned is not field
            field = cleaned
        kept.append(field)
    if not changed:
        return data
    _, rest = rawmail.split(data)
    return rawmail.join(kept, rest)
