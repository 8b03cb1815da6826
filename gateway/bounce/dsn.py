"""Build a delivery status notification from recipient outcomes: bytes ready to spool.

RFC 3464 (multipart/report of RFC 6522 with report-type=delivery-status: a human part,
the message/delivery-status fields, the original headers as text/rfc822-headers),
RFC 3461 (ORCPT and ENVID come back xtext-decoded; 6.2: "delivered" and "relayed" for
NOTIFY=SUCCESS) and RFC 3834 (Auto-Submitted). The human part is Danish first, then
English, and says per failed or delayed recipient why and what the sender can do
instead; a success is told plainly, with nothing to do. When the DLP scan stopped an
untagged mail, it says where a CPR number was found (subject, body, the attachment's
file name), never the number. The original body is never
included, whatever RET asked for: it may hold the very data that could not be sent
safely. Nor is the original subject. A delayed recipient's block says until when we
keep trying (Will-Retry-Until, RFC 3464 2.3.9).

RFC 6533: when an address in the report is a UTF-8 mailbox, or the original header
section is UTF-8, the report parts are message/global-delivery-status (addresses of
type `utf-8`) and message/global-headers, sent in 8bit, and the DSN needs SMTPUTF8.
"""

from __future__ import annotations

import email.utils
import quopri
import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway import rawmail
from gateway.policy.dlp.cpr import contains_cpr, mask_text

Kind = Literal["unsafe", "no_department", "sender_not_allowed", "cpr_in_subject", "rejected",
               "expired", "deleted", "delayed", "protect_failed", "delivered", "relayed",
               "cpr_found", "cpr_blocked", "cpr_no_department", "not_internal",
               "structure", "smtputf8", "conversion"]
Action = Literal["failed", "delayed", "delivered", "relayed"]

_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")
_DIAGNOSTIC_TYPE = re.compile(r"[A-Za-z0-9-]+;")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Notice:
    """One recipient to report on: what happened (action, status) and why.

    `kind` is "delivered" or "relayed" for those actions (status 2.0.0), and the reason
    for a failure ("delayed" for a delay).
    """

    address: str
    orcpt: str  # RFC 3461 ORCPT as received ("rfc822;addr"), or ""
    action: Action
    status: str  # RFC 3463, e.g. "5.7.1"
    diagnostic: str  # "smtp; 550 5.1.1 no such user" or "x-send-sikkert; ..." or ""
    kind: Kind
    # For the cpr_* kinds: (where, attachment name) of each place a CPR number was found.
    found_in: tuple[tuple[str, str], ...] = ()
    will_retry_until: float | None = None  # for "delayed": when we give up (epoch seconds)


@dataclass(frozen=True)
class _Text:
    """What the human part says about one kind of outcome, in one language.

    For a failure or a delay: why, and what the sender can do. For a success: what it
    means, and nothing to do.
    """

    why: str
    todo: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Language:
    intro: str  # {org} and {host} filled in
    failed: str
    delayed: str
    delivered: str
    relayed: str
    why: str
    todo: str
    detail: str
    footer: str  # {queue_id} and {arrival} filled in
    kinds: dict[str, _Text]
    places: dict[str, str]  # where a CPR number was found: subject, body, attachment ({name})
    unnamed: str  # an attachment without a file name
    and_: str


