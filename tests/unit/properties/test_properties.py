"""Property tests (hypothesis): whatever comes in is refused, or what the gateway writes
re-parses to the same tags, recipients and headers, with no CR, LF or NUL of its own."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import rawmail
from gateway.config import TagsConfig
from gateway.policy.address import InvalidAddress, normalise
from gateway.policy.tags import read_tags
from gateway.transform.downgrade import ConversionImpossible, to_7bit
from gateway.transform.headers import outgoing
from gateway.transform.mime import MimeLimitError, walk

TAGS = TagsConfig()
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# Any character but lone surrogates (which no decoder hands us as text).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)
ASCII_LINE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


def written_cleanly(raw: bytes) -> bool:
    """A field the gateway wrote: ASCII, no NUL, line ends only as folds, lines <= 78."""
    lines = raw.removesuffix(b"\r\n").split(b"\r\n")
    return (raw.isascii() and b"\0" not in raw and raw.endswith(b"\r\n")
            and b"\r" not in b"".join(lines) and b"\n" not in b"".join(lines)
            and all(line[:1] == b" " for line in lines[1:])
            and all(len(line) <= 78 for line in lines))


@SETTINGS
@given(TEXT)
def test_make_field_round_trips(text: str):
    field = rawmail.make_field("Subject", text)
    assert written_cleanly(field.raw), field.raw
    value, readable = field.decoded
    assert readable and value == text.strip(" ")


@SETTINGS
@given(st.text(st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1,
               max_size=100).filter(lambda s: s.strip()))
def test_address_fields_round_trip(display: str):
    field = rawmail.make_address_field("From", display, "aeldreomsorg@brondby.dk")
    assert written_cleanly(field.raw), field.raw
    parsed = email.message_from_bytes(field.raw + b"\r\n", policy=email.policy.default)
    [address] = parsed["From"].addresses
    assert address.addr_spec == "aeldreomsorg@brondby.dk"
    # The display name as RFC 2047 reads it (Python's parser puts a space between
    # adjacent encoded words, which RFC 2047 6.2 says to drop).
    value = field.value.removesuffix(" <aeldreomsorg@brondby.dk>")
    if field.raw.startswith(b'From: "'):  # the quoted-string form
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    assert value == display.strip(" ")


@SETTINGS
@given(TEXT)
def test_control_characters_never_survive_into_a_display_name(display: str):
    field = rawmail.make_address_field("From", display or "x", "a@brondby.dk")
    assert written_cleanly(field.raw)


# Tags: the reader and the rewriter.

def encode_subject(text: str, how: int) -> bytes:
    """The subject as a client might write it: raw, Q-encoded or B-encoded."""
    if how == 0 and text.isascii() and not re.search(r"[\r\n\0]", text):
        return text.encode("ascii")
    if how == 1:
        return rawmail.make_field("Subject", text).raw.split(b":", 1)[1].strip()
    import base64
    return b"=?utf-8?b?" + base64.b64encode(text.encode("utf-8")) + b"?="


KEYWORDISH = st.sampled_from(["aeldreomsorg%%", "%%", "x%aeldreomsorg%%%", "jobcenter%%",
                              "a%%b%%", "%", "=?", "\r\n", "Bcc: x@y.dk", " ", "æøå"])
SUBJECT = st.lists(st.one_of(KEYWORDISH, ASCII_LINE, TEXT), max_size=6).map("".join)


@SETTINGS
@given(SUBJECT, st.integers(0, 2), st.lists(st.sampled_from(["yes", "no", "0", "maybe"]),
                                            max_size=2), st.booleans())
def test_outgoing_headers_keep_everything_but_the_tags(subject: str, how: int,
                                                       tag_values: list[str], bcc: bool):
    head = [b"From: Lene <lela@brondby.dk>", b"To: olelsen@dhl.dk",
            b"Subject: " + encode_subject(subject, how)]
    head += [b"X-Send-Sikkert: " + v.encode() for v in tag_values]
    if bcc:
        head.append(b"Bcc: hidden@ast.dk")
    data = b"\r\n".join(head) + b"\r\n\r\nbody \x00 stays\r\n"
    fields, _ = rawmail.split(data)
    before = read_tags(fields, TAGS)
    out = outgoing(data, TAGS)
    assert out.endswith(b"\r\n\r\nbody \x00 stays\r\n")  # the body keeps every byte
    out_fields, _ = rawmail.split(out)
    assert [f.name for f in out_fields] == ["From", "To", "Subject"]
    assert out_fields[:2] == fields[:2]  # untouched fields are byte for byte the same
    after = read_tags(out_fields, TAGS)
    assert after.keywords == () and after.header_values == ()  # no tag leaves
    subject_field = out_fields[2]
    if subject_field.raw != fields[2].raw:  # rewritten: then written cleanly
        assert written_cleanly(subject_field.raw), subject_field.raw
    if before.keywords or any(v != "no" and v != "0" for v in tag_values) \
            or len(tag_values) > 1:
        assert before.tagged


# Addresses: refused, or a fixed point with nothing that could route or inject.

ADDRESSISH = st.one_of(
    TEXT,
    st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=70), st.text(max_size=70)),
    st.builds(lambda a, b: f"{a}@{b}.dk",
              st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20),
              st.from_regex(r"[a-zæøå0-9-]{1,20}", fullmatch=True)),
)


@SETTINGS
@given(ADDRESSISH, st.booleans())
def test_addresses_are_refused_or_a_fixed_point(text: str, utf8: bool):
    try:
        address = normalise(text, utf8=utf8)
    except InvalidAddress:
        return
    assert normalise(address, utf8=utf8) == address
    local, _, domain = address.rpartition("@")
    assert local and domain and "@" not in local
    assert not re.search(r"[\s\x00-\x1f\x7f%!\"<>()\[\]\\,;:]", address)
    assert len(local.encode()) <= 64 and len(address.encode()) <= 254
    assert utf8 or address.isascii()


# The MIME walk and the 7-bit conversion on generated structures.

LEAF_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=60)


def leaf(text: str, html: bool) -> EmailMessage:
    part = EmailMessage()
    part.set_content(text, subtype="html" if html else "plain", cte="8bit")
    return part


TREES = st.recursive(
    st.builds(leaf, LEAF_TEXT, st.booleans()),
    lambda children: st.builds(
        lambda parts, sub: _multipart(parts, sub), st.lists(children, min_size=1, max_size=4),
        st.sampled_from(["mixed", "alternative", "related"])),
    max_leaves=12)


def _multipart(parts: list[EmailMessage], subtype: str) -> EmailMessage:
    msg = EmailMessage()
    msg.make_mixed() if subtype == "mixed" else None
    msg.set_type(f"multipart/{subtype}")
    for part in parts:
        msg.attach(part)
    return msg


def as_message(tree: EmailMessage) -> bytes:
    tree["From"] = "lela@brondby.dk"
    tree["Subject"] = "x"
    return tree.as_bytes(policy=email.policy.SMTP)


@SETTINGS
@given(TREES)
def test_walk_sees_what_the_email_package_sees(tree: EmailMessage):
    data = as_message(tree)
    ours = list(walk(data))
    theirs = list(email.message_from_bytes(data, policy=email.policy.default).walk())
    assert len(ours) == len(theirs)
    assert [p.depth for p in ours][0] == 0


@SETTINGS
@given(st.binary(max_size=2000), st.integers(1, 5), st.integers(1, 20))
def test_walk_on_any_bytes_ends_or_says_why(data: bytes, depth: int, parts: int):
    head = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
    try:
        for part in walk(head + data, max_depth=depth, max_parts=parts):
            assert 0 <= part.body_start <= part.body_end <= len(head + data)
    except MimeLimitError:
        pass


@SETTINGS
@given(TREES)
def test_7bit_conversion_keeps_every_text(tree: EmailMessage):
    data = as_message(tree)
    try:
        out = to_7bit(data)
    except ConversionImpossible:
        raise AssertionError("nothing signed here") from None
    assert out.isascii()
    texts = [p.get_content() for p in email.message_from_bytes(
        data, policy=email.policy.default).walk() if not p.is_multipart()]
    again = [p.get_content() for p in email.message_from_bytes(
        out, policy=email.policy.default).walk() if not p.is_multipart()]
    assert [t.replace("\r\n", "\n") for t in again] == [t.replace("\r\n", "\n") for t in texts]
