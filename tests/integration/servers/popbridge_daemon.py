"""popbridge itself, run as the real daemon (`popbridge run`), and as a feed-only daemon for Dovecot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .processes import LogFile, ServerError, check_socket_path, free_port, log_tail, short_directory, stop_process, tcp_listening, unix_connectable, wait_until


def popbridge_command() -> list[str]:
    """The installed `popbridge` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "popbridge"
    if script.exists():
        return [str(script)]
    found = shutil.which("popbridge")
    if found is None:
        raise ServerError("the popbridge console script is not installed (pip install -e '.[test]')")
    return [found]


@dataclass
class Popbridge:
    """The real daemon, `popbridge run --config FILE`, as a subprocess.

    `socket_directory` holds the lookup and control sockets; pass `policy_socket` to put the
    policy socket where a Postfix fixture expects it. `extra_config` is TOML appended to the
    generated file (more [[proxy]] or [[lookup]] tables, say). With `imap_backend_port`, an
    imap4 [[proxy]] listens on `imap_port` too (`forward_client_address` applies to both).
    """

    backend_port: int
    ttl: float = 1800
    forward_client_address: bool = False
    imap_backend_port: int | None = None
    policy_socket: Path | None = None
    host: str = "127.0.0.1"
    extra_config: str = ""
    proxy_extra: str = ""  # TOML lines added to each generated [[proxy]] table (tls_certificate = ..., say)
    store: str = "memory"  # [ledger] store; a sqlite: path relative to the directory is kept there
    log_level: str = "info"  # popbridge run --log-level
    plain_twistd: bool = False  # start `twistd -n popbridge` (Twisted's default reactor) instead
    run_as: tuple[str, str] | None = None  # (user, group): bind as root, then drop to them (--user/--group)

    def __post_init__(self) -> None:
        self.directory = short_directory("pb-daemon-")
        self.port = free_port(self.host)
        self.imap_port = free_port(self.host) if self.imap_backend_port is not None else None
        self.policy_socket = check_socket_path(Path(self.policy_socket or self.directory / "policy.sock"))
        self.socketmap_socket = check_socket_path(self.directory / "socketmap.sock")
        self.whoson_socket = check_socket_path(self.directory / "whoson.sock")
        self.control_socket = check_socket_path(self.directory / "control.sock")
        self.config_path = self.directory / "popbridge.toml"
        self.log = LogFile(self.directory / "popbridge.log")
        self.process: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        imap = ""
        if self.imap_port is not None and self.imap_backend_port is not None:
            imap = self._proxy_config("imap4", self.imap_port, self.imap_backend_port)
        return f"""\
[ledger]
ttl = {self.ttl}
store = "{self.store}"
{self._proxy_config("pop3", self.port, self.backend_port)}{imap}
{self._lookup_tables()}"""

    def _proxy_config(self, protocol: str, port: int, backend_port: int) -> str:
        """One [[proxy]] table; POP3 and IMAP4 differ only in protocol and ports."""
        forward = "true" if self.forward_client_address else "false"
        return f"""
[[proxy]]
protocol = "{protocol}"
listen = "tcp:port={port}:interface={self.host}"
backend = "tcp:host=127.0.0.1:port={backend_port}"
forward_client_address = {forward}
{self.proxy_extra}
"""

    def _command(self) -> list[str]:
        if self.plain_twistd:
            twistd = str(Path(popbridge_command()[0]).parent / "twistd")
            return [twistd, "-n", "--pidfile=", "popbridge", "--config", str(self.config_path)]
        privileges = ["--user", self.run_as[0], "--group", self.run_as[1]] if self.run_as else []
        return [*popbridge_command(), "run", "--config", str(self.config_path), "--log-level", self.log_level, *privileges]

    def start(self) -> "Popbridge":
        self.config_path.write_text(self.config_text())
        with open(self.log.path, "ab") as output:  # a restarted daemon appends to its log
            self.process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        try:
            wait_until(self._listening, "popbridge listeners", alive=self._why_dead)
        except ServerError as e:
            self.stop()
            raise ServerError(f"{e}\npopbridge output:\n{log_tail(self.log.path)}") from None
        return self

    def _lookup_tables(self) -> str:
        """The lookup and control tables every daemon here has, then `extra_config`."""
        return f"""[[lookup]]
protocol = "policy"
listen = "unix:address={self.policy_socket}:mode=666"

[[lookup]]
protocol = "socketmap"
listen = "unix:address={self.socketmap_socket}:mode=666"

[[lookup]]
protocol = "whoson"
listen = "unix:address={self.whoson_socket}:mode=666"

[control]
listen = "unix:address={self.control_socket}:mode=600"
{self.extra_config}"""

    def _tcp_ports(self) -> list[int]:
        """The ports the daemon listens on for clients, waited for at start."""
        return [self.port] if self.imap_port is None else [self.port, self.imap_port]

    def _listening(self) -> bool:
        sockets = (self.policy_socket, self.socketmap_socket, self.whoson_socket, self.control_socket)
        return all(tcp_listening(self.host, port) for port in self._tcp_ports()) and all(
            unix_connectable(path) for path in sockets
        )

    def _why_dead(self) -> str | None:
        assert self.process is not None
        code = self.process.poll()
        return None if code is None else f"popbridge exited with status {code}"

    def output(self) -> str:
        """Everything the daemon logged so far."""
        return self.log.text()

    def stop(self) -> None:
        stop_process(self.process)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`popbridge VERB --socket CONTROL ARGS...` against this daemon's control socket."""
        verb, *rest = args
        return subprocess.run(
            [*popbridge_command(), verb, "--socket", str(self.control_socket), *rest],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def logins(self, address: str) -> list[dict[str, object]]:
        """The live logins the daemon holds for `address`, from `popbridge query --json`."""
        result = self.cli("query", "--json", address)
        if result.returncode != 0:
            raise ServerError(f"popbridge query {address}: exit {result.returncode}: {result.stderr.strip()}")
        reply = json.loads(result.stdout)
        if not reply.get("ok"):
            raise ServerError(f"popbridge query {address}: {reply}")
        return list(reply["logins"])

    def socketmap_table(self, name: str = "access") -> str:
        """The Postfix table name for one of the daemon's socketmap maps."""
        return f"socketmap:unix:{self.socketmap_socket}:{name}"

    def __enter__(self) -> Popbridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@dataclass
class FeedPopbridge(Popbridge):
    """The daemon with [[feed]] tables (Dovecot's auth-policy requests) and lookups, and no [[proxy]].

    `feeds` maps a name to TOML lines added to that [[feed]] table (``record_on = ...``, say);
    each listens on 127.0.0.1 at `feed_ports[name]` and takes `api_key`. `backend_port` is unused.
    """

    feeds: Mapping[str, str] = field(default_factory=lambda: {"dovecot": ""})
    api_key: str = "feed-test-key"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.feed_ports = {name: free_port(self.host) for name in self.feeds}

    def config_text(self) -> str:
        feeds = "".join(
            f"""
[[feed]]
protocol = "dovecot"
listen = "tcp:port={self.feed_ports[name]}:interface={self.host}"
api_key = "{self.api_key}"
{lines}
"""
            for name, lines in self.feeds.items()
        )
        return f"""\
[ledger]
ttl = {self.ttl}
store = "{self.store}"
{feeds}
{self._lookup_tables()}"""

    def _tcp_ports(self) -> list[int]:
        return list(self.feed_ports.values())

    def dovecot_settings(self, name: str, *checks: str) -> str:
        """dovecot.conf lines that send feed `name` Dovecot's auth-policy requests (docs/deploy/dovecot.md,
        "Dovecot without a proxy"), then `checks` (``auth_policy_check_* = ...`` lines)."""
        return "\n".join(
            [
                f"auth_policy_server_url = http://{self.host}:{self.feed_ports[name]}/",
                f"auth_policy_server_api_header = X-API-Key: {self.api_key}",
                "auth_policy_hash_nonce = popbridge-test-nonce",
                "auth_policy_report_after_auth = yes",
                *checks,
                "",
            ]
        )

    def feed_count(self, command: str, outcome: str) -> float:
        """popbridge_feed_requests_total for (command, outcome), from `popbridge stats --json`."""
        result = self.cli("stats", "--json")
        if result.returncode != 0:
            raise ServerError(f"popbridge stats: exit {result.returncode}: {result.stderr.strip()}")
        name = f'popbridge_feed_requests_total{{command="{command}",outcome="{outcome}"}}'
        return float(json.loads(result.stdout)["metrics"].get(name, 0.0))


StartPopbridge = Callable[..., Popbridge]  # the popbridge_daemon fixture: start(ttl=..., ...)