_DANISH = _Language(
    intro="Dette er en automatisk besked fra {org_gen} sikre mail-gateway ({host}).",
    failed="Din mail er ikke afleveret til:",
    delayed="Din mail er endnu ikke afleveret til:",
    delivered="Din mail er afleveret til:",
    relayed="Din mail er sendt videre til:",
    why="Hvorfor",
    todo="Det kan du gøre",
    detail="årsag",
    footer="Mailens kø-id er {queue_id}. Den blev modtaget {arrival}.",
    kinds={
        "unsafe": _Text(
            "Der er ingen sikker måde at sende mailen til modtageren på. Adressen er ikke "
            "intern, modtagerens organisation er ikke med i tunnelmail (SEPO), og der er "
            "ikke fundet et gyldigt certifikat til kryptering. Mailen er derfor ikke sendt.",
            ("Bed modtageren om en sikker mailadresse.",
             "Send med Digital Post i stedet.",
             "Ring til modtageren.",
             "Fjern de følsomme personoplysninger, og send mailen som almindelig mail.",
             "Send modtageren {org_gen} vejledning i sikker mail.")),
        "no_department": _Text(
            "Mailen var markeret til sikker afsendelse, men der kunne ikke findes en "
            "afdeling at sende den fra.",
            ("Vælg din afdeling, og send mailen igen.",
             "Kontakt IT, hvis du ikke kan vælge en afdeling.")),
        "sender_not_allowed": _Text(
            "Du har ikke lov til at sende sikker mail via den valgte afdeling.",
            ("Vælg din egen afdeling, og send mailen igen.",
             "Kontakt IT, hvis du skal have adgang til afdelingen.")),
        "cpr_in_subject": _Text(
            "Emnefeltet indeholder noget, der ligner et CPR-nummer. Emnefeltet bliver "
            "aldrig krypteret, så mailen er ikke sendt.",
            ("Fjern CPR-nummeret fra emnefeltet, og send mailen igen.",)),
        "cpr_found": _Text(
            "Mailen var ikke markeret til sikker afsendelse, men der står et CPR-nummer i "
            "{where}. Derfor skulle den sendes sikkert, og der er ingen sikker måde at sende "
            "den til modtageren på: adressen er ikke intern, modtagerens organisation er ikke "
            "med i tunnelmail (SEPO), og der er ikke fundet et gyldigt certifikat til "
            "kryptering. Mailen er ikke sendt.",
            ("Send med Digital Post i stedet.",
             "Fjern CPR-nummeret, og send mailen igen.",
             "Bed modtageren om en sikker mailadresse, og brug Send Sikkert.",
             "Ring til modtageren.")),
        "cpr_blocked": _Text(
            "Mailen var ikke markeret til sikker afsendelse, men der står et CPR-nummer i "
            "{where}. En mail med et CPR-nummer må ikke sendes som almindelig mail, så den er "
            "ikke sendt til modtageren.",
            ("Brug Send Sikkert, og send mailen igen.",
             "Send med Digital Post i stedet.",
             "Fjern CPR-nummeret, og send mailen igen.")),
        "cpr_no_department": _Text(
            "Mailen var ikke markeret til sikker afsendelse, men der står et CPR-nummer i "
            "{where}. Derfor skulle den sendes sikkert via din afdeling, men der er ingen "
            "afdeling, du kan sende sikker mail fra. Mailen er ikke sendt.",
            ("Brug Send Sikkert, vælg din afdeling, og send mailen igen.",
             "Send med Digital Post i stedet.",
             "Fjern CPR-nummeret, og send mailen igen.",
             "Kontakt IT, hvis du ikke kan vælge en afdeling.")),
        "rejected": _Text(
            "Modtagerens mailserver afviste mailen.",
            ("Kontrollér adressen, og send mailen igen.",
             "Eller vælg en anden vej: Digital Post eller telefon.")),
        "expired": _Text(
            "Mailen kunne ikke afleveres i tide, selv om vi blev ved med at prøve.",
            ("Kontrollér adressen, og send mailen igen senere.",
             "Eller vælg en anden vej: Digital Post eller telefon.")),
        "deleted": _Text(
            "En administrator har slettet mailen fra køen, før den blev afleveret.",
            ("Send mailen igen, hvis den stadig skal frem, eller kontakt IT.",)),
        "delayed": _Text(
            "Mailen er endnu ikke afleveret. Vi prøver fortsat og giver besked, hvis det "
            "ikke lykkes.",
            ("Du behøver ikke gøre noget.",)),
        "protect_failed": _Text(
            "Mailen kunne ikke signeres og krypteres på grund af en teknisk fejl, så den "
            "er ikke sendt.",
            ("Kontakt IT.",
             "Send i mellemtiden med Digital Post, eller ring til modtageren.")),
        "not_internal": _Text(
            "Modtageren er ikke en af organisationens egne adresser, og post udefra "
            "afleveres kun til dem.",
            ("Kontrollér adressen, og send mailen igen.",)),
        "structure": _Text(
            "Mailen er bygget for indviklet op (for mange dele inden i hinanden, eller for "
            "mange dele i alt) til, at den kan signeres og krypteres. Den er derfor ikke "
            "sendt.",
            ("Send indholdet i en enklere mail, fx med færre vedhæftede filer.",
             "Kontakt IT, hvis mailen ikke kan gøres enklere.")),
        "smtputf8": _Text(
            "Modtagerens mailserver kan ikke modtage internationale mailadresser (med fx "
            "æ, ø eller å), og mailen eller en af adresserne kræver det.",
            ("Brug en adresse med kun bogstaverne a-z, hvis modtageren eller du har en.",
             "Eller vælg en anden vej: Digital Post eller telefon.")),
        "conversion": _Text(
            "Modtagerens mailserver kan kun modtage 7-bit mail, og mailen har en signeret "
            "del med 8-bit tekst. Den kan ikke omkodes uden at bryde signaturen, så den er "
            "ikke sendt.",
            ("Send mailen igen uden din egen digitale signatur.",
             "Eller vælg en anden vej: Digital Post eller telefon.")),
        "delivered": _Text(
            "Du bad om besked, når mailen var afleveret. Det er den nu."),
        "relayed": _Text(
            "Din mail er sendt videre til modtagerens mailserver, som ikke kan bekræfte den "
            "endelige aflevering. Det er ikke en fejl, men du får ikke en bekræftelse af "
            "selve afleveringen."),
    },
    places={"subject": "emnefeltet", "body": "selve mailen",
            "attachment": "den vedhæftede fil »{name}«"},
    unnamed="en vedhæftet fil uden navn",
    and_="og",
)

