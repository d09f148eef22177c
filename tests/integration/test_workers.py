"""`[daemon] workers = 2` with the real daemon, real Dovecot and real Postfix: logins spread over
both workers and all recorded; SIGKILL of a worker during a login storm loses no login a client
was told about; SIGHUP and SIGTERM reach every worker."""

from __future__ import annotations

import json
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .imap_clients import BoundIMAP4, close, imap_login
from .servers import (
    BoundPOP3,
    Dovecot,
    Popbridge,
    Postfix,
    ServerError,
    policy_action,
    pop3_login,
    socketmap_answer,
    wait_until,
)

pytestmark = pytest.mark.realserver

WORKERS = "\n[daemon]\nworkers = 2\n"
SERVING = re.compile(r"worker (\d+) \(pid (\d+)\) serving")


def split_daemon(dovecot: Dovecot, daemons: list[Popbridge], policy_socket: Path | None = None, **options: object) -> Popbridge:
    daemon = Popbridge(
        backend_port=dovecot.port, imap_backend_port=dovecot.imap_port, policy_socket=policy_socket,
        store="sqlite:ledger.sqlite3", extra_config=WORKERS, **options,  # type: ignore[arg-type]
    )
    daemons.append(daemon)
    try:
        daemon.start()
    except ServerError as e:
        pytest.fail(f"popbridge did not start: {e}", pytrace=False)
    serving_workers(daemon)
    return daemon


def serving_workers(daemon: Popbridge, since: int = 0) -> dict[int, int]:
    """Worker number -> pid, once both workers say they serve (in the log from `since` on)."""
    wait_until(lambda: {"1", "2"} <= {m[0] for m in SERVING.findall(daemon.log.text(since))}, "both workers to serve", timeout=20)
    return {int(number): int(pid) for number, pid in SERVING.findall(daemon.log.text(since))}


def worker_processes(daemon: Popbridge) -> list[int]:
    assert daemon.process is not None
    children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []



def login(daemon: Popbridge, source: str) -> str:
    """A POP3 login from even-numbered addresses, an IMAP login from odd ones."""
    assert daemon.imap_port is not None
    if int(source.rsplit(".", 1)[1]) % 2:
        return imap_login(daemon.imap_port, source, "alice", "alice-pw")
    return pop3_login(daemon.port, source, "alice", "alice-pw").decode()


def logged_in_by(daemon: Popbridge, since: int = 0) -> dict[str, set[str]]:
    """Client address -> the workers whose log says they logged it in."""
    found: dict[str, set[str]] = {}
    for worker, address in re.findall(r"\[worker (\d+)\] login succeeded: user 'alice' from ([0-9.]+)", daemon.log.text(since)):
        found.setdefault(address, set()).add(worker)
    return found


def test_200_logins_spread_over_two_workers_are_all_recorded_and_answered(dovecot, postfix: Postfix, policy_socket, daemons):
    daemon = split_daemon(dovecot, daemons, policy_socket=policy_socket)
    sources = [f"127.0.0.{n}" for n in range(40, 240)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(lambda source: login(daemon, source), sources))
    assert all(reply.startswith("+OK") or reply == "OK" for reply in replies)
    served = logged_in_by(daemon)
    assert set(served) == set(sources)
    assert {worker for workers in served.values() for worker in workers} == {"1", "2"}
    for source in sources:
        assert policy_action(daemon.policy_socket, source) == "action=OK", source
        assert socketmap_answer(daemon.socketmap_socket, source) == b"5:OK OK,", source
    for source in ("127.0.0.40", "127.0.0.41", "127.0.0.238", "127.0.0.239"):  # the real relay, both protocols
        assert postfix.rcpt_code(source) == 250
        assert postfix.postmap_query(source, daemon.socketmap_table("access")) == "OK"
    assert postfix.rcpt_code("127.0.0.240") == 554

    def counted() -> bool:
        stats = json.loads(daemon.cli("stats", "--json").stdout)
        succeeded = {name: value for name, value in stats["metrics"].items() if name.startswith("popbridge_logins_total{")}
        per_worker = [value for name, value in succeeded.items() if "worker=" in name]
        return stats["events"].get("login_succeeded") == 200 and sum(per_worker) == 200 and len(per_worker) >= 2

    wait_until(counted, "stats to add up both workers' 200 logins", timeout=10)


