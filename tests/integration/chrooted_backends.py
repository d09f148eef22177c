"""A real Courier and a real Cyrus, POP3 and IMAP on loopback, each from its Debian root.

Both keep Debian's defaults except what a test instance needs (addresses, ports, users, logs to
a syslog of the test's own) and the SASL mechanisms an operator would turn on, so the quirks
the tests see are the ones operators meet. Users and their passwords come from `users`;
`deliver` puts a message in a mailbox the way the server's own delivery would.
"""

from __future__ import annotations

import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .debian_root import Chroot, Syslog, stop_by_pid_files
from .servers import ServerError, free_port, wait_until

MAIL_UID = MAIL_GID = 65534  # nobody/nogroup inside the root


def _greets(host: str, port: int, greeting: bytes) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            return s.recv(512).startswith(greeting)
    except OSError:
        return False


@dataclass
class ChrootedMailServer(ABC):
    """What Courier and Cyrus share: a chroot, a syslog, a POP3 `port` and an `imap_port`."""

    layers: list[Path]
    users: Mapping[str, str]
    host: str = "127.0.0.1"
    name = "mail server"
    pid_files: tuple[str, ...] = ()
    chroot: Chroot = field(init=False)

    def __post_init__(self) -> None:
        self.port = free_port(self.host)
        self.imap_port = free_port(self.host)
        self.chroot = Chroot(self.layers)
        self._syslog: Syslog | None = None

    def start(self) -> "ChrootedMailServer":
        self.chroot.start()
        self._syslog = Syslog(self.chroot.path("/dev/log"))
        try:
            self.configure()
            self.launch()
            wait_until(self._ready, f"{self.name} on {self.host}:{self.port} and {self.imap_port}")
        except ServerError as e:
            raise ServerError(f"{e}\n{self.log_text()}") from None
        return self

    def _ready(self) -> bool:
        return _greets(self.host, self.port, b"+OK") and _greets(self.host, self.imap_port, b"* OK")

    @abstractmethod
    def configure(self) -> None:
        """Write configuration, users and mailboxes into the running chroot."""

    @abstractmethod
    def launch(self) -> None:
        """Start the daemons (they put themselves in the background)."""

    @abstractmethod
    def deliver(self, user: str, message: bytes) -> None:
        """Put `message` in `user`'s INBOX."""

    def log_lines(self) -> list[str]:
        """Every line the server logged so far (through its syslog)."""
        return self._syslog.text().splitlines() if self._syslog is not None else []

    def log_text(self) -> str:
        """The end of the log, for failure output."""
        return "\n".join(self.log_lines())[-6000:]

    def cleanup(self) -> None:
        try:
            stop_by_pid_files(self.chroot, self.pid_files, self.name)
        finally:
            self.chroot.cleanup()
            if self._syslog is not None:
                self._syslog.close()


def _set(path: Path, settings: Mapping[str, str]) -> None:
    """Append shell assignments to a Courier config file: the last assignment wins."""
    with open(path, "a") as f:
        f.write("\n# tests/integration/chrooted_backends.py\n")
        f.writelines(f'{key}="{value}"\n' for key, value in settings.items())


@dataclass
class Courier(ChrootedMailServer):
    """Courier-IMAP 5.0 and courier-pop 1.0 with authuserdb users (crypt and HMAC-MD5 secrets,
    so CRAM-MD5 works) and Maildirs owned by nobody. Debian's MAXPERIP (POP3 4, IMAP 20) stays
    unless `max_per_ip` overrides both. SASL PLAIN, LOGIN and CRAM-MD5 are offered without TLS,
    as an operator enables them with POP3AUTH and IMAP_CAPABILITY."""

    max_per_ip: int | None = None
    name = "courier"
    pid_files: tuple[str, ...] = ("/run/courier/pop3d.pid", "/run/courier/imapd.pid", "/run/courier/authdaemon/pid")

    def configure(self) -> None:
        per_ip = {} if self.max_per_ip is None else {"MAXPERIP": str(self.max_per_ip)}
        _set(self.chroot.path("/etc/courier/pop3d"), {
            "ADDRESS": self.host, "PORT": str(self.port), "POP3AUTH": "PLAIN LOGIN CRAM-MD5", **per_ip})
        _set(self.chroot.path("/etc/courier/imapd"), {
            "ADDRESS": self.host, "PORT": str(self.imap_port),
            "IMAP_CAPABILITY": "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES "
                               "SORT QUOTA IDLE AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5", **per_ip})
        _set(self.chroot.path("/etc/courier/authdaemonrc"), {"authmodulelist": "authuserdb"})
        entries = []
        for user, password in self.users.items():
            home = f"/home/{user}"
            self.chroot.run("mkdir", "-p", home)
            self.chroot.run("maildirmake", f"{home}/Maildir")
            self.chroot.run("chown", "-R", f"{MAIL_UID}:{MAIL_GID}", home)
            crypted = self._userdbpw("-md5", password)
            hmac = self._userdbpw("-hmac-md5", password)
            entries.append(f"{user}\tuid={MAIL_UID}|gid={MAIL_GID}|home={home}|mail={home}/Maildir"
                           f"|systempw={crypted}|hmac-md5pw={hmac}\n")
        userdb = self.chroot.path("/etc/courier/userdb")
        userdb.write_text("".join(entries))
        userdb.chmod(0o600)
        self.chroot.run("makeuserdb")

    def _userdbpw(self, kind: str, password: str) -> str:
        return self.chroot.run_with_input(f"{password}\n{password}\n", "userdbpw", kind).strip()

    def launch(self) -> None:
        self.chroot.run("mkdir", "-p", "/run/courier/authdaemon")
        self.chroot.run("authdaemond", "start")
        self.chroot.run("pop3d", "start")
        self.chroot.run("imapd", "start")

    def deliver(self, user: str, message: bytes) -> None:
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.popbridge-test"
        maildir = self.chroot.path(f"/home/{user}/Maildir")
        temporary = maildir / "tmp" / name
        temporary.write_bytes(message)
        temporary.rename(maildir / "new" / name)
        self.chroot.run("chown", "-R", f"{MAIL_UID}:{MAIL_GID}", f"/home/{user}/Maildir")