_ENGLISH = _Language(
    intro="This is an automatic message from the secure mail gateway of {org} ({host}).",
    failed="Your message was not delivered to:",
    delayed="Your message has not yet been delivered to:",
    delivered="Your message was delivered to:",
    relayed="Your message was passed on to:",
    why="Why",
    todo="What you can do",
    detail="reason",
    footer="The message's queue id is {queue_id}. It was received {arrival}.",
    kinds={
        "unsafe": _Text(
            "There is no secure way to send the message to the recipient. The address is "
            "not internal, the recipient's organisation is not part of tunnel mail (SEPO), "
            "and no valid encryption certificate was found. The message was therefore not "
            "sent.",
            ("Ask the recipient for a secure e-mail address.",
             "Send it by Digital Post instead.",
             "Telephone the recipient.",
             "Remove the sensitive personal data and send it as ordinary mail.",
             "Send the recipient the guide to secure mail from {org}.")),
        "no_department": _Text(
            "The message was marked for secure sending, but no department to send it from "
            "could be found.",
            ("Choose your department and send the message again.",
             "Contact IT if you cannot choose a department.")),
        "sender_not_allowed": _Text(
            "You are not allowed to send secure mail through the department chosen.",
            ("Choose your own department and send the message again.",
             "Contact IT if you need access to that department.")),
        "cpr_in_subject": _Text(
            "The subject holds what looks like a CPR number. The subject is never "
            "encrypted, so the message was not sent.",
            ("Remove the CPR number from the subject and send the message again.",)),
        "cpr_found": _Text(
            "The message was not marked for secure sending, but {where} holds a CPR number. "
            "It therefore had to go securely, and there is no secure way to send it to the "
            "recipient: the address is not internal, the recipient's organisation is not part "
            "of tunnel mail (SEPO), and no valid encryption certificate was found. The message "
            "was not sent.",
            ("Send it by Digital Post instead.",
             "Remove the CPR number and send the message again.",
             "Ask the recipient for a secure e-mail address and use Send Sikkert.",
             "Telephone the recipient.")),
        "cpr_blocked": _Text(
            "The message was not marked for secure sending, but {where} holds a CPR number. "
            "A message with a CPR number must not go as ordinary mail, so it was not sent to "
            "the recipient.",
            ("Use Send Sikkert and send the message again.",
             "Send it by Digital Post instead.",
             "Remove the CPR number and send the message again.")),
        "cpr_no_department": _Text(
            "The message was not marked for secure sending, but {where} holds a CPR number. "
            "It therefore had to go securely through your department, but there is no "
            "department you can send secure mail from. The message was not sent.",
            ("Use Send Sikkert, choose your department and send the message again.",
             "Send it by Digital Post instead.",
             "Remove the CPR number and send the message again.",
             "Contact IT if you cannot choose a department.")),
        "rejected": _Text(
            "The recipient's mail server refused the message.",
            ("Check the address and send the message again.",
             "Or choose another way: Digital Post or telephone.")),
        "expired": _Text(
            "The message could not be delivered in time, although we kept trying.",
            ("Check the address and send the message again later.",
             "Or choose another way: Digital Post or telephone.")),
        "deleted": _Text(
            "An administrator removed the message from the queue before it was delivered.",
            ("Send it again if it still needs to reach the recipient, or contact IT.",)),
        "delayed": _Text(
            "The message has not been delivered yet. We keep trying and will tell you if "
            "it fails.",
            ("Nothing is needed from you.",)),
        "protect_failed": _Text(
            "The message could not be signed and encrypted because of a technical fault, "
            "so it was not sent.",
            ("Contact IT.",
             "Meanwhile send it by Digital Post or telephone the recipient.")),
        "not_internal": _Text(
            "The recipient is not one of the organisation's own addresses, and mail from "
            "outside is delivered to those only.",
            ("Check the address and send the message again.",)),
        "structure": _Text(
            "The message is built in too complex a way (too many parts inside each other, "
            "or too many parts in all) to be signed and encrypted. It was therefore not "
            "sent.",
            ("Send the content in a simpler message, for example with fewer attachments.",
             "Contact IT if the message cannot be made simpler.")),
        "smtputf8": _Text(
            "The recipient's mail server cannot take international e-mail addresses (with "
            "letters such as æ, ø or å), which this message or one of its addresses needs.",
            ("Use an address with only the letters a-z, if the recipient or you have one.",
             "Or choose another way: Digital Post or telephone.")),
        "conversion": _Text(
            "The recipient's mail server takes only 7-bit mail, and the message has signed "
            "content with 8-bit text. It cannot be converted without breaking the "
            "signature, so it was not sent.",
            ("Send the message again without your own digital signature.",
             "Or choose another way: Digital Post or telephone.")),
        "delivered": _Text(
            "You asked to be told when the message was delivered. It now has been."),
        "relayed": _Text(
            "Your message was passed on to the recipient's mail server, which cannot "
            "confirm final delivery. This is not an error, but no confirmation of the final "
            "delivery will follow."),
    },
    places={"subject": "the subject", "body": "the text of the message",
            "attachment": "the attachment “{name}”"},
    unnamed="an attachment without a name",
    and_="and",
)

