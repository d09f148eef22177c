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
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
    """A private Dovecot 2.3 POP3 server on 127.0.0.1 with passwd-file users.

    `trusted_networks` become `login_trusted_networks`: clients there may send XCLIENT (POP3)
    and are then logged and rate-limited by the address they forward.
    """

    users: Mapping[str, str] = field(default_factory=lambda: {"alice": "alice-pw", "bob": "bob-pw"})
    trusted_networks: Iterable[str] = ("127.0.0.1/32",)
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.directory = short_directory("pb-dovecot-")
        self.port = free_port(self.host)
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
protocols = pop3
listen = {self.host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login cram-md5
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
    port = 0
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
"""

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
                return s.recv(512).startswith(b"+OK")
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
        (self.config_directory / "master.cf").write_text(_MASTER_CF.format(host=self.host, port=self.port))
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
    generated file (more [[proxy]] or [[lookup]] tables, say).
    """

    backend_port: int
    ttl: float = 1800
    forward_client_address: bool = False
    policy_socket: Path | None = None
    host: str = "127.0.0.1"
    extra_config: str = ""

    def __post_init__(self) -> None:
        self.directory = short_directory("pb-daemon-")
        self.port = free_port(self.host)
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
store = "memory"

[[proxy]]
protocol = "pop3"
listen = "tcp:port={self.port}:interface={self.host}"
backend = "tcp:host=127.0.0.1:port={self.backend_port}"
forward_client_address = {forward}

[[lookup]]
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

    def start(self) -> "Popbridge":
        self.config_path.write_text(self.config_text())
        with open(self.log.path, "wb") as output:
            self.process = subprocess.Popen(
                [*popbridge_command(), "run", "--config", str(self.config_path)],
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

    def _listening(self) -> bool:
        sockets = (self.policy_socket, self.socketmap_socket, self.whoson_socket, self.control_socket)
        return tcp_listening(self.host, self.port) and all(unix_connectable(path) for path in sockets)

    def _why_dead(self) -> str | None:
        assert self.process is not None
        code = self.process.poll()
        return None if code is None else f"popbridge exited with status {code}"

    def output(self) -> str:
        """Everything the daemon logged so far."""
        return self.log.text()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

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
    port: int, source: str, user: str, password: str, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    """`curl pop3://user:password@host:port/` from `source`: lists the mailbox (exit 0), or
    exit 67 when the login is refused."""
    return subprocess.run(
        [
            binary("curl"),
            *("--silent", "--show-error", "--max-time", "30", "--interface", source),
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
