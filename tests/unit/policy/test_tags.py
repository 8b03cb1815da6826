"""Tag detection, department resolution and tag stripping on real message shapes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import rawmail
from gateway.config import DepartmentConfig, TagsConfig
from gateway.policy.departments import Department
from gateway.policy.tags import read_tags, resolve_department
from gateway.transform.headers import outgoing

SAMPLES = Path(__file__).parents[2] / "fixtures" / "samples"
TAGS = TagsConfig(header="X-Send-Sikkert",
                  subject=re.compile(r"(?P<keyword>[A-Za-z0-9._-]+)%%"))


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes().replace(b"\n", b"\r\n")


def department(id: str, mailbox: str, default_for: tuple[str, ...] = ()) -> Department:
    config = DepartmentConfig(id=id, name=id, mailbox=mailbox, cert=Path("x"), key=Path("x"),
                              stamp="", senders=("*@brondby.dk",), default_for=default_for)
    return Department(config, None, (), None)  # type: ignore[arg-type]


DEPARTMENTS = (department("aeldreomsorg", "aeldreomsorg@brondby.dk"),
               department("jobcenter", "jobcenter@brondby.dk", ("*@job.brondby.dk",)))


def tags_of(data: bytes):
    fields, _ = rawmail.split(data)
    return read_tags(fields, TAGS)


def test_header_and_subject_tag():
    t = tags_of(sample("03-cpr-and-health-tagged.eml"))
    assert t.tagged and t.header_value == "yes" and t.keyword == "aeldreomsorg"
    assert resolve_department(t, "lela@brondby.dk", DEPARTMENTS).id == "aeldreomsorg"


def test_encoded_subject_after_reply_prefix():
    t = tags_of(sample("04-tunnel-complaint-encoded-subject.eml"))
    assert t.tagged and t.keyword == "aeldreomsorg"
    assert t.subject.startswith("SV: aeldreomsorg%%")


def test_untagged_sample():
    t = tags_of(sample("01-plain-no-personal-data.eml"))
    assert not t.tagged


@pytest.mark.parametrize("value,expected", [("yes", True), ("TRUE", True), ("1", True),
                                            ("no", False), ("0", False), ("false", False),
                                            ("No ", False), ("", True), ("maybe", True),
                                            ("=?utf-8?q?no?=", False),
                                            ("=?x-unknown?q?no?=", True)])
def test_header_values(value, expected):
    t = tags_of(f"Subject: hej\r\nX-Send-Sikkert: {value}\r\n\r\nbody\r\n".encode())
    assert t.tagged is expected


def test_header_names_department_by_id_or_mailbox():
    for value in ("jobcenter", "JobCenter@brondby.dk"):
        t = tags_of(f"Subject: aeldreomsorg%% x\r\nX-Send-Sikkert: {value}\r\n\r\n".encode())
        assert resolve_department(t, "a@brondby.dk", DEPARTMENTS).id == "jobcenter"


def test_unknown_keyword_is_tagged_without_department():
    t = tags_of(b"Subject: aeldreomsorgg%% CPR\r\n\r\nbody\r\n")
    assert t.tagged
    assert resolve_department(t, "a@brondby.dk", DEPARTMENTS) is None


def test_default_for_sender():
    t = tags_of(b"Subject: hej\r\nX-Send-Sikkert: yes\r\n\r\n")
    assert resolve_department(t, "pia@job.brondby.dk", DEPARTMENTS).id == "jobcenter"
    assert resolve_department(t, "pia@brondby.dk", DEPARTMENTS) is None


def test_strip_removes_both_tags_and_keeps_body_bytes():
    data = sample("03-cpr-and-health-tagged.eml")
    out = outgoing(data, TAGS)
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"X-Send-Sikkert" not in head
    assert b"Subject: Vedr. din mor, bolig 127\r\n" in head
    assert body == data.partition(b"\r\n\r\n")[2]


def test_strip_encoded_subject_keeps_reply_prefix():
    out = outgoing(sample("04-tunnel-complaint-encoded-subject.eml"), TAGS)
    fields, _ = rawmail.split(out)
    assert rawmail.get(fields, "Subject") == "SV: Vedr. klage over afgørelse"
    assert b"%%" not in out and b"=25=25" not in out


def test_strip_folded_subject_and_folded_tag_header():
    data = (b"From: a@brondby.dk\r\nSubject: Re: meget lang emnelinje\r\n"
            b"\taeldreomsorg%% om noget\r\nX-Send-Sikkert:\r\n yes\r\nTo: b@x.dk\r\n\r\nbody\r\n")
    out = outgoing(data, TAGS)
    fields, rest = rawmail.split(out)
    assert rawmail.get(fields, "Subject") == "Re: meget lang emnelinje om noget"
    assert [f.name for f in fields] == ["From", "Subject", "To"]
    assert rest == b"\r\n\r\nbody\r\n"


# Tags fail closed (CONTRACT): whatever could mean "secure" is taken as "secure".

@pytest.mark.parametrize("head", [
    b"X-Send-Sikkert: no\r\nX-Send-Sikkert: yes\r\nSubject: hej\r\n",
    b"X-Send-Sikkert: no\r\nx-send-sikkert: no\r\nSubject: hej\r\n",
    b"Subject: hej\r\nSubject: aeldreomsorg%% hej\r\n",
    b"Subject: hej\r\nSubject: hej igen\r\n",
    b"Subject: =?x-unknown?q?aeldreomsorg=25=25?= hej\r\n",
    b"Subject: =?utf-8?q?=FF=FE?= hej\r\n",
    b"Subject: =?utf-8?b?###?=\r\n",
])
def test_doubtful_tags_count_as_tagged(head: bytes):
    t = tags_of(head + b"\r\nbody\r\n")
    assert t.tagged, t


def test_rfc2231_language_in_the_encoded_word_is_read():
    t = tags_of(b"Subject: =?utf-8*da?q?aeldreomsorg=25=25?= Vedr. din mor\r\n\r\n")
    assert t.tagged and t.keyword == "aeldreomsorg" and not t.doubt
    assert t.subject == "aeldreomsorg%% Vedr. din mor"


def test_keyword_in_an_unknown_charset_still_names_the_department():
    t = tags_of(b"Subject: =?x-unknown?q?aeldreomsorg=25=25?= hej\r\n\r\n")
    assert t.keyword == "aeldreomsorg"
    assert resolve_department(t, "a@brondby.dk", DEPARTMENTS).id == "aeldreomsorg"


def test_two_subjects_are_both_stripped_and_the_keyword_of_the_second_counts():
    data = b"Subject: hej\r\nSubject: aeldreomsorg%% hej\r\nTo: b@x.dk\r\n\r\nbody\r\n"
    t = tags_of(data)
    assert t.tagged and t.keyword == "aeldreomsorg"
    assert b"%%" not in outgoing(data, TAGS)


def test_tags_naming_two_departments_name_none():
    t = tags_of(b"X-Send-Sikkert: jobcenter\r\nX-Send-Sikkert: aeldreomsorg\r\n\r\n")
    assert resolve_department(t, "a@brondby.dk", DEPARTMENTS) is None
    t = tags_of(b"Subject: jobcenter%% aeldreomsorg%%\r\n\r\n")
    assert resolve_department(t, "a@brondby.dk", DEPARTMENTS) is None


# Header injection: a decoded subject is never pasted back as it is.

@pytest.mark.parametrize("subject", [
    b"=?utf-8?q?SV:_aeldreomsorg=25=25=0D=0ABcc=3A_evil=40hotmail=2Edk?=",
    b"=?utf-8?q?aeldreomsorg=25=25_x=0ABcc=3A_evil=40hotmail=2Edk?=",
    b"=?utf-8?b?" + __import__("base64").b64encode(b"aeldreomsorg%% a\r\n\r\nbody") + b"?=",
    b"=?utf-8?q?aeldreomsorg=25=25_nul=00here?=",
])
def test_stripped_subject_cannot_inject_header_fields(subject: bytes):
    data = b"From: a@brondby.dk\r\nSubject: " + subject + b"\r\nTo: b@x.dk\r\n\r\nbody\r\n"
    out = outgoing(data, TAGS)
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"body\r\n"
    fields, _ = rawmail.split(out)
    assert [f.name for f in fields] == ["From", "Subject", "To"]
    subject_field = fields[1].raw
    assert b"\0" not in subject_field and b"\n" not in subject_field[:-2].replace(b"\r\n ", b"")
    decoded = fields[1].value
    assert "%%" not in decoded and decoded == tags_of(data).subject.replace(
        "aeldreomsorg%%", "").strip().replace("  ", " ")


def test_bcc_never_leaves():
    data = (b"From: a@brondby.dk\r\nTo: b@x.dk\r\nBcc: hidden@ast.dk\r\nResent-Bcc: x@y.dk\r\n"
            b"BCC:\r\n other@ast.dk\r\nSubject: hej\r\n\r\nBcc: in the body stays\r\n")
    out = outgoing(data, TAGS)
    assert out == (b"From: a@brondby.dk\r\nTo: b@x.dk\r\nSubject: hej\r\n"
                   b"\r\nBcc: in the body stays\r\n")
