"""Command line: `send-sikkert serve | check | config check | queue ... | scan |
certs dev-init | certs import`.

Parses arguments and calls into the app or the commands; exit codes as CONTRACT says.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvloop

from gateway.config import ConfigError, config_path, load
from gateway.observe import maillog

EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="configuration file (default: $SEND_SIKKERT_CONFIG, "
                             "else policies/gateway.toml)")
    top = argparse.ArgumentParser(prog="send-sikkert", parents=[common],
                                  description="Secure-mail gateway for Danish public bodies.")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", parents=[common], help="run the daemon in the foreground")
    serve.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="text: one line per event, like Postfix; json: one object per line")
    # How the supervisor starts its workers (gateway/worker.py); not for people.
    for option in ("--worker", "--workers", "--control-fd", "--counts-fd", "--parent"):
        serve.add_argument(option, type=int, default=None, help=argparse.SUPPRESS)

    check = sub.add_parser("check", parents=[common], help="classify addresses")
    check.add_argument("--json", action="store_true", help="print the /api/check JSON")
    check.add_argument("addresses", nargs="+", metavar="ADDRESS")

    config = sub.add_parser("config", parents=[common], help="configuration")
    config_sub = config.add_subparsers(dest="action", required=True)
    config_sub.add_parser("check", parents=[common], help="validate the configuration")

    queue = sub.add_parser("queue", parents=[common], help="inspect and manage the queue")
    queue_sub = queue.add_subparsers(dest="action", required=True)
    q_list = queue_sub.add_parser("list", parents=[common], help="list queued messages")
    q_list.add_argument("--json", action="store_true")
    queue_sub.add_parser("show", parents=[common], help="show one message").add_argument("id")
    queue_sub.add_parser("retry", parents=[common], help="retry now").add_argument(
        "id", nargs="?")
    queue_sub.add_parser("delete", parents=[common],
                         help="drop a message (the sender gets a DSN)").add_argument("id")

    scan = sub.add_parser("scan", parents=[common],
                          help="scan .eml files for CPR numbers as the daemon would (DLP)")
    scan.add_argument("--json", action="store_true", help="print one JSON object")
    scan.add_argument("files", nargs="+", metavar="FILE")

    certs = sub.add_parser("certs", parents=[common], help="certificates")
    certs_sub = certs.add_subparsers(dest="action", required=True)
    dev = certs_sub.add_parser("dev-init", parents=[common], help="write a development PKI")
    dev.add_argument("--dir", metavar="DIR", help="output folder (default: certs/ beside "
                                                   "the configuration's folder)")
    imp = certs_sub.add_parser("import", parents=[common],
                               help="add recipient certificates to the learnt store")
    imp.add_argument("files", nargs="+", metavar="FILE", help="PEM, DER or PKCS#7 bundle")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log_format = getattr(args, "log_format", "text")
    maillog.setup(log_format)
    try:
        config = load(config_path(getattr(args, "config", None)))
        if config.cluster.database:  # several nodes: say which one wrote each line
            maillog.setup(log_format, node=config.cluster.node)
        if args.command == "serve" and args.worker is None:
            # Before prometheus_client is imported: every process of the daemon writes
            # its metrics there (gateway/observe/multiprocess.py).
            from gateway.observe import multiprocess
            multiprocess.prepare(config.spool.dir)
        from gateway import commands
        work = commands.run(args, config, argv if argv is not None else sys.argv[1:])
        # The daemon (supervisor and workers) on uvloop: libuv spends less CPU per
        # message than asyncio's own loop. The short commands need no more than asyncio.
        return uvloop.run(work) if args.command == "serve" else asyncio.run(work)
    except ConfigError as e:
        print(f"send-sikkert: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
