"""A real Exim and a real Sendmail on loopback, each from its Debian root (see debian_root.py).

Both relay only for 127.0.0.1 unless the documented recipe under test says otherwise, keep every
message they accept on their queue (nothing is ever delivered), and see popbridge's socket
directory where the recipes of docs/deploy/ expect it, /run/popbridge, so a recipe goes in unchanged.
"""

from __future__ import annotations

import smtplib
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from .debian_root import Chroot, Syslog, stop_by_pid_files
from .servers import ServerError, free_port, wait_until


def rcpt_code(port: int, source: str, recipient: str = "someone@outside.example", host: str = "127.0.0.1") -> int:
    """Connect from `source`, offer a mail to `recipient`, and return the code of the reply to
    RCPT TO (250 accepted; 5xx refused; 4xx deferred). Nothing is sent: RSET, QUIT. The
    timeout outlasts the slowest relay lookup timeout (Postfix socketmap: 100 s)."""
    with smtplib.SMTP(host, port, source_address=(source, 0), timeout=120) as smtp:
        smtp.ehlo("client.example")
        code, reply = smtp.mail("user@client.example")
        if code != 250:
            raise ServerError(f"MAIL FROM refused: {code} {reply!r}")
        code, _ = smtp.rcpt(recipient)
        smtp.rset()
        return code


def _answers_smtp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            return s.recv(512).startswith(b"220")
    except OSError:
        return False


@dataclass
class ChrootedRelay(ABC):
    """What Exim and Sendmail share: a chroot of their own, a port, start and stop by pid file."""

    layers: list[Path]
    binds: dict[str, Path] = field(default_factory=dict)  # path inside -> host directory
    host: str = "127.0.0.1"
    name = "relay"
    pid_file = "/run/relay.pid"
    chroot: Chroot = field(init=False)

    def __post_init__(self) -> None:
        self.port = free_port(self.host)
        self.chroot = Chroot(self.layers, binds=self.binds)

    def start(self) -> "ChrootedRelay":
        if self.chroot.process is None:
            self.chroot.start()
        self.configure()
        self.chroot.run(*self.daemon_argv())
        try:
            wait_until(lambda: _answers_smtp(self.host, self.port), f"{self.name} on {self.host}:{self.port}")
        except ServerError as e:
            raise ServerError(f"{e}\n{self.log_text()}") from None
        return self

    @abstractmethod
    def configure(self) -> None:
        """Write the relay's configuration into the running chroot."""

    @abstractmethod
    def daemon_argv(self) -> list[str]:
        """The command (inside) that starts the daemon in the background."""

    @abstractmethod
    def log_text(self) -> str:
        """The end of the relay's log, for failure output."""

    def cleanup(self) -> None:
        try:
            stop_by_pid_files(self.chroot, [self.pid_file], self.name)
        finally:
            self.chroot.cleanup()


EXIM_CONFIG = """\
# private test instance, written by tests/integration/chrooted_relays.py
primary_hostname = relay.popbridge-test.invalid
daemon_smtp_ports = {port}
local_interfaces = {host}
pid_file_path = /run/relay.pid
log_file_path = /var/log/exim4/%slog
spool_directory = /var/spool/exim4
exim_user = Debian-exim
exim_group = Debian-exim
never_users = root
host_lookup =
rfc1413_hosts =
queue_only = true
domainlist local_domains = relay.popbridge-test.invalid
hostlist relay_from_hosts = 127.0.0.1
acl_smtp_rcpt = acl_check_rcpt

begin acl

acl_check_rcpt:
  accept  hosts = +relay_from_hosts
{recipe}
  deny    message = relay not permitted
          !domains = +local_domains
  accept

begin routers

blackhole:
  driver = redirect
  data = :blackhole:
"""


@dataclass
class Exim(ChrootedRelay):
    """exim4-daemon-light with its own exim4.conf; `acl` is inserted into acl_smtp_rcpt after
    the relay_from_hosts line and before the relay check (550 relay not permitted)."""

    acl: str = ""
    name = "exim"

    def configure(self) -> None:
        recipe = "\n".join(f"  {line}" for line in self.acl.strip("\n").splitlines())
        self.chroot.path("/etc/exim4/exim4.conf").write_text(
            EXIM_CONFIG.format(port=self.port, host=self.host, recipe=recipe))
        self.chroot.run("exim", "-bV")  # a config error is reported here, with its line

    def daemon_argv(self) -> list[str]:
        return ["exim", "-bd"]

    def log_text(self) -> str:
        try:
            return self.chroot.path("/var/log/exim4/mainlog").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no exim mainlog)"


SENDMAIL_MC = """\
divert(-1)dnl private test instance, written by tests/integration/chrooted_relays.py
divert(0)dnl
include(`/usr/share/sendmail/cf/m4/cf.m4')dnl
VERSIONID(`popbridge test')dnl
OSTYPE(`debian')dnl
define(`confDOMAIN_NAME', `relay.popbridge-test.invalid')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confPID_FILE', `/run/relay.pid')dnl
define(`confDELIVERY_MODE', `queueonly')dnl
define(`confTO_IDENT', `0s')dnl
define(`confSERVICE_SWITCH_FILE', `/etc/mail/service.switch-nodns')dnl
define(`confLOG_LEVEL', `14')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA, Port={port}, Addr={host}')dnl
FEATURE(`accept_unresolvable_domains')dnl
MAILER(`smtp')dnl
{recipe}
"""


@dataclass
class Sendmail(ChrootedRelay):
    """sendmail-bin with a sendmail.cf built by m4 from a small .mc plus `mc` (the recipe's
    LOCAL_CONFIG and LOCAL_RULESETS). It relays for 127.0.0.1 only; anyone else gets
    550 Relaying denied unless the recipe's Local_check_rcpt says otherwise."""

    mc: str = ""
    name = "sendmail"

    def configure(self) -> None:
        hostname = socket.gethostname()  # the UTS name is shared: sendmail must find it in /etc/hosts
        self.chroot.path("/etc/hosts").write_text(
            f"127.0.0.1\tlocalhost relay.popbridge-test.invalid {hostname}.popbridge-test.invalid {hostname}\n")
        self.chroot.path("/etc/mail/popbridge-test.mc").write_text(
            SENDMAIL_MC.format(port=self.port, host=self.host, recipe=self.mc.strip("\n")))
        cf = self.chroot.run("m4", "/etc/mail/popbridge-test.mc").stdout
        self.chroot.path("/etc/mail/sendmail.cf").write_text(cf)

    def start(self) -> "Sendmail":
        self.chroot.start()
        self._syslog = Syslog(self.chroot.path("/dev/log"))  # sendmail logs only through syslog
        super().start()
        return self

    def daemon_argv(self) -> list[str]:
        return ["/usr/sbin/sendmail", "-bd"]

    def log_text(self) -> str:
        return self._syslog.text()[-4000:]

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            if hasattr(self, "_syslog"):
                self._syslog.close()