def test_a_sigkilled_worker_loses_no_told_login_and_comes_back(dovecot, daemons):
    daemon = split_daemon(dovecot, daemons)
    pids = serving_workers(daemon)
    told: list[str] = []
    sources = [f"127.0.0.{n}" for n in range(10, 250)]

    def attempt(source: str) -> None:
        try:
            reply = login(daemon, source)
        except Exception:  # reset by the kill, or refused while it was recorded: not told
            return
        if reply.startswith("+OK") or reply == "OK":
            told.append(source)

    mark = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        storm = [pool.submit(attempt, source) for source in sources]
        wait_until(lambda: daemon.log.text().count("login succeeded") >= 30, "30 logins", timeout=30)
        mark = daemon.log.mark()
        killed = pids[1]
        os.kill(killed, signal.SIGKILL)
        for future in storm:
            future.result()
    assert len(told) > 30
    recorded = {login["client"]: login["user"] for login in json.loads(daemon.cli("list", "--json").stdout)["logins"]}
    assert {source: recorded.get(source) for source in told} == {source: "alice" for source in told}
    wait_until(lambda: len(SERVING.findall(daemon.log.text(mark))) == 1, "the killed worker to serve again", timeout=20)
    assert "worker 1 (pid %d) ended unexpectedly" % killed in daemon.log.text(mark)
    assert "2" in {w for workers in logged_in_by(daemon, since=mark).values() for w in workers}  # the other kept serving
    assert login(daemon, "127.0.0.252").startswith("+OK") and login(daemon, "127.0.0.253") == "OK"  # new logins work

    def every_session_ended() -> bool:  # the dead worker's open sessions were ended by the main process
        logins = json.loads(daemon.cli("list", "--json").stdout)["logins"]
        return len(logins) >= len(told) and all(login["expires"] is not None for login in logins)

    wait_until(every_session_ended, "every session, the killed worker's too, to have ended", timeout=10)


def test_sighup_replaces_every_worker_with_the_new_settings_and_open_sessions_go_on(dovecot, daemons):
    daemon = split_daemon(dovecot, daemons)
    before = serving_workers(daemon)
    pop = BoundPOP3("127.0.0.1", daemon.port, "127.0.0.60")
    pop.user("alice")
    assert pop.pass_("alice-pw").startswith(b"+OK")
    extra_port = daemon.port + 1 if daemon.port < 65000 else daemon.port - 1
    daemon.extra_config = WORKERS + f"""
[[proxy]]
protocol = "pop3"
listen = "tcp:port={extra_port}:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={dovecot.port}"
"""
    daemon.proxy_extra = "idle_timeout = 45"  # the existing listeners change too: their sockets are kept
    daemon.config_path.write_text(daemon.config_text())
    mark = daemon.log.mark()
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    after = serving_workers(daemon, since=mark)
    assert set(after.values()).isdisjoint(before.values())
    assert "worker 1 (pid %d) serving 3 proxy listener(s)" % after[1] in daemon.log.text(mark)
    assert pop.stat()[0] >= 1  # the old worker still serves its logged-in session
    pop.quit()
    wait_until(lambda: daemon.log.text(mark).count("of the previous configuration has ended") == 2, "the old workers to end", timeout=40)
    assert pop3_login(extra_port, "127.0.0.61", "alice", "alice-pw").startswith(b"+OK")
    assert pop3_login(daemon.port, "127.0.0.62", "alice", "alice-pw").startswith(b"+OK")
    assert sorted(worker_processes(daemon)) == sorted(after.values())


def test_sigterm_drains_every_worker_and_stops_once_sessions_end(dovecot, daemons):
    daemon = split_daemon(dovecot, daemons)
    workers = serving_workers(daemon)
    imap = BoundIMAP4("127.0.0.1", daemon.imap_port, "127.0.0.70")  # type: ignore[arg-type]
    imap.login("alice", "alice-pw")
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)
    wait_until(lambda: daemon.log.text().count("Received SIGTERM") >= 3, "SIGTERM in all three processes", timeout=10)
    assert imap.select("INBOX")[0] == "OK"  # a logged-in session may finish
    imap.logout()
    close(imap)
    assert daemon.process.wait(timeout=20) == -signal.SIGTERM  # twistd ends by the signal that stopped it
    assert "Server Shut Down." in daemon.output()
    for pid in workers.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert policy_unanswered(daemon)


def policy_unanswered(daemon: Popbridge) -> bool:
    try:
        policy_action(daemon.policy_socket, "127.0.0.70")
    except OSError:
        return True
    return False
