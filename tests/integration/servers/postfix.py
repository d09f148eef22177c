"""A private Postfix that relays through popbridge's policy socket, and the SMTP sink it delivers to."""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .processes import DaemonisingServer, LogFile, ServerError, binary, check_socket_path, free_port, log_tail, run_checked, short_directory, wait_started


_MASTER_CF = """\
# private test instance, written by tests/integration/servers/: nothing chrooted
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class Postfix(DaemonisingServer):
    """A private Postfix whose smtpd (127.0.0.1, high port) lets only 127.0.0.1 and clients
    the policy service at `policy_socket` approves relay; everything accepted is discarded."""

    policy_socket: Path
    host: str = "127.0.0.1"
    main_extra: str = ""  # main.cf lines appended (a later line overrides an earlier one)
    master_extra: str = ""  # master.cf lines appended (more services)
    name = "postfix"

    def __post_init__(self) -> None:
        self.policy_socket = check_socket_path(Path(self.policy_socket).absolute())
        self.directory = short_directory("pb-postfix-")
        self.config_directory = self.directory / "etc"
        self.port = free_port(self.host)
        self.log = LogFile(self.directory / "maillog")
        self.pid_file = self.directory / "queue" / "pid" / "master.pid"
        self._started = False

    def main_cf(self) -> str:
        d = self.directory
        return f"""\
# private test instance, written by tests/integration/servers/
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = /var, /dev/stdout, {d}
maillog_file = {self.log.path}
myhostname = relay.popbridge-test.invalid
mydomain = popbridge-test.invalid
myorigin = $myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = {self.host}
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP popbridge-test
default_transport = discard
relay_transport = discard
local_transport = discard
smtputf8_enable = no
biff = no
smtpd_relay_restrictions = permit_mynetworks, check_policy_service unix:{self.policy_socket}, reject_unauth_destination
smtpd_recipient_restrictions =
smtpd_policy_service_timeout = 10s
smtpd_policy_service_try_limit = 1
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_client_connection_rate_limit = 0
{self.main_extra}
"""

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        # without a terminal the postfix command reports errors only to its log file
        try:
            return run_checked([binary("postfix"), "-c", str(self.config_directory), *args], f"postfix {args[0]}")
        except ServerError as e:
            raise ServerError(f"{e}\n{log_tail(self.log.path)}") from None

    def start(self) -> "Postfix":
        self.config_directory.mkdir()
        (self.directory / "queue").mkdir(mode=0o755)  # `postfix check` fills in the tree
        data = self.directory / "data"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postfix")
        (self.config_directory / "main.cf").write_text(self.main_cf())
        (self.config_directory / "master.cf").write_text(_MASTER_CF.format(host=self.host, port=self.port) + self.master_extra)
        self.postfix("check")
        self.postfix("start")
        self._started = True
        wait_started(self._answers, f"postfix smtpd on {self.host}:{self.port}", self.log.path, self.stop)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                return s.recv(512).startswith(b"220")
        except OSError:
            return False

    def stop_command(self) -> list[str]:
        return [binary("postfix"), "-c", str(self.config_directory), "stop"]

    def rcpt_code(
        self, source: str, recipient: str = "someone@outside.example", sender: str = "user@client.example"
    ) -> int:
        """Connect from `source` (a 127.0.0.x address), offer one mail to `recipient`, and return
        the reply code to RCPT TO (250 accepted, 554 relay denied, 451 a broken lookup)."""
        with smtplib.SMTP(self.host, self.port, source_address=(source, 0), timeout=30) as smtp:
            smtp.ehlo("client.example")
            code, reply = smtp.mail(sender)
            if code != 250:
                raise ServerError(f"MAIL FROM refused: {code} {reply!r}")
            code, _ = smtp.rcpt(recipient)
            if code == 250:
                smtp.data(b"Subject: popbridge test\r\n\r\nrelayed after POP3 login\r\n")
            else:
                smtp.rset()
            return code

    def postmap_query(self, key: str, table: str) -> str | None:
        """Ask `table` for `key` with Postfix's own client, `postmap -q`: the value, or None
        when the table says not found. postmap exits 1 both for "not found" and for a broken
        table, so anything on stderr is an error here, never a "not found"."""
        result = subprocess.run(
            [binary("postmap"), "-c", str(self.config_directory), "-q", key, table],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.stderr or result.returncode not in (0, 1):
            raise ServerError(f"postmap -q {key} {table}: exit {result.returncode}: {result.stderr.strip()}")
        return result.stdout.rstrip("\n") if result.returncode == 0 else None

    def __enter__(self) -> "Postfix":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@dataclass(frozen=True)
class SinkMessage:
    sender: str
    recipients: tuple[str, ...]
    data: bytes


class SmtpSink:
    """A minimal SMTP server on 127.0.0.1 that accepts every message and remembers it: a
    stand-in for a content filter or the next hop. Tests wait on `wait_for`, never sleep."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        import socketserver

        self.name, self.host = name, host
        self.messages: list[SinkMessage] = []
        self._arrived = threading.Condition()
        sink = self

        class Session(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                sink._session(self.rfile, self.wfile)

        self._server = socketserver.ThreadingTCPServer((host, 0), Session)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"smtp-sink-{name}", daemon=True)
        self._thread.start()

    def _session(self, rfile: Any, wfile: Any) -> None:
        def reply(line: str) -> None:
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        reply(f"220 {self.name}.sink.invalid ESMTP test sink")
        sender, recipients = "", []
        for raw in rfile:
            command = raw.decode("ascii", "replace").strip()
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                reply(f"250 {self.name}.sink.invalid")
            elif verb == "MAIL":
                sender, recipients = command[10:].split()[0].strip("<>") if command[10:].strip() else "", []
                reply("250 ok")
            elif verb == "RCPT":
                recipients.append(command[8:].strip().strip("<>"))
                reply("250 ok")
            elif verb == "DATA":
                reply("354 go ahead")
                lines = []
                for line in rfile:
                    if line in (b".\r\n", b".\n"):
                        break
                    lines.append(line[1:] if line.startswith(b"..") else line)
                with self._arrived:
                    self.messages.append(SinkMessage(sender, tuple(recipients), b"".join(lines)))
                    self._arrived.notify_all()
                reply("250 queued")
            elif verb == "QUIT":
                reply("221 bye")
                return
            else:
                reply("250 ok" if verb in ("RSET", "NOOP") else "502 not implemented")

    def wait_for(self, marker: bytes, timeout: float = 30.0) -> SinkMessage:
        """The first message containing `marker`, waiting up to `timeout` seconds for it."""
        with self._arrived:
            found = self._arrived.wait_for(lambda: self.find(marker), timeout)
        if not found:
            raise ServerError(f"no message with {marker!r} reached the {self.name} sink in {timeout:.0f} s")
        return found

    def find(self, marker: bytes) -> SinkMessage | None:
        return next((message for message in self.messages if marker in message.data), None)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