CYRUS_CONF = """\
# private test instance, written by tests/integration/chrooted_backends.py
START {{
  recover cmd="/usr/lib/cyrus/bin/ctl_cyrusdb -r"
}}
SERVICES {{
  imap cmd="imapd -U 30" listen="{host}:{imap_port}" prefork=0 maxchild=100
  pop3 cmd="pop3d -U 30" listen="{host}:{port}" prefork=0 maxchild=50
}}
EVENTS {{
  checkpoint cmd="/usr/lib/cyrus/bin/ctl_cyrusdb -c" period=30
}}
"""

# Debian's imapd.conf, less what a test instance must not have, plus SASL from sasldb
CYRUS_IMAPD_CONF = """
# tests/integration/chrooted_backends.py
servername: {servername}
popminpoll: {popminpoll}
allowplaintext: {allowplaintext}
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: /etc/sasldb2
sasl_mech_list: PLAIN LOGIN CRAM-MD5
"""
CYRUS_REALM = "mail.popbridge-test.invalid"


@dataclass
class Cyrus(ChrootedMailServer):
    """Cyrus IMAP 3.6 imapd and pop3d under its master process, with Debian's imapd.conf
    (allowplaintext on, INBOX created at the first login) and users in sasldb (PLAIN, LOGIN,
    CRAM-MD5). Debian sets popminpoll to 1 (a POP3 user may log in once a minute, later
    logins within the minute get `-ERR [LOGIN-DELAY]`); `popminpoll` is 0 unless a test wants
    Debian's value."""

    popminpoll: int = 0
    allowplaintext: bool = True  # Debian's default; upstream's is off
    name = "cyrus"
    pid_files: tuple[str, ...] = ("/run/cyrus-master.pid",)

    def configure(self) -> None:
        self.chroot.path("/etc/cyrus.conf").write_text(
            CYRUS_CONF.format(host=self.host, port=self.port, imap_port=self.imap_port))
        ours = CYRUS_IMAPD_CONF.format(servername=CYRUS_REALM, popminpoll=self.popminpoll,
                                       allowplaintext="yes" if self.allowplaintext else "no")
        keys = {line.split(":", 1)[0] for line in ours.splitlines() if ":" in line and not line.startswith("#")}
        conf = self.chroot.path("/etc/imapd.conf")  # Cyrus refuses an option given twice
        debian = [line for line in conf.read_text().splitlines() if line.split(":", 1)[0].strip() not in keys]
        conf.write_text("\n".join(debian) + ours)
        for user, password in self.users.items():
            self.chroot.run_with_input(password, "saslpasswd2", "-p", "-c", "-u", CYRUS_REALM, user)
        self.chroot.run("chown", "cyrus:mail", "/etc/sasldb2")
        self.chroot.run("chmod", "640", "/etc/sasldb2")
        self.chroot.run("mkdir", "-p", "/run/cyrus/proc", "/run/cyrus/lock", "/run/cyrus/socket")
        self.chroot.run("chown", "-R", "cyrus:mail", "/run/cyrus")

    def launch(self) -> None:
        self.chroot.run("/usr/lib/cyrus/bin/master", "-d", "-p", "/run/cyrus-master.pid")

    def deliver(self, user: str, message: bytes) -> None:
        """APPEND to the user's INBOX as the user (the first login creates the INBOX)."""
        with socket.create_connection((self.host, self.imap_port), timeout=10) as s:
            reader = s.makefile("rb")
            reader.readline()
            s.sendall(f'a LOGIN "{user}" "{self.users[user]}"\r\n'.encode())
            s.sendall(f"b APPEND INBOX {{{len(message)}+}}\r\n".encode() + message + b"\r\nc LOGOUT\r\n")
            answers = [reader.readline() for _ in range(4)]
        if not any(line.startswith(b"b OK") for line in answers):
            raise ServerError(f"APPEND for {user} failed: {answers!r}")
