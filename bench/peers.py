"""The servers the benchmark compares: a tuned private Dovecot, nginx's mail proxy (with its
auth_http helper) and perdition, each in a directory of its own on loopback high ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.integration.servers.dovecot import Dovecot
from tests.integration.servers.processes import ServerError, find_binary, free_port, short_directory, stop_process, tcp_connectable, wait_until

HERE = Path(__file__).resolve().parent
NGINX_MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
PERDITION_REGEX_MAP = Path("/usr/lib/x86_64-linux-gnu/libperditiondb_posix_regex.so.0")


class BenchDovecot(Dovecot):
    """The test fixture's Dovecot, made fit for load: quiet logs, and (`tuning="fast"`) login and
    mail processes that serve many clients instead of a fork per login, as busy sites run it."""

    tuning: str = "fast"

    def config_text(self) -> str:
        text = super().config_text().replace("auth_verbose = yes", "auth_verbose = no")
        if self.tuning == "fast":
            login = (
                "  service_count = 0\n  process_min_avail = 2\n  client_limit = 10000\n"
            )
            for service in ("pop3-login", "imap-login"):
                text = text.replace(
                    f"service {service} {{\n", f"service {service} {{\n{login}", 1
                )
            mail = "  service_count = 0\n  client_limit = 200\n  process_limit = 200\n  process_min_avail = 2\n"
        else:  # Dovecot's defaults (a login process and a mail process per session), limits raised
            login = "  process_limit = 12000\n  client_limit = 1\n"
            for service in ("pop3-login", "imap-login"):
                text = text.replace(
                    f"service {service} {{\n", f"service {service} {{\n{login}", 1
                )
            mail = "  process_limit = 12000\n"
        return (
            text
            + "default_client_limit = 20000\ndefault_process_limit = 12000\n"
            + "mail_max_userip_connections = 100000\n"
            + f"service pop3 {{\n{mail}}}\nservice imap {{\n{mail}}}\n"
            + "service auth {\n  client_limit = 20000\n}\nservice anvil {\n  client_limit = 20000\n}\n"
        )


def _tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds used by `root`, its live descendants, and the children they reaped."""
    total = 0
    for pid in _tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def tree_rss(root: int) -> int:
    """Bytes of resident memory of `root` and its descendants (RSS, shared pages counted in each)."""
    total = 0
    for pid in _tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class AuthHttp:
    """nginx's auth_http answerer, `bench/auth_http.py`, as a process of its own (its CPU is
    counted apart from nginx's)."""

    def __init__(self, pop3_port: int, imap_port: int) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "auth_http.py"),
                str(self.port),
                str(pop3_port),
                str(imap_port),
            ],
            stdin=subprocess.DEVNULL,
        )
        wait_until(lambda: tcp_connectable("127.0.0.1", self.port), "auth_http helper")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Nginx:
    """nginx's mail proxy (Debian nginx + libnginx-mod-mail) on POP3 and IMAP ports."""

    name = "nginx"

    @staticmethod
    def missing() -> str | None:
        if find_binary("nginx") is None:
            return "nginx not installed"
        if not NGINX_MAIL_MODULE.exists():
            return "libnginx-mod-mail not installed"
        return None

    def __init__(self, pop3_backend: int, imap_backend: int, workers: int = 1) -> None:
        self.directory = short_directory("pb-bench-nginx-")
        self.pop3_port, self.imap_port = free_port(), free_port()
        self.auth = AuthHttp(pop3_backend, imap_backend)
        config = self.directory / "nginx.conf"
        config.write_text(
            f"""\
load_module {NGINX_MAIL_MODULE};
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {self.directory}/nginx.pid;
error_log {self.directory}/error.log warn;
events {{
    worker_connections 30000;
}}
mail {{
    auth_http 127.0.0.1:{self.auth.port}/auth;
    proxy_pass_error_message on;
    server {{
        listen 127.0.0.1:{self.pop3_port};
        protocol pop3;
        pop3_auth plain;
    }}
    server {{
        listen 127.0.0.1:{self.imap_port};
        protocol imap;
    }}
}}
"""
        )
        self.log = open(self.directory / "stderr.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                find_binary("nginx"),
                "-e",
                str(self.directory / "error.log"),
                "-p",
                str(self.directory),
                "-c",
                str(config),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: (
                tcp_connectable("127.0.0.1", self.pop3_port)
                and tcp_connectable("127.0.0.1", self.imap_port)
            ),
            "nginx mail proxy",
            alive=lambda: (
                None
                if self.process.poll() is None
                else (self.directory / "error.log").read_text()[-2000:]
            ),
        )

    def pids(self) -> list[int]:
        return [self.process.pid]

    def helper_cpu(self) -> float:
        return tree_cpu(self.auth.process.pid)

    def stop(self) -> None:
        stop_process(self.process, 15)
        self.auth.stop()
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class Perdition:
    """perdition (Debian perdition), one daemon per protocol, with a static regex popmap that
    sends every user to the private Dovecot."""

    name = "perdition"

    @staticmethod
    def missing() -> str | None:
        if find_binary("perdition") is None:
            return "perdition not installed"
        if not PERDITION_REGEX_MAP.exists():
            return f"{PERDITION_REGEX_MAP} missing"
        return None

    def __init__(self, pop3_backend: int, imap_backend: int) -> None:
        self.directory = short_directory("pb-bench-perdition-")
        self.pop3_port, self.imap_port = free_port(), free_port()
        (self.directory / "perdition.conf").write_text("")
        self.log = open(self.directory / "output.log", "ab")  # noqa: SIM115 - closed in stop()
        self.processes = [
            self._start("POP3", self.pop3_port, pop3_backend),
            self._start("IMAP4", self.imap_port, imap_backend),
        ]
        wait_until(
            lambda: (
                tcp_connectable("127.0.0.1", self.pop3_port)
                and tcp_connectable("127.0.0.1", self.imap_port)
            ),
            "perdition",
            alive=lambda: next(
                (
                    f"perdition exited {p.returncode}"
                    for p in self.processes
                    if p.poll() is not None
                ),
                None,
            ),
        )

    def _start(self, protocol: str, port: int, backend: int) -> subprocess.Popen[bytes]:
        popmap = self.directory / f"popmap-{protocol}.re"
        popmap.write_text(f"(.*): 127.0.0.1:{backend}\n")
        return subprocess.Popen(
            [
                find_binary("perdition"),
                "--no_daemon",
                "-f",
                str(self.directory / "perdition.conf"),
                "-P",
                protocol,
                "-b",
                "127.0.0.1",
                "-l",
                str(port),
                "--ssl_mode",
                "none",
                "-M",
                str(PERDITION_REGEX_MAP),
                "-m",
                str(popmap),
                "-n",
                "--pid_file",
                str(self.directory / f"{protocol}.pid"),
                "-u",
                "nobody",
                "-g",
                "nogroup",
                "-q",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def helper_cpu(self) -> float:
        return 0.0

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process, 15)
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class TwistedRelay:
    """bench/twisted_relay.py: Twisted's portforward with nothing else, the floor for popbridge."""

    name = "twisted-relay"

    @staticmethod
    def missing() -> str | None:
        return None

    def __init__(self, pop3_backend: int, imap_backend: int, python: str = sys.executable) -> None:
        self.pop3_port, self.imap_port = free_port(), free_port()
        self.process = subprocess.Popen(
            [
                python,
                str(HERE / "twisted_relay.py"),
                f"{self.pop3_port}:{pop3_backend}",
                f"{self.imap_port}:{imap_backend}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        wait_until(
            lambda: tcp_connectable("127.0.0.1", self.pop3_port)
            and tcp_connectable("127.0.0.1", self.imap_port),
            "twisted relay",
            alive=lambda: None
            if self.process.poll() is None
            else f"twisted relay exited {self.process.returncode}",
        )

    def pids(self) -> list[int]:
        return [self.process.pid]

    def helper_cpu(self) -> float:
        return 0.0

    def stop(self) -> None:
        stop_process(self.process, 15)


__all__ = ["BenchDovecot", "Nginx", "Perdition", "ServerError", "TwistedRelay", "tree_cpu", "tree_rss"]
