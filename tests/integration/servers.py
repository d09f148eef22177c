"""Private real servers for the integration tests: Dovecot, Postfix and popbridge itself.

Each class starts its server in a directory of its own, on loopback high ports, and returns only
when the server accepts connections (polled against a deadline, never a fixed sleep). Nothing here
touches the system instances or their configuration. See ../shared/TEST-SERVERS.md for the facts
these configurations rest on.
"""

from __future__ import annotations

import json
import os
import poplib
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

MAIL_UID = MAIL_GID = 65534  # nobody/nogroup: Maildirs need an existing uid, not a system user
START_TIMEOUT = 20.0
MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the terminating NUL


class ServerError(RuntimeError):
    """A private server did not start or stop as expected; the message carries its log."""


# ---------------------------------------------------------------- helpers


SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_binary(name: str) -> str | None:
    """`name` on PATH or in the sbin directories a non-root PATH may lack."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SYSTEM_PATH}")


def binary(name: str) -> str:
    found = find_binary(name)
    if found is None:
        raise ServerError(f"{name} is not installed")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's choice, so clashes are rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def short_directory(prefix: str) -> Path:
    """A fresh directory under /tmp, short enough for unix socket paths and searchable by
    the unprivileged users of Dovecot and Postfix (smtpd runs as `postfix`)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def check_socket_path(path: Path) -> Path:
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ServerError(f"unix socket path over {MAX_UNIX_PATH} bytes: {path}")
    return path


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM a server still running, wait for it, and SIGKILL it after `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def wait_until(
    ready: Callable[[], bool],
    what: str,
    timeout: float = START_TIMEOUT,
    alive: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll `ready` until it is true; fail after `timeout` seconds, or as soon as `alive`
    returns a reason the server can no longer become ready."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if ready():
            return
        dead = alive()
        if dead is not None:
            raise ServerError(f"{what}: {dead}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(delay)  # polling interval of a bounded wait, not synchronisation
        delay = min(delay * 2, 0.2)


def tcp_connectable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def tcp_listening(host: str, port: int) -> bool:
    """Whether something listens on host:port, read from /proc/net/tcp so that no probe
    connection is made (a probe of a proxy would open a backend connection too)."""
    try:
        table = Path("/proc/net/tcp").read_text()
    except OSError:
        return tcp_connectable(host, port)
    wanted = {f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}", f"00000000:{port:04X}"}
    for row in table.splitlines()[1:]:
        fields = row.split()
        if fields[1] in wanted and fields[3] == "0A":  # 0A: LISTEN
            return True
    return False


def unix_connectable(path: str | Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(os.fspath(path))
            return True
        except OSError:
            return False


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ServerError(f"{what}: {' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


class LogFile:
    """A log file that tests read from a mark onwards, so they see only their own lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def text(self, since: int = 0) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, predicate: Callable[[str], bool], since: int = 0, timeout: float = 10.0) -> str:
        """Wait until a line matching `predicate` was written after `since`; return that line.
        Servers write their logs through a separate process, so lines arrive a little late."""
        found: list[str] = []

        def ready() -> bool:
            found[:] = [line for line in self.text(since).splitlines() if predicate(line)]
            return bool(found)

        try:
            wait_until(ready, f"log line in {self.path}", timeout=timeout)
        except ServerError:
            raise ServerError(f"no matching line in {self.path}; it has:\n{self.text(since)[-4000:]}") from None
        return found[0]


# ---------------------------------------------------------------- Dovecot


@dataclass
class Dovecot:
    """A private Dovecot 2.3 POP3 (`port`) and IMAP (`imap_port`) server on 127.0.0.1 with
    passwd-file users.

    `trusted_networks` become `login_trusted_networks`: clients there may send XCLIENT (POP3)
    or ID x-originating-ip (IMAP) and are then logged and rate-limited by the address they forward.
    """

    users: Mapping[str, str] = field(default_factory=lambda: {"alice": "alice-pw", "bob": "bob-pw"})
    trusted_networks: Iterable[str] = ("127.0.0.1/32",)
    host: str = "127.0.0.1"
    master_users: Mapping[str, str] = field(default_factory=dict)  # may log in as anyone (SASL authzid)
    auth_mechanisms: str = "plain login cram-md5"  # Dovecot's auth_mechanisms (APOP is "apop")
    extra_config: str = ""  # dovecot.conf lines appended (auth_policy_* settings, say)

    def __post_init__(self) -> None:
        self.directory = short_directory("pb-dovecot-")
        self.port = free_port(self.host)
        self.imap_port = free_port(self.host)
        self.config_path = self.directory / "dovecot.conf"
        self.passwd_path = self.directory / "passwd"
        self.mail_root = self.directory / "mail"
        self.log = LogFile(self.directory / "dovecot.log")
        self.instance_name = f"popbridge-test-{uuid.uuid4().hex[:8]}"
        self._started = False

    @property
    def log_path(self) -> Path:
        return self.log.path

    info_path = log_path  # Dovecot's info_log_path: the same file

    def config_text(self) -> str:
        d = self.directory
        trusted = " ".join(self.trusted_networks)
        return f"""\
# private test instance, written by tests/integration/servers.py
instance_name = {self.instance_name}
base_dir = {d}/run
state_dir = {d}/state
protocols = pop3 imap
listen = {self.host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = {self.auth_mechanisms}
auth_verbose = yes
auth_failure_delay = 0
login_trusted_networks = {trusted}
login_log_format_elements = user=<%u> method=%m rip=%r rport=%b lip=%l mpid=%e %c session=<%{{session}}>
log_path = {self.log.path}
info_log_path = {self.log.path}
debug_log_path = {self.log.path}
first_valid_uid = {MAIL_UID}
first_valid_gid = {MAIL_GID}
mail_location = maildir:{self.mail_root}/%u
mail_max_userip_connections = 50
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  master = yes
  pass = yes
  args = scheme=PLAIN username_format=%u {self.directory}/master-users
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_path}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_path}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service anvil {{
  # the auth process cannot reach this socket, so it disables its failed-login penalty
  # (2, 6, 10, 15 s per client address): failed-login tests stay fast
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
  }}
}}
{self.extra_config}"""

    def start(self) -> "Dovecot":
        dovecot = binary("dovecot")
        self.mail_root.mkdir()
        os.chown(self.mail_root, MAIL_UID, MAIL_GID)
        self.passwd_path.write_text(
            "".join(
                f"{user}:{{PLAIN}}{password}:{MAIL_UID}:{MAIL_GID}::{self.mail_root}/{user}::\n"
                for user, password in self.users.items()
            )
        )
        self.passwd_path.chmod(0o644)
        master = self.directory / "master-users"
        master.write_text("".join(f"{user}:{{PLAIN}}{password}\n" for user, password in self.master_users.items()))
        master.chmod(0o644)
        for user in self.users:
            self.maildir(user)
        self.config_path.write_text(self.config_text())
        _run([dovecot, "-c", str(self.config_path), "-n"], "dovecot config check")
        # dovecot keeps the caller's stdout open: never hand it our pipes
        subprocess.run(
            [dovecot, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )
        self._started = True
        try:
            wait_until(self._answers, f"dovecot on {self.host}:{self.port}")
        except ServerError as e:
            self.stop()
            raise ServerError(f"{e}\n{_tail(self.log.path)}") from None
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                if not s.recv(512).startswith(b"+OK"):
                    return False
            with socket.create_connection((self.host, self.imap_port), timeout=2) as s:
                return s.recv(512).startswith(b"* OK")
        except OSError:
            return False

    def _master_pid(self) -> int | None:
        try:
            return int((self.directory / "run" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        pid = self._master_pid()
        subprocess.run(
            [binary("doveadm"), "-c", str(self.config_path), "stop"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        if pid is not None:
            try:
                wait_until(lambda: not _pid_alive(pid), "dovecot stop", timeout=15)
            except ServerError:
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def maildir(self, user: str) -> Path:
        """The user's Maildir, created (owned by the mail uid) if missing."""
        root = self.mail_root / user
        for sub in ("", "cur", "new", "tmp"):
            path = root / sub
            path.mkdir(exist_ok=True)
            os.chown(path, MAIL_UID, MAIL_GID)
            path.chmod(0o700)
        return root

    def deliver(self, user: str, message: bytes) -> Path:
        """Drop `message` into `user`'s Maildir/new, as a local delivery agent would."""
        maildir = self.maildir(user)
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.popbridge-test"
        temporary = maildir / "tmp" / name
        temporary.write_bytes(message)
        os.chown(temporary, MAIL_UID, MAIL_GID)
        final = maildir / "new" / name
        temporary.rename(final)
        return final

    def __enter__(self) -> "Dovecot":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- Postfix

_MASTER_CF = """\
# private test instance, written by tests/integration/servers.py: nothing chrooted
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
class Postfix:
    """A private Postfix whose smtpd (127.0.0.1, high port) lets only 127.0.0.1 and clients
    the policy service at `policy_socket` approves relay; everything accepted is discarded."""

    policy_socket: Path
    host: str = "127.0.0.1"
    main_extra: str = ""  # main.cf lines appended (a later line overrides an earlier one)
    master_extra: str = ""  # master.cf lines appended (more services)

    def __post_init__(self) -> None:
        self.policy_socket = check_socket_path(Path(self.policy_socket).absolute())
        self.directory = short_directory("pb-postfix-")
        self.config_directory = self.directory / "etc"
        self.port = free_port(self.host)
        self.log = LogFile(self.directory / "maillog")
        self._started = False

    def main_cf(self) -> str:
        d = self.directory
        return f"""\
# private test instance, written by tests/integration/servers.py
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
            return _run([binary("postfix"), "-c", str(self.config_directory), *args], f"postfix {args[0]}")
        except ServerError as e:
            raise ServerError(f"{e}\n{_tail(self.log.path)}") from None

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
        try:
            wait_until(self._answers, f"postfix smtpd on {self.host}:{self.port}")
        except ServerError as e:
            self.stop()
            raise ServerError(f"{e}\n{_tail(self.log.path)}") from None
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                return s.recv(512).startswith(b"220")
        except OSError:
            return False

    def _master_pid(self) -> int | None:
        try:
            return int((self.directory / "queue" / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        pid = self._master_pid()
        subprocess.run(
            [binary("postfix"), "-c", str(self.config_directory), "stop"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        if pid is not None:
            try:
                wait_until(lambda: not _pid_alive(pid), "postfix stop", timeout=15)
            except ServerError:
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

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


# ---------------------------------------------------------------- Redis


class ForegroundServer:
    """A server run in the foreground as a child of the tests (redis-server, slapd): stopped,
    killed, paused and cleaned up the same way. Subclasses set `name`, `process`, `directory`."""

    name = "server"
    process: "subprocess.Popen[bytes] | None"
    directory: Path

    def _why_dead(self) -> str | None:
        code = self.process.poll() if self.process is not None else None
        return None if code is None else f"{self.name} exited with status {code}"

    def kill(self) -> None:
        """SIGKILL, as a crash or an unplugged server would end it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Redis(ForegroundServer):
    """A private redis-server on 127.0.0.1 with its own directory. Writes are appended to an
    AOF fsynced on every write, so a killed server keeps what it acknowledged; `kill()` or
    `stop()`, then `start()` again, restarts it on the same port with the same data."""

    host: str = "127.0.0.1"
    replica_of: "Redis | None" = None  # start as a replica of this master
    name = "redis-server"

    def __post_init__(self) -> None:
        self.directory = short_directory("pb-redis-")
        self.port = free_port(self.host)
        self.log = LogFile(self.directory / "redis.log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> "Redis":
        argv = [
            binary("redis-server"), "--port", str(self.port), "--bind", self.host, "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
            "--logfile", str(self.log.path),
        ]
        if self.replica_of is not None:
            argv += ["--replicaof", self.replica_of.host, str(self.replica_of.port)]
        # like dovecot, never hand it our pipes
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(self.answers, f"redis-server on {self.host}:{self.port}", alive=self._why_dead)
        except ServerError as e:
            self.stop()
            raise ServerError(f"{e}\n{_tail(self.log.path)}") from None
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@dataclass
class RedisSentinel(ForegroundServer):
    """A private redis-sentinel on 127.0.0.1 watching `master` as service `service`, with a
    quorum of 2 and a master counted down after `down_after` seconds without an answer."""

    master: Redis
    service: str = "popbridge"
    down_after: float = 1.0
    host: str = "127.0.0.1"
    name = "redis-sentinel"

    def __post_init__(self) -> None:
        self.directory = short_directory("pb-sentinel-")
        self.port = free_port(self.host)
        self.log = LogFile(self.directory / "sentinel.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "RedisSentinel":
        config = self.directory / "sentinel.conf"  # sentinel rewrites it: its own copy
        config.write_text(f"""\
port {self.port}
bind {self.host}
dir {self.directory}
logfile {self.log.path}
daemonize no
sentinel monitor {self.service} {self.master.host} {self.master.port} 2
sentinel down-after-milliseconds {self.service} {int(self.down_after * 1000)}
sentinel failover-timeout {self.service} 10000
sentinel parallel-syncs {self.service} 1
""")
        argv = [binary("redis-sentinel"), str(config)]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: self.master_state() is not None, f"redis-sentinel on {self.host}:{self.port}", alive=self._why_dead)
        except ServerError as e:
            self.stop()
            raise ServerError(f"{e}\n{_tail(self.log.path)}") from None
        return self

    def master_state(self) -> "dict[str, Any] | None":
        """``SENTINEL MASTER service`` (redis-py's parse: ip, port, num-slaves, num-other-sentinels
        ...), or None while this sentinel does not answer."""
        try:
            return redis.Redis(self.host, self.port, socket_timeout=1).sentinel_master(self.service)  # type: ignore[no-any-return]
        except redis.RedisError:
            return None


# ---------------------------------------------------------------- OpenLDAP slapd

LDAP_BASE = "dc=example,dc=org"
LDAP_EXEMPT_GROUP = f"cn=exempt,ou=groups,{LDAP_BASE}"
LDAP_BIND_DN = f"cn=popbridge,ou=services,{LDAP_BASE}"
LDAP_BIND_PASSWORD = "popbridge-bind-pw"
_LDAP_ADMIN_DN, _LDAP_ADMIN_PASSWORD = f"cn=admin,{LDAP_BASE}", "admin-pw"


@dataclass
class Slapd(ForegroundServer):
    """A private OpenLDAP 2.5 slapd on 127.0.0.1: cn=config built with ``slapadd -n0``, an mdb
    database in its own directory, and the memberof overlay, so members of the groupOfNames
    `LDAP_EXEMPT_GROUP` carry ``memberOf``. `people` maps uid -> extra attributes (``mailHost``);
    `exempt` lists the uids in the group. Only `LDAP_BIND_DN` (a simple bind) may read entries.

    slapd runs in the foreground (``-d``), so `pause`/`resume` (SIGSTOP/SIGCONT) and `stop` act
    on the process itself; `start` again reuses the database on the same port.
    """

    people: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    exempt: Iterable[str] = ()
    host: str = "127.0.0.1"
    name = "slapd"

    def __post_init__(self) -> None:
        self.directory = short_directory("pb-slapd-")
        self.port = free_port(self.host)
        self.log = LogFile(self.directory / "slapd.log")
        self.process: subprocess.Popen[bytes] | None = None
        self._loaded = False

    @property
    def url(self) -> str:
        return f"ldap://{self.host}:{self.port}"

    def config_ldif(self) -> str:
        d = self.directory
        schemas = "".join(f"include: file:///etc/ldap/schema/{name}.ldif\n\n" for name in ("core", "cosine", "inetorgperson", "misc"))
        return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {d}/slapd.pid

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: memberof

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {LDAP_BASE}
olcRootDN: {_LDAP_ADMIN_DN}
olcRootPW: {_LDAP_ADMIN_PASSWORD}
olcDbDirectory: {d}/db
olcDbMaxSize: 16777216
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by dn.exact="{LDAP_BIND_DN}" read by * none

dn: olcOverlay={{0}}memberof,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: {{0}}memberof
olcMemberOfGroupOC: groupOfNames
olcMemberOfMemberAD: member
olcMemberOfMemberOfAD: memberOf
"""

    def data_ldif(self) -> str:
        entries = [
            f"dn: {LDAP_BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: example\n",
            *(f"dn: ou={ou},{LDAP_BASE}\nobjectClass: organizationalUnit\nou: {ou}\n" for ou in ("people", "groups", "services")),
            f"dn: {LDAP_BIND_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
            f"cn: popbridge\nuserPassword: {LDAP_BIND_PASSWORD}\n",
        ]
        for uid, extra in self.people.items():
            lines = [f"dn: uid={uid},ou=people,{LDAP_BASE}", "objectClass: inetOrgPerson",
                     "objectClass: inetLocalMailRecipient", f"uid: {uid}", f"cn: {uid}", f"sn: {uid}"]
            lines += [f"{name}: {value}" for name, value in extra.items()]
            entries.append("\n".join(lines) + "\n")
        return "\n".join(entries)

    def start(self) -> "Slapd":
        if not self._loaded:
            config, db = self.directory / "slapd.d", self.directory / "db"
            config.mkdir()
            db.mkdir()
            (self.directory / "config.ldif").write_text(self.config_ldif())
            (self.directory / "data.ldif").write_text(self.data_ldif())
            _run([binary("slapadd"), "-n0", "-F", str(config), "-l", str(self.directory / "config.ldif")], "slapadd -n0")
            _run([binary("slapadd"), "-n1", "-F", str(config), "-l", str(self.directory / "data.ldif")], "slapadd -n1")
        with open(self.log.path, "ab") as output:
            self.process = subprocess.Popen(
                [binary("slapd"), "-h", f"{self.url}/", "-F", str(self.directory / "slapd.d"), "-d", "256"],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: tcp_listening(self.host, self.port), f"slapd on {self.url}", alive=self._why_dead)
            if not self._loaded:
                self._add_exempt_group()  # through slapd, so that the memberof overlay sees it
        except ServerError as e:
            self.stop()
            raise ServerError(f"{e}\n{_tail(self.log.path)}") from None
        self._loaded = True
        return self

    def _add_exempt_group(self) -> None:
        from ldap3 import Connection, Server

        members = [f"uid={uid},ou=people,{LDAP_BASE}" for uid in self.exempt] or [_LDAP_ADMIN_DN]
        with Connection(Server(self.url), _LDAP_ADMIN_DN, _LDAP_ADMIN_PASSWORD, auto_bind=True) as admin:
            if not admin.add(LDAP_EXEMPT_GROUP, ["groupOfNames"], {"cn": "exempt", "member": members}):
                raise ServerError(f"adding {LDAP_EXEMPT_GROUP}: {admin.result}")

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, but nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        # the stop reaches slapd's threads one by one; until all are stopped it may still answer
        wait_until(lambda: self._all_threads_in_state("T"), "slapd stopped by SIGSTOP", timeout=10)

    def _all_threads_in_state(self, state: str) -> bool:
        assert self.process is not None
        tasks = Path(f"/proc/{self.process.pid}/task")
        try:
            # /proc/PID/task/TID/stat: "TID (comm) STATE ...": comm may hold spaces, so split after ")"
            return all(
                (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == state for task in tasks.iterdir()
            )
        except (OSError, IndexError):
            return False

    def __enter__(self) -> "Slapd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# ---------------------------------------------------------------- an SMTP sink


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


# ---------------------------------------------------------------- popbridge


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
        forward = "true" if self.forward_client_address else "false"
        return f"""\
[ledger]
ttl = {self.ttl}
store = "{self.store}"

[[proxy]]
protocol = "pop3"
listen = "tcp:port={self.port}:interface={self.host}"
backend = "tcp:host=127.0.0.1:port={self.backend_port}"
forward_client_address = {forward}
{self.proxy_extra}
{self._imap_proxy_config()}
{self._lookup_tables()}"""

    def _imap_proxy_config(self) -> str:
        if self.imap_backend_port is None:
            return ""
        forward = "true" if self.forward_client_address else "false"
        return f"""
[[proxy]]
protocol = "imap4"
listen = "tcp:port={self.imap_port}:interface={self.host}"
backend = "tcp:host=127.0.0.1:port={self.imap_backend_port}"
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
            raise ServerError(f"{e}\npopbridge output:\n{_tail(self.log.path)}") from None
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
        """dovecot.conf lines that send feed `name` Dovecot's auth-policy requests (README's
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


# ---------------------------------------------------------------- clients


class BoundPOP3(poplib.POP3):
    """poplib.POP3 connecting from a chosen local address (127.0.0.x on loopback)."""

    def __init__(self, host: str, port: int, source: str, timeout: float = 30) -> None:
        self.source = source
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def pop3_login(port: int, source: str, user: str, password: str, host: str = "127.0.0.1") -> bytes:
    """USER/PASS from `source`, then QUIT; returns the reply to PASS (poplib.error_proto on -ERR)."""
    pop = BoundPOP3(host, port, source)
    try:
        pop.user(user)
        reply = pop.pass_(password)
        pop.quit()
        return reply
    finally:
        pop.close()


def netstring(text: str) -> bytes:
    return b"%d:%s," % (len(text.encode()), text.encode())


def socketmap_answer(socket_path: Path | str, key: str, name: str = "access") -> bytes:
    """One socketmap query (`name` `key`) on a connection of its own; the netstring answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(socket_path))
        s.sendall(netstring(f"{name} {key}"))
        return s.recv(4096)


def policy_action(socket_path: Path | str, address: str, timeout: float = 10.0, **attributes: str) -> str:
    """One Postfix policy request (RCPT) for `address`, with `attributes` (``sender=...``) as
    further lines; the `action=` line of the answer."""
    lines = ["request=smtpd_access_policy", "protocol_state=RCPT", f"client_address={address}"]
    lines += [f"{name}={value}" for name, value in attributes.items()]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path))
        s.sendall(("\n".join(lines) + "\n\n").encode())
        answer = b""
        while not answer.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                raise ServerError(f"policy socket closed after {answer!r}")
            answer += chunk
    return answer.decode().strip()


def pop3_retr_raw(port: int, source: str, user: str, password: str, which: int = 1, host: str = "127.0.0.1") -> bytes:
    """The exact bytes the server sends for RETR `which`: status line, stuffed body, `.` line."""
    pop = BoundPOP3(host, port, source)
    try:
        pop.user(user)
        pop.pass_(password)
        pop._putcmd(f"RETR {which}")
        lines = [pop.file.readline()]
        if not lines[0].startswith(b"+OK"):
            raise poplib.error_proto(lines[0])
        while lines[-1] != b".\r\n":
            line = pop.file.readline()
            if not line:
                raise poplib.error_proto("connection closed inside RETR")
            lines.append(line)
        pop.quit()
        return b"".join(lines)
    finally:
        pop.close()


def curl_pop3(
    port: int, source: str, user: str, password: str, *options: str, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    """`curl pop3://user:password@host:port/` from `source`: lists the mailbox (exit 0), or
    exit 67 when the login is refused. `options` go to curl (`--login-options AUTH=PLAIN`)."""
    return subprocess.run(
        [
            binary("curl"),
            *("--silent", "--show-error", "--max-time", "30", "--interface", source),
            *options,
            f"pop3://{user}:{password}@{host}:{port}/",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def message_of_size(size: int, subject: str = "big") -> bytes:
    """An RFC 5322 message of about `size` bytes with CRLF lines, some starting with a dot so
    the POP3 dot-stuffing is exercised."""
    header = f"From: sender@example.org\r\nTo: dave@example.org\r\nSubject: {subject}\r\n\r\n".encode()
    lines = [header]
    total, n = len(header), 0
    while total < size:
        prefix = "." if n % 7 == 0 else ""
        line = f"{prefix}line {n:08d} " + "x" * 60 + "\r\n"
        lines.append(line.encode())
        total += len(line)
        n += 1
    lines.append(b".\r\n..\r\nend\r\n")
    return b"".join(lines)


StartPopbridge = Callable[..., Popbridge]  # the popbridge_daemon fixture: start(ttl=..., ...)
