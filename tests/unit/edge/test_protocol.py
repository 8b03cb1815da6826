"""RFC 3461 parameter handling at the edge, and its reading of MAIL and RCPT paths."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.edge.protocol import (
    _PLAIN_PATH,
    DsnSyntaxError,
    GatewaySMTP,
    check_notify,
    check_xtext,
    take_params,
)


def test_take_params_keeps_case_and_leaves_the_rest():
    rest, taken = take_params("<a@x.dk> SIZE=100 ORCPT=rfc822;Anna+2BX@x.dk NOTIFY=failure",
                              {"NOTIFY", "ORCPT"})
    assert rest == "<a@x.dk> SIZE=100"
    assert taken == {"ORCPT": "rfc822;Anna+2BX@x.dk", "NOTIFY": "failure"}


def test_take_params_refuses_duplicates():
    with pytest.raises(DsnSyntaxError):
        take_params("<a@x.dk> RET=FULL RET=HDRS", {"RET"})


@pytest.mark.parametrize("value,expected", [("NEVER", ("NEVER",)),
                                            ("success,Failure", ("SUCCESS", "FAILURE")),
                                            ("DELAY", ("DELAY",))])
def test_notify(value, expected):
    assert check_notify(value) == expected


@pytest.mark.parametrize("value", ["NEVER,FAILURE", "SOMETIMES", "", "FAILURE,,DELAY"])
def test_bad_notify(value):
    with pytest.raises(DsnSyntaxError):
        check_notify(value)


@pytest.mark.parametrize("value", ["", "a b", "a+2", "a+zz", "x" * 101, "æ"])
def test_bad_xtext(value):
    with pytest.raises(DsnSyntaxError):
        check_xtext("ENVID", value, 100)


def test_good_xtext():
    assert check_xtext("ENVID", "QQ314159+2B+3D", 100) == "QQ314159+2B+3D"


PATH_CHARACTERS = "ab.Z9-+_=<>@\"\\ ()[],:;!%æ\t\x0b"


def parsed(parse, arg: str) -> object:
    try:
        return parse(arg)
    except Exception as e:  # aiosmtpd's parser fails on some garbage (`"`): so must ours
        return type(e)


NEARLY_PLAIN = r"[ \t]?<[a-zA-Z.!#'+\"æ]{0,6}@[a-z9.\-\[\]]{0,8}>"


@settings(max_examples=500)
@given(st.one_of(st.text(PATH_CHARACTERS, max_size=30),
                 st.from_regex(NEARLY_PLAIN, fullmatch=True)),
       st.sampled_from(["", " SIZE=100", "\tBODY=8BITMIME", " (x) SIZE=1", "(y)"]),
       st.sampled_from([0, 4, 64]))
def test_paths_parse_as_aiosmtpd_parses_them(path, params, local_part_limit):
    server = GatewaySMTP.__new__(GatewaySMTP)  # only the parser: no connection, no loop
    server.local_part_limit = local_part_limit
    arg = path + params
    assert parsed(server._getaddr, arg) == parsed(lambda a: SMTP._getaddr(server, a), arg)


@pytest.mark.parametrize("path", ["<lela@brondby.dk>", " <a.b+c@x-y.dk> SIZE=5",
                                  "<O'Neil@example.net>\tBODY=8BITMIME"])
def test_common_paths_take_the_short_road(path):
    server = GatewaySMTP.__new__(GatewaySMTP)
    server.local_part_limit = 0
    assert _PLAIN_PATH.match(path) and server._getaddr(path) == SMTP._getaddr(server, path)


@pytest.mark.parametrize("path", ["<a@b.dk> (comment) SIZE=5", "<a@b.dk>(c)", "<a@b.dk.>",
                                  "<a..b@x.dk>", "<.a@x.dk>", "<a@[127.0.0.1]>", "<>"])
def test_other_paths_go_to_the_header_parser(path):
    server = GatewaySMTP.__new__(GatewaySMTP)
    server.local_part_limit = 0
    assert not _PLAIN_PATH.match(path)
    assert parsed(server._getaddr, path) == parsed(lambda a: SMTP._getaddr(server, a), path)