# Kinds whose diagnostic tells the sender something the general text does not.
_DETAILED = ("unsafe", "rejected", "expired", "delayed", "protect_failed", "cpr_found",
             "structure", "smtputf8", "conversion")
# The gravest news first: the order of the human part's sections and of the subject's choice.
_ACTIONS: tuple[Action, ...] = ("failed", "delayed", "relayed", "delivered")
_SUCCESS = ("delivered", "relayed")

_SUBJECTS = {
    "unsafe": "Ikke afleveret: sikker mail er ikke mulig / Undeliverable: secure mail not possible",
    "cpr_in_subject": "Ikke afleveret: CPR-nummer i emnefeltet / Undeliverable: CPR number in "
                      "the subject",
    "no_department": "Ikke afleveret: ingen afdeling / Undeliverable: no department",
    "sender_not_allowed": "Ikke afleveret: ikke tilladt for afdelingen / Undeliverable: not "
                          "allowed for the department",
    "protect_failed": "Ikke afleveret: kunne ikke krypteres / Undeliverable: could not be "
                      "encrypted",
    "cpr_found": "Ikke afleveret: CPR-nummer i mailen / Undeliverable: CPR number in the "
                 "message",
    "cpr_blocked": "Ikke afleveret: CPR-nummer i mailen / Undeliverable: CPR number in the "
                   "message",
    "cpr_no_department": "Ikke afleveret: CPR-nummer i mailen / Undeliverable: CPR number in "
                         "the message",
    "structure": "Ikke afleveret: mailen er for indviklet / Undeliverable: message too complex",
    "smtputf8": "Ikke afleveret: international adresse / Undeliverable: UTF-8 address not "
                "supported",
    "conversion": "Ikke afleveret: kan ikke omkodes / Undeliverable: cannot be converted",
    "delayed": "Forsinket: mailen er endnu ikke afleveret / Delayed: message not yet delivered",
    "relayed": "Sendt videre / Relayed",
    "delivered": "Afleveret / Delivered",
}
_SUBJECT_OTHER = "Ikke afleveret / Undeliverable: delivery failed"


