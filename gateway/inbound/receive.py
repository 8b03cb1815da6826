"""What happens to mail from outside before it reaches an internal mailbox (CONTRACT "Inbound").

1. Header fields an outsider must not set are removed: the tag header (mail from outside
   is never tagged) and X-Send-Sikkert-Received (only this gateway writes it); and Bcc,
   which no copy carries.
2. An S/MIME enveloped body with a RecipientInfo for a department certificate is
   decrypted with that department's key (`cms`); the inner entity's content fields and
   body replace the outer ones, every other outer header field stays (RFC 8551 3.3).
3. A signature, clear-signed or opaque, outside or inside the encryption, is checked
   (`signature`) and its certificate judged for the From address by the directory's own
   validator; the signed entity is left exactly as it came, for the mail client.
4. The certificate of a valid signature is learnt (gateway.directory.learnt).
5. The outcome is written into X-Send-Sikkert-Received as the contract spells it.

The decrypted content exists only in memory on its way to `routes.internal`: the spool
keeps the message as it arrived. The CPU work (decrypting, hashing, signature
arithmetic) runs in a worker thread, path validation in the validator's.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses

from cryptography import x509

from gateway import rawmail
from gateway.directory import DirectoryUnavailable
from gateway.directory.learnt import SIGNATURE, Learner
from gateway.directory.validate import RecipientValidator, named_addresses
from gateway.inbound import cms
from gateway.inbound.signature import Signature, find_signature
from gateway.observe import maillog
from gateway.policy.address import InvalidAddress, normalise
from gateway.transform.mime import CRLF, canonical, header_fields, split_entity
from gateway.transform.smime import read_cms

log = logging.getLogger(__name__)

RECEIVED_HEADER = "X-Send-Sikkert-Received"
_PRINTABLE = re.compile(r"[ -~]{0,900}")
DECRYPTED, NOT_DECRYPTED, PLAIN = "decrypted", "not_decrypted", "plain"  # metric labels
VALID, INVALID, NONE = "valid", "invalid", "none"
DECRYPTION_OFF = "decryption-off"  # inbound.decrypt = false

_MSG_ID = re.compile(r"<[^<>\s]+>")


@dataclass(frozen=True)
class Inbound:
    """The message to deliver and what the gateway found out about it."""

    data: bytes
    result: str  # DECRYPTED, NOT_DECRYPTED or PLAIN
    signature: str = NONE  # VALID, INVALID or NONE
    department: str = ""  # the department whose key decrypted it
    signer: str = ""  # the address the signature is valid (or claimed) for
    reason: str = ""  # why it was not decrypted, or why the signature does not count
    replied_to: tuple[str, ...] = ()  # Message-IDs it answers, the closest first


@dataclass(frozen=True)
class _Opened:
    data: bytes
    result: str
    department: str = ""
    reason: str = ""
    detail: str = ""
    signature: Signature | None = None


class Receiver:
    """Turns a message from outside into the message an internal mailbox receives."""

    def __init__(self, holders: Sequence[cms.KeyHolder], validator: RecipientValidator | None,
                 learner: Learner | None, *, decrypt: bool, tag_header: str) -> None:
        self.holders = tuple(holders)
        self.validator = validator
        self.learner = learner
        self.decrypt = decrypt
        # Bcc too: no copy on any route carries it (gateway.transform.headers).
        self.dropped = {tag_header.lower(), RECEIVED_HEADER.lower(), "bcc", "resent-bcc"}

    async def receive(self, data: bytes, queue_id: str = "") -> Inbound:
        """Decrypt, verify, learn and label one message (see the module docstring)."""
        opened = await asyncio.to_thread(self._open, data)
        fields, _ = rawmail.split(opened.data)
        senders = _addresses(rawmail.get(fields, "From") or "")
        state, signer, why = await self._judge(opened.signature, senders)
        maillog.inbound(queue_id, result=opened.result, signature=state,
                        department=opened.department, signer=signer,
                        reason=f"{opened.reason}: {opened.detail}" if opened.reason else why)
        if state == VALID:
            await self._learn(opened.signature, rawmail.get(fields, "Message-ID") or "",
                              signer, queue_id)
        replied_to = _message_ids(fields)
        if opened.result == DECRYPTED:
            value = f"decrypted={opened.department}; signature={state}"
            value += f"; signer={signer}" if signer else ""
            return Inbound(_prepend(opened.data, value), DECRYPTED, state, opened.department,
                           signer, why, replied_to)
        if opened.result == NOT_DECRYPTED:
            return Inbound(_prepend(opened.data, f"not-decrypted; reason={opened.reason}"),
                           NOT_DECRYPTED, NONE, reason=opened.reason, replied_to=replied_to)
        return Inbound(opened.data, PLAIN, state, signer=signer, reason=why,
                       replied_to=replied_to)

    def _open(self, data: bytes) -> _Opened:
        """Strip, decrypt and find the signature: the CPU part, run in a worker thread."""
        fields, rest = rawmail.split(data)
        fields = [f for f in fields if f.name.lower() not in self.dropped]
        message = rawmail.join(fields, rest)
        info = read_cms(message)
        if info is None or info["content_type"].native not in (cms.ENVELOPED,
                                                                cms.AUTH_ENVELOPED):
            return _Opened(message, PLAIN, signature=find_signature(message))
        if not self.decrypt:
            return _Opened(message, NOT_DECRYPTED, reason=DECRYPTION_OFF,
                           detail="inbound.decrypt is off")
        try:
            opened = cms.decrypt(info, self.holders)
        except cms.NotDecrypted as e:
            return _Opened(message, NOT_DECRYPTED, reason=e.reason, detail=e.detail)
        inner = canonical(opened.content)
        return _Opened(_with_body(fields, inner), DECRYPTED, opened.holder.name,
                       signature=find_signature(inner))

    async def _judge(self, signature: Signature | None,
                     senders: list[str]) -> tuple[str, str, str]:
        """(VALID/INVALID/NONE, the signer's address, why it is not valid)."""
        if signature is None:
            return NONE, "", ""
        claimed = _claimed(signature.signer)
        if signature.problem is not None:
            return INVALID, claimed, signature.problem
        if self.validator is None:
            return INVALID, claimed, "no trust anchors to judge the signer's certificate by"
        assert signature.signer is not None
        if not senders:
            return INVALID, claimed, "the message has no From address to compare"
        problems = []
        for sender in senders:
            problem = await self.validator.signer_problem(sender, signature.signer,
                                                          signature.certificates)
            if problem is None:
                return VALID, sender, ""
            problems.append(f"{sender}: {problem}")
        return INVALID, claimed, "; ".join(problems)

    async def _learn(self, signature: Signature | None, message_id: str, signer: str,
                     queue_id: str) -> None:
        if self.learner is None or signature is None or signature.signer is None:
            return
        note = f"a signed message from {signer}" + (f", {message_id}" if message_id else "")
        offered = [signature.signer] + ([signature.preferred] if signature.preferred else [])
        for der in offered:
            try:
                learnt = await self.learner.learn(der, signature.certificates, SIGNATURE, note)
            except DirectoryUnavailable as e:
                log.error("cannot store the certificate of %s: %s", signer, e)
                return
            for address in learnt.added:
                maillog.learnt(queue_id, address=address, certificate=learnt.described,
                               source=SIGNATURE)
            if not learnt.ok:
                log.info("not learnt from %s: %s: %s", signer, learnt.subject, learnt.refused)


def _with_body(fields: list[rawmail.Field], inner: bytes) -> bytes:
    """The outer header fields with the inner entity's content fields and body."""
    head, body = split_entity(inner)
    fields_in = header_fields(head)
    if b"".join(raw for _, raw in fields_in) != head:  # no header block: all of it is text
        fields_in, body = [], inner
    content = [raw for name, raw in fields_in if name.lower().startswith("content-")]
    outer = [f.raw for f in fields
             if not f.name.lower().startswith("content-") and f.name.lower() != "mime-version"]
    return b"".join(outer) + b"MIME-Version: 1.0" + CRLF + b"".join(content) + CRLF + body


def _prepend(data: bytes, value: str) -> bytes:
    if _PRINTABLE.fullmatch(value):  # the contract's form, on one line
        return f"{RECEIVED_HEADER}: {value}".encode("ascii") + CRLF + data
    # Anything else (a UTF-8 signer address) is written as every field of ours is
    # (rawmail): encoded, so nothing in `value` can end the field early.
    return rawmail.make_field(RECEIVED_HEADER, value).raw + data


def _addresses(value: str) -> list[str]:
    """The valid mailboxes of a From field, normalised."""
    found = []
    for _, address in getaddresses([value]):
        try:
            found.append(normalise(address))
        except InvalidAddress:
            continue
    return found


def _claimed(der: bytes | None) -> str:
    """The address a signer's certificate names, if it is a plain one (it goes in a header)."""
    if der is None:
        return ""
    try:
        names = sorted(named_addresses(x509.load_der_x509_certificate(der)))
        return normalise(names[0]) if names else ""
    except (ValueError, InvalidAddress):
        return ""


def _message_ids(fields: list[rawmail.Field]) -> tuple[str, ...]:
    """In-Reply-To's Message-IDs, then References' from the newest back (RFC 5322 3.6.4)."""
    ids = _MSG_ID.findall(rawmail.get(fields, "In-Reply-To") or "")
    ids += reversed(_MSG_ID.findall(rawmail.get(fields, "References") or ""))
    return tuple(dict.fromkeys(ids))

