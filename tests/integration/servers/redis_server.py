"""Private redis-server instances: a master (AOF on), replicas and sentinels."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from typing import Any

import redis

from .processes import ForegroundServer, LogFile, binary, free_port, short_directory, wait_started


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
        wait_started(self.answers, f"redis-server on {self.host}:{self.port}", self.log.path, self.stop, alive=self._why_dead)
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
        wait_started(lambda: self.master_state() is not None, f"redis-sentinel on {self.host}:{self.port}", self.log.path, self.stop, alive=self._why_dead)
        return self

    def master_state(self) -> "dict[str, Any] | None":
        """``SENTINEL MASTER service`` (redis-py's parse: ip, port, num-slaves, num-other-sentinels
        ...), or None while this sentinel does not answer."""
        try:
            return redis.Redis(self.host, self.port, socket_timeout=1).sentinel_master(self.service)  # type: ignore[no-any-return]
        except redis.RedisError:
            return None