def build_dsn(*, hostname: str, organisation: str, queue_id: str, arrival: float, sender: str,
              original_headers: bytes, notices: Sequence[Notice], envid: str = "") -> bytes:
    """The whole DSN message (CRLF line endings); the caller sends it from the null sender.

    With `is_global` true for its arguments, it must travel with SMTPUTF8.
    """
    if not notices:
        raise ValueError("a DSN needs at least one notice")
    utf8 = is_global(sender, original_headers, notices)
    boundary = "=_" + secrets.token_hex(16)  # "=_" cannot occur in quoted-printable text
    head = [
        "From: Mail Delivery System <MAILER-DAEMON@" + hostname + ">",
        "To: <" + _line(sender) + ">",
        "Subject: " + _subject(notices),
        "Date: " + email.utils.formatdate(localtime=True),
        "Message-ID: " + email.utils.make_msgid(domain=hostname),
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "",
        "This is a delivery status notification in MIME format (RFC 3464).",
    ]
    text = _human(organisation, hostname, queue_id, arrival, notices)
    parts = [
        ["Content-Type: text/plain; charset=utf-8",
         "Content-Transfer-Encoding: quoted-printable",
         "Content-Description: Notification", "",
         quopri.encodestring(text.encode("utf-8")).decode("ascii")],
        _part("message/global-delivery-status" if utf8 else "message/delivery-status",
              "Delivery report", _status_fields(hostname, queue_id, arrival, notices, envid)),
        _part("message/global-headers" if utf8 else "text/rfc822-headers",
              "Headers of the message", _headers_only(original_headers)),
    ]
    lines = head + [line for part in parts for line in [f"--{boundary}", *part]]
    lines += [f"--{boundary}--", ""]
    return _crlf("\n".join(lines)).encode("utf-8", "surrogateescape")


def is_global(sender: str, original_headers: bytes, notices: Sequence[Notice]) -> bool:
    """Whether the report needs RFC 6533's global types: a UTF-8 address in it, or an
    original header section in UTF-8 (8-bit headers in another charset stay text)."""
    addresses = [sender, *(n.address for n in notices), *(n.orcpt for n in notices)]
    if not all(a.isascii() for a in addresses):
        return True
    m = _END_OF_HEADERS.search(original_headers)
    head = original_headers[: m.start()] if m else original_headers
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not head.isascii()


def _subject(notices: Sequence[Notice]) -> str:
    """The gravest news first: failed (by its kind), then delayed, relayed, delivered."""
    failed = [n for n in notices if n.action == "failed"]
    if failed:
        return _SUBJECTS.get(failed[0].kind, _SUBJECT_OTHER)
    actions = {n.action for n in notices}
    return next(_SUBJECTS[a] for a in _ACTIONS if a in actions)


def _human(organisation: str, hostname: str, queue_id: str, arrival: float,
           notices: Sequence[Notice]) -> str:
    when = datetime.fromtimestamp(arrival).astimezone().strftime("%d-%m-%Y %H:%M %Z")
    sections = []
    for lang, org_gen in ((_DANISH, _danish_genitive(organisation)), (_ENGLISH, "")):
        names = {"org": organisation, "org_gen": org_gen, "host": hostname}
        out = _wrap(lang.intro.format(**names))
        for action in _ACTIONS:
            chosen = [n for n in notices if n.action == action]
            kinds = list(dict.fromkeys(n.kind for n in chosen))  # in order of appearance
            for kind in kinds:
                text = lang.kinds[kind]
                out += ["", getattr(lang, action), ""]  # the headings are named as the actions
                for n in (n for n in chosen if n.kind == kind):
                    out.append(f"  {_line(n.address)}")
                    if kind in _DETAILED and n.diagnostic:
                        out.append(f"    ({lang.detail}: {_readable(n.diagnostic)})")
                if action in _SUCCESS:  # good news: no "why", and nothing to do
                    out += [""] + _wrap(text.why)
                    continue
                where = _places(lang, chosen[0].found_in)
                why = text.why.format(where=where)
                out += [""] + _wrap(f"{lang.why}: {why}")
                out += ["", f"{lang.todo}:"]
                for item in text.todo:
                    out += _wrap(item.format(**names), first="  - ", rest="    ")
        out += [""] + _wrap(lang.footer.format(queue_id=queue_id, arrival=when))
        sections.append("\n".join(out))
    return "\n\n----------------------------------------\n\n".join(sections) + "\n"


def _places(lang: _Language, found_in: Sequence[tuple[str, str]]) -> str:
    """ "emnefeltet og den vedhæftede fil »bilag.pdf«": where CPR numbers were found."""
    names = [lang.places[where].format(name=_line(name)) if name or where != "attachment"
             else lang.unnamed for where, name in found_in]
    if len(names) <= 1:
        return names[0] if names else ""
    return f"{', '.join(names[:-1])} {lang.and_} {names[-1]}"


