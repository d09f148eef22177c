"""Processes, ports and logs for the private servers: binaries, free loopback ports, short
unix-socket directories, waiting on a deadline (never a fixed sleep), stopping, log files."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


START_TIMEOUT = 20.0


MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the terminating NUL


class ServerError(RuntimeError):
    """A private server did not start or stop as expected; the message carries its log."""


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


def run_checked(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ServerError(f"{what}: {' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def log_tail(path: Path, limit: int = 4000) -> str:
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


def wait_started(ready: Callable[[], bool], what: str, log: Path, stop: Callable[[], None],
                 alive: Callable[[], str | None] = lambda: None) -> None:
    """Wait until a server just started answers; if it never does, stop it and fail with the
    tail of its log, so that a failed start leaves no process behind and says why."""
    try:
        wait_until(ready, what, alive=alive)
    except ServerError as e:
        stop()
        raise ServerError(f"{e}\n{log_tail(log)}") from None


def reap_master(pid: int | None, what: str) -> None:
    """After a daemonising server was told to stop: wait for its master process `pid` to go,
    and SIGKILL it if it is still there after 15 s (a stuck stop must not outlive the tests)."""
    if pid is None:
        return
    try:
        wait_until(lambda: not pid_alive(pid), what, timeout=15)
    except ServerError:
        os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DaemonisingServer:
    """A server that puts itself in the background (dovecot, postfix): stopped by its own stop
    command, then waited for through its master's pid file. Subclasses set `name`, `directory`,
    `pid_file`, `stop_command` and `_started` (whether `start` ran since the last stop)."""

    name = "server"
    directory: Path
    pid_file: Path
    _started: bool
    stop_command: Callable[[], list[str]]  # argv, looked up when stopping (the binary may be missing)

    def master_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        pid = self.master_pid()
        subprocess.run(self.stop_command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        reap_master(pid, f"{self.name} stop")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


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
