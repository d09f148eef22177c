"""What the main process tells a worker at its start: its name, its sockets and their settings."""

from dataclasses import dataclass

from popbridge.settings import ProxyConfig


@dataclass(frozen=True)
class WorkerSocket:
    fd: int  # the descriptor number in the worker (3, 4, ...)
    family: int  # socket.AF_INET, AF_INET6 or AF_UNIX
    spec: ProxyConfig


@dataclass(frozen=True)
class WorkerSettings:
    name: str  # "worker 1": the log's system for its lines, and its metrics label
    sockets: tuple[WorkerSocket, ...]
    routing: bool  # users are routed by the directory (asked of the main process)
    debugging: bool  # debug log lines are wanted
    log_to_stderr: bool  # stderr is the daemon's log: write lines there, not over the channel
