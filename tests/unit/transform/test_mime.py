"""Raw MIME helpers: delimiters found as RFC 2046 5.1.1 places them, canonical line ends."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transform.mime import base64_body, canonical, part_spans, walk


@pytest.mark.parametrize(("body", "parts"), [
    (b"--b\r\none\r\n--b\r\ntwo\r\n--b--\r\nepilogue", [b"one", b"two"]),
    (b"preamble\r\n--b \t\r\none\r\n--b--", [b"one"]),  # transport padding, preamble
    (b"--b\r\none --b\r\n--bx\r\n\r\n--b--", [b"one --b\r\n--bx\r\n"]),  # not delimiters
    (b"--b\r\ntruncated", [b"truncated"]),  # no close delimiter: runs to the end
    (b"--b\r\n\r\n--b\r\n", [b"", b""]),
    (b"no delimiter at all", []),
    (b"--b--", []),
])
def test_part_spans(body: bytes, parts: list[bytes]) -> None:
    assert [body[start:end] for start, end in part_spans(body, "b")] == parts


def test_canonical_makes_every_line_end_crlf_and_leaves_canonical_data_alone() -> None:
    assert canonical(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    data = b"a\r\nb\r\n" * 1000
    assert canonical(data) is data
    assert canonical(b"a\rb\n") == b"a\rb\r\n"  # a bare CR is not a line end to rewrite


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1000))
def test_base64_body_is_76_character_crlf_lines_of_the_data(data: bytes) -> None:
    """RFC 2045 6.8: full lines of 76 characters, a shorter last one, each ending in CRLF."""
    body = base64_body(data)
    lines = body.split(b"\r\n")
    assert lines.pop() == b""  # the body ends in CRLF (or is empty)
    assert all(len(line) == 76 for line in lines[:-1])
    assert all(0 < len(line) <= 76 for line in lines)
    assert b"\n" not in b"".join(lines) and b"\r" not in b"".join(lines)
    assert base64.b64decode(b"".join(lines), validate=True) == data


@pytest.mark.parametrize(("head", "parts"), [
    (b"Content-Type: multipart/mixed; boundary=b\r\n", 3),
    (b"Content-Type: MULTIPART/Mixed; boundary=b\r\n", 3),  # type names ignore case
    (b"Content-Type:\r\n\tMultipart/Alternative;\r\n boundary=b\r\n", 3),  # folded
    (b"Content-Type: Message/RFC822\r\n", 2),  # the body is one message
    (b"Content-Type: text/plain\r\nSubject: multipart\r\n", 1),
    (b"Subject: multipart/mixed; boundary=b\r\n", 1),  # no Content-Type: text/plain
])
def test_walk_finds_the_parts_however_the_type_is_written(head: bytes, parts: int) -> None:
    body = b"--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b\r\n\r\ntwo\r\n--b--\r\n"
    assert len(list(walk(head + b"\r\n" + body))) == parts
