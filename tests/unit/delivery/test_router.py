"""Routes as written in the configuration, and the router that dispatches on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.delivery import Rcpt, Route, Router, TlsPolicy, parse_route
from gateway.delivery.resolver import DnsResolver
from tests.support.dns import DnsServer
from tests.support.sink import SmtpSink

OK = 250
TEMPFAIL = 451
MESSAGE = b"Subject: Hej\r\n\r\nTekst.\r\n"


@pytest.mark.parametrize(("text", "route"), [
    ("smtp://127.0.0.1:2600", Route("smtp", "127.0.0.1", 2600)),
    ("smtp://mail.ast.dk:25", Route("smtp", "mail.ast.dk", 25)),
    ("smtp://[::1]:2525", Route("smtp", "::1", 2525)),
    ("mx", Route("mx")),
    ("file:/var/mail/out", Route("file", path=Path("/var/mail/out"))),
])
def test_parse_route(text: str, route: Route) -> None:
    assert parse_route(text) == route
    assert str(route) == text


@pytest.mark.parametrize("text", ["smtp://host", "smtp://host:0", "smtp://host:70000",
                                  "file:relative/dir", "lmtp://x:24", "MX", ""])
def test_not_a_route(text: str) -> None:
    with pytest.raises(ValueError):
        parse_route(text)


async def send(router: Router, route: str, queue_id: str = "Q1",
               domain: str = "partner.test") -> dict[str, int]:
    result = await router.deliver(parse_route(route), domain, "anna@brondby.test",
                                  [Rcpt(f"lone@{domain}")], MESSAGE, TlsPolicy(),
                                  queue_id=queue_id)
    return {a: r.code for a, r in result.replies.items()}


async def test_dispatches_by_route_kind(tmp_path: Path) -> None:
    async with SmtpSink() as sink:
        with DnsServer({"partner.test": {"MX": [(10, "mx.partner.test")]},
                        "mx.partner.test": {"A": ["127.0.0.1"]}}) as dns:
            router = Router(hostname="gw.brondby.test",
                            resolver=DnsResolver([dns.nameserver]), mx_port=sink.port)
            assert await send(router, sink.route) == {"lone@partner.test": OK}
            assert await send(router, "mx") == {"lone@partner.test": OK}
        assert await send(router, f"file:{tmp_path}") == {"lone@partner.test": OK}
    assert len(sink.messages) == 2
    assert (tmp_path / "Q1.1.eml").exists()


async def test_an_unexpected_error_defers_instead_of_raising(tmp_path: Path) -> None:
    router = Router(hostname="gw.brondby.test")
    assert await send(router, f"file:{tmp_path}", queue_id="../escape") == {
        "lone@partner.test": TEMPFAIL}
    assert list(tmp_path.parent.glob("*.eml")) == []