def _status_fields(hostname: str, queue_id: str, arrival: float, notices: Sequence[Notice],
                   envid: str) -> str:
    """The message/delivery-status content: per-message fields, then one block per recipient."""
    blocks = []
    message = []
    if envid:
        message.append(f"Original-Envelope-Id: {_line(_unxtext(envid))}")
    message += [f"Reporting-MTA: dns; {hostname}",
                f"X-Send-Sikkert-Queue-Id: {queue_id}",
                f"Arrival-Date: {email.utils.formatdate(arrival, localtime=True)}"]
    blocks.append(message)
    for n in notices:
        block = []
        if n.orcpt:
            kind, _, address = n.orcpt.partition(";")
            if not address:
                kind, address = "rfc822", n.orcpt
            block.append(f"Original-Recipient: {kind.strip()}; {_line(_unxtext(address.strip()))}")
        address_type = "rfc822" if n.address.isascii() else "utf-8"  # RFC 6533 3
        block += [f"Final-Recipient: {address_type}; {_line(n.address)}",
                  f"Action: {n.action}",
                  f"Status: {n.status}"]
        diagnostic = _line(n.diagnostic)
        if diagnostic:  # optional (RFC 3464 2.3.6): a success may have none to give
            if not _DIAGNOSTIC_TYPE.match(diagnostic):
                diagnostic = f"x-send-sikkert; {diagnostic}"
            block += _wrap(f"Diagnostic-Code: {diagnostic}", rest=" ")
        if n.will_retry_until is not None:
            block.append("Will-Retry-Until: "
                         + email.utils.formatdate(n.will_retry_until, localtime=True))
        blocks.append(block)
    return "\n\n".join("\n".join(block) for block in blocks)


def _part(content_type: str, description: str, body: str) -> list[str]:
    encoding = "7bit" if body.isascii() else "8bit"
    return [f"Content-Type: {content_type}", f"Content-Description: {description}",
            f"Content-Transfer-Encoding: {encoding}", "", body]


def _headers_only(original: bytes) -> str:
    """The header section, cut at the first blank line: a body passed by mistake never leaks.

    CPR numbers in it are masked: a subject such as "Bente 010190-1234" must not come back
    in the very bounce that refused to send it.
    """
    m = _END_OF_HEADERS.search(original)
    head = original[: m.start()] if m else original.rstrip(b"\r\n")
    fields = [_masked(f) if contains_cpr(f.value) else f.raw
              for f in rawmail.parse_fields(head + b"\r\n")]
    return b"".join(fields).decode("utf-8", "surrogateescape").replace("\r\n", "\n").rstrip(
        "\n")


def _masked(field: rawmail.Field) -> bytes:
    """The field with its CPR numbers masked, the value written anew and the name as it
    came: an 8-bit name (against RFC 5322, but SMTP carries it) must not stop the report."""
    name = field.raw.split(b":", 1)[0]
    return name + b":" + rawmail.make_field("X", mask_text(field.value)).raw[2:]


def _line(text: str) -> str:
    """One header line's worth of text: no CR or LF can start a new field, and no other
    control character (an ORCPT or ENVID may xtext-encode a NUL) reaches the report."""
    return _CONTROL.sub("", " ".join(text.split()))


def _readable(diagnostic: str) -> str:
    """The diagnostic without its type, e.g. "550 5.1.1 no such user"."""
    text = _line(diagnostic)
    return text.split(";", 1)[1].strip() if _DIAGNOSTIC_TYPE.match(text) else text


def _unxtext(text: str) -> str:
    """RFC 3461 4: "+HH" back to the character it stands for."""
    return _XTEXT_HEX.sub(lambda m: chr(int(m[1], 16)), text)


def _wrap(text: str, first: str = "", rest: str = "") -> list[str]:
    return textwrap.wrap(text, width=76, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False) or [first]


def _danish_genitive(name: str) -> str:
    """Brøndby Kommune -> Brøndby Kommunes; a name ending in s, x or z takes an apostrophe."""
    return name + "'" if name and name[-1].lower() in "sxz" else name + "s"


def _crlf(text: str) -> str:
    return re.sub(r"\r?\n", "\r\n", text)
