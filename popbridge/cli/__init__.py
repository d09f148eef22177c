"""The ``popbridge`` command: run, demo, check-config, and the admin verbs on the control socket.

``popbridge run --config FILE`` is exactly ``twistd -n popbridge --config FILE`` (foreground,
log to stdout, no pid file): one way to start the daemon, whichever command an operator types.
"""

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, NoReturn

from twisted.python import usage

from popbridge.config import ConfigError, load_config
from popbridge.ledger.spec import parse_store
from popbridge.log import OBSERVERS
from popbridge.settings import Config


class RunOptions(usage.Options):
    optParameters = [
        ["config", "c", None, "the popbridge configuration file (TOML)"],
        ["user", "u", None, "run as this user once the listeners are bound (twistd --uid)"],
        ["group", "g", None, "run with this group once the listeners are bound (twistd --gid)"],
        ["log-level", "l", "info", "debug, info or warn (debug logs every lookup)"],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        if self["log-level"] not in OBSERVERS:
            raise usage.UsageError(f"--log-level must be one of {', '.join(OBSERVERS)}")


class DemoOptions(usage.Options):
    optParameters = [["dir", "d", "popbridge-demo", "where the demo config and its sockets live"]]


class CheckConfigOptions(usage.Options):
    def parseArgs(self, path: str) -> None:  # type: ignore[override]  # usage.Options counts the arguments from it
        self["path"] = path


class MigrateOptions(usage.Options):
    synopsis = "Usage: popbridge migrate-store [--ttl SECONDS] FROM TO"
    optParameters = [["ttl", "t", 1800.0, "the daemons' [ledger] ttl: logins older than this are not copied", float]]

    def parseArgs(self, source: str, target: str) -> None:  # type: ignore[override]  # as above
        self["from"], self["to"] = source, target


class ControlOptions(usage.Options):
    optParameters = [["socket", "s", "/run/popbridge/control.sock", "the control socket ([control] listen)"]]
    optFlags = [["json", "j", "print the daemon's JSON answer as it is"]]
    needs_address = False

    def parseArgs(self, *addresses: str) -> None:
        if self.needs_address and len(addresses) != 1:
            raise usage.UsageError("one ADDRESS is required")
        if not self.needs_address and addresses:
            raise usage.UsageError("no ADDRESS is taken here")
        self["address"] = addresses[0] if addresses else None


class AddressOptions(ControlOptions):
    needs_address = True

    def getSynopsis(self) -> str:
        return super().getSynopsis() + " ADDRESS"


class Options(usage.Options):
    synopsis = "Usage: popbridge COMMAND [options]"
    subCommands = [
        ["run", None, RunOptions, "run the daemon in the foreground (same as twistd -n popbridge)"],
        ["demo", None, DemoOptions, "run popbridge in front of a built-in demo POP3 server"],
        ["check-config", None, CheckConfigOptions, "check a configuration file without binding anything"],
        ["list", None, ControlOptions, "list every live login"],
        ["query", None, AddressOptions, "show the live logins of one client address"],
        ["revoke", None, AddressOptions, "forget every login of one client address"],
        ["stats", None, ControlOptions, "counters since the daemon started"],
        ["migrate-store", None, MigrateOptions, "copy the live logins of one store to another (daemons stopped)"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a COMMAND is required")

    def opt_version(self) -> NoReturn:
        """Print popbridge's version and exit (usage.Options would print Twisted's)."""
        print(f"popbridge {version('popbridge')}")
        sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.exit(f"{options}\npopbridge: {e}")
    command, sub = options.subCommand, options.subOptions
    assert command is not None  # postOptions refuses a missing COMMAND
    try:
        if command == "run":
            _run(load_config(sub["config"]), sub["config"], sub["user"], sub["group"], sub["log-level"])
        elif command == "demo":
            _demo(Path(sub["dir"]))
        elif command == "migrate-store":
            _migrate_store(sub)
        elif command == "check-config":
            _check_config(sub["path"])
        else:
            _control(command, sub)
    except ConfigError as e:
        sys.exit(f"popbridge: {e}")


def _run(
    config: Config, path: str, user: str | None = None, group: str | None = None, level: str = "info"
) -> None:
    """Hand over to twistd, which logs to stdout and stops cleanly on SIGTERM/SIGINT.

    With `user`/`group`, twistd binds every listener as root first, then drops to them.
    """
    from twisted.scripts.twistd import run

    del config  # checked first so a config error is one line, not twistd's usage text
    privileges = [*(["--uid", user] if user else []), *(["--gid", group] if group else [])]
    logger = f"--logger=popbridge.log.{OBSERVERS[level]}"
    reactor = "--reactor=popbridge"  # popbridge.fast.reactor: epoll without a log context per event
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", logger, reactor, *privileges, "popbridge", "--config", path]
    run()


def _demo(directory: Path) -> None:
    from popbridge.demo import demo_instructions, write_demo_config

    path = write_demo_config(directory.absolute())
    config = load_config(path)
    print(demo_instructions(config), flush=True)
    _run(config, str(path))


def _check_config(path: str) -> None:
    config = load_config(path)
    print(
        f"{path}: OK: {len(config.proxies)} proxy, {len(config.lookups)} lookup listener(s), "
        f"control {'on ' + config.control.listen if config.control else 'off'}, "
        f"ledger {parse_store(config.ledger.store).describe()} with ttl {config.ledger.ttl:g} s"
        + (f", {config.daemon.workers} proxy worker process(es)" if config.daemon.workers else "")
    )


def _migrate_store(options: MigrateOptions) -> None:
    """FROM and TO are `[ledger] store` strings; prints how many logins were copied."""
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    from popbridge.ledger import LedgerStoreError, LedgerUnavailable
    from popbridge.cli.migrate_store import migrate_store

    async def main(reactor: Any) -> None:
        try:
            copied = await migrate_store(options["from"], options["to"], options["ttl"], reactor)
        except (LedgerStoreError, LedgerUnavailable) as e:
            sys.exit(f"popbridge migrate-store: {e}")
        print(f"copied {copied} live logins from {options['from']} to {options['to']}")

    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))


def _control(command: str, options: ControlOptions) -> None:
    from popbridge.cli.control_client import ControlError, control_request

    request: dict[str, Any] = {"command": command}
    if options["address"] is not None:
        request["address"] = options["address"]
    try:
        reply = control_request(options["socket"], request)
    except ControlError as e:
        sys.exit(f"popbridge {command}: {e}")
    if options["json"]:
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif not reply.get("ok"):
        sys.exit(f"popbridge {command}: {reply.get('error', 'the daemon refused the request')}")
    else:
        print(_human(reply))


def _human(reply: dict[str, Any]) -> str:
    """The daemon's answer for a person: logins as a table, anything else as key: value lines."""
    logins = reply.get("logins")
    if logins is not None:
        if not logins:
            return "no live logins"
        rows = [("ADDRESS", "USER", "PROTOCOL", "SINCE", "EXPIRES")]
        rows += [
            (
                login["client"], login["user"] or "-", login["protocol"], _clock(login["when"]),
                "while connected" if login.get("expires") is None else _clock(login["expires"]),
            )
            for login in logins
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
    lines = []
    for key, value in sorted(reply.items()):
        if key == "ok":
            continue
        if isinstance(value, dict):  # events and metrics: one line each, as /metrics shows them
            lines.append(f"{key}:")
            lines += [f"  {name} {_number(number)}" for name, number in value.items()]
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _number(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _clock(seconds: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(seconds).isoformat(timespec="seconds")
