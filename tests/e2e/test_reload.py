"""Reloading the running daemon: a SEPO list replaced by cron, and SIGHUP.

The list file is watched (sepo.watch_interval): a new good version counts without a
signal, a broken, empty or half-written one keeps the running list and says so, in the
log and in `sendsikkert_last_reload_successful`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from tests.support.daemon import Daemon, GatewayConfig

OK = 200


def replace(config: GatewayConfig, text: str) -> None:
    """As a cron job does it: a new file renamed over the old one."""
    new = config.root / "sepo.txt.new"
    new.write_text(text)
    os.replace(new, config.root / "sepo.txt")


def wait_for(gateway: Daemon, predicate: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, gateway.logs()[-3000:]
        time.sleep(0.05)


def test_a_replaced_sepo_list_counts_without_a_signal(config: GatewayConfig, daemons):
    config.sepo = ["ast.dk"]
    config.sepo_watch_interval = 0.1
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()

    def kl_class() -> str:
        return gateway.http("/api/check?address=jura@kl.dk")[1]["results"][0]["class"]

    def reload_ok(source: str = "sepo") -> float:
        return gateway.metric("sendsikkert_last_reload_successful", source=source)

    assert kl_class() == "unsafe" and reload_ok() == 1 and reload_ok("configuration") == 1
    replace(config, "ast.dk\nkl.dk\n")
    wait_for(gateway, lambda: kl_class() == "tunnel")
    assert gateway.metric("sendsikkert_sepo_domains") == 2
    # The log is written at the end of the loop's turn, just after the list is in use.
    wait_for(gateway, lambda: "SEPO list " in gateway.logs()
             and "changed: 2 domain(s), before 1" in gateway.logs())

    for broken in ("ast.dk\n<html>404 Not Found</html>\n", ""):
        replace(config, broken)
        wait_for(gateway, lambda: reload_ok() == 0)
        assert kl_class() == "tunnel"  # the running list stays
        assert gateway.http("/readyz")[0] == OK
        wait_for(gateway, lambda: "keeping the 2 domain(s) loaded" in gateway.logs())
        replace(config, "ast.dk\nkl.dk\n")  # mended (same content, a new file)
        wait_for(gateway, lambda: reload_ok() == 1)

    replace(config, "ast.dk\n")
    wait_for(gateway, lambda: kl_class() == "unsafe")
    assert gateway.metric("sendsikkert_sepo_domains") == 1

    text = config.path.read_text()
    config.path.write_text("[smtp\nbroken")  # a bad SIGHUP keeps the running configuration
    gateway.signal(signal.SIGHUP)
    wait_for(gateway, lambda: reload_ok("configuration") == 0)
    assert kl_class() == "unsafe"
    config.path.write_text(text)
    replace(config, "ast.dk\nkl.dk\n")
    gateway.signal(signal.SIGHUP)
    wait_for(gateway, lambda: reload_ok("configuration") == 1 and kl_class() == "tunnel")
    assert gateway.http("/healthz")[0] == OK
