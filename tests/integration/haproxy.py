"""A private HAProxy (mode tcp) in front of popbridge's haproxy: listener, for the PROXY tests.

It runs in the foreground (`-db`) as a child of the test, with one frontend per PROXY version:
`v1_port` forwards with ``send-proxy``, `v2_port` with ``send-proxy-v2``. No health checks, so
popbridge sees only the connections the test makes.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from .servers import ServerError, binary, free_port, log_tail, short_directory, stop_process, tcp_listening, wait_until

CONFIG = """\
global
    maxconn 100

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend pop3_proxy_v1
    bind {host}:{v1_port}
    default_backend popbridge_v1

backend popbridge_v1
    server popbridge {host}:{target_port} send-proxy

frontend pop3_proxy_v2
    bind {host}:{v2_port}
    default_backend popbridge_v2

backend popbridge_v2
    server popbridge {host}:{target_port} send-proxy-v2
"""


@dataclass
class Haproxy:
    target_port: int  # popbridge's haproxy:tcp: listener
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.directory = short_directory("pb-haproxy-")
        self.v1_port, self.v2_port = free_port(self.host), free_port(self.host)
        self.config_path = self.directory / "haproxy.cfg"
        self.log_path = self.directory / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Haproxy:
        self.config_path.write_text(CONFIG.format(host=self.host, v1_port=self.v1_port, v2_port=self.v2_port, target_port=self.target_port))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [binary("haproxy"), "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_until(
                lambda: tcp_listening(self.host, self.v1_port) and tcp_listening(self.host, self.v2_port),
                "haproxy frontends", alive=self._why_dead,
            )
        except ServerError as e:
            self.stop()
            raise ServerError(f"{e}\n{log_tail(self.log_path)}") from None
        return self

    def _why_dead(self) -> str | None:
        assert self.process is not None
        code = self.process.poll()
        return None if code is None else f"haproxy exited with status {code}: {log_tail(self.log_path)}"

    def stop(self) -> None:
        stop_process(self.process)
