"""RFC 3461 parameter handling at the edge."""

from __future__ import annotations

import pytest

from gateway.edge.protocol import DsnSyntaxError, check_notify, check_xtext, take_params


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
