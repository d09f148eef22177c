"""A private Dovecot (POP3 and IMAP4) with passwd-file users and Maildirs."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .processes import DaemonisingServer, LogFile, binary, free_port, run_checked, short_directory, wait_started


MAIL_UID = MAIL_GID = 65534  # nobody/nogroup: Maildirs need an existing uid, not a system user


@dataclass
class Dovecot(DaemonisingServer):
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
    name = "dovecot"

    def __post_init__(self) -> None:
        self.directory = short_directory("pb-dovecot-")
        self.port = free_port(self.host)
        self.imap_port = free_port(self.host)
        self.config_path = self.directory / "dovecot.conf"
        self.passwd_path = self.directory / "passwd"
        self.mail_root = self.directory / "mail"
        self.log = LogFile(self.directory / "dovecot.log")
        self.instance_name = f"popbridge-test-{uuid.uuid4().hex[:8]}"
        self.pid_file = self.directory / "run" / "master.pid"
        self._started = False

    @property
    def log_path(self) -> Path:
        return self.log.path

    info_path = log_path  # Dovecot's info_log_path: the same file

    def config_text(self) -> str:
        d = self.directory
        trusted = " ".join(self.trusted_networks)
        return f"""\
# private test instance, written by tests/integration/servers/
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
        run_checked([dovecot, "-c", str(self.config_path), "-n"], "dovecot config check")
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
        wait_started(self._answers, f"dovecot on {self.host}:{self.port}", self.log.path, self.stop)
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

    def stop_command(self) -> list[str]:
        return [binary("doveadm"), "-c", str(self.config_path), "stop"]

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
