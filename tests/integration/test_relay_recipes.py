"""The relay recipes of docs/deploy/ (postfix.md, sendmail.md, exim.md), in real relays, against
the real daemon.

Each recipe is cut out of its page here and put into a real relay, so page and test cannot
drift: Postfix's policy and socketmap lines into a private Postfix (the socketmap path moved to
this test's directory), Sendmail's .mc lines into a sendmail.cf built by m4, Exim's ACL lines
into acl_smtp_rcpt. Sendmail and Exim run from Debian roots of their own (debian_root.py),
where popbridge's socket directory is mounted at /run/popbridge: their recipes go in unchanged. Every recipe must let a client relay after its POP3 login through popbridge,
refuse it before, and refuse or defer (never accept) while popbridge is stopped, crashed (its
socket file left behind) or hung (SIGSTOP: the kernel still accepts connections).
"""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from .chrooted_relays import Exim, Sendmail, rcpt_code
from .conftest import require, require_debian_root
from .debian_root import COURIER_EXIM, CYRUS_SENDMAIL
from .servers import Dovecot, Popbridge, Postfix, Redis, ServerError, pop3_login

pytestmark = pytest.mark.realserver

DEPLOY_PAGES = Path(__file__).resolve().parents[2] / "docs" / "deploy"
ACCEPTED, DEFERRED = 250, 450
INBOUND = "inbound.example"  # a relay_domains domain: mail for it is not a relay attempt


def documented_block(first_line: str) -> str:
    """The fenced block of a docs/deploy/ page whose first line is `first_line`."""
    deploying = "\n".join(page.read_text() for page in sorted(DEPLOY_PAGES.glob("*.md")))
    blocks: list[list[str]] = []
    block: list[str] | None = None  # the lines of the fenced block we are in, if any
    for line in deploying.splitlines():
        if line.startswith("```") and block is None:
            block = []
        elif line.startswith("```"):
            blocks.append(block)
            block = None
        elif block is not None:
            block.append(line)
    for lines in blocks:
        if lines and lines[0] == first_line:
            return "\n".join(lines) + "\n"
    raise AssertionError(f"no docs/deploy/ page has a block starting '{first_line}'")


class Relay(Protocol):
    port: int


@dataclass(frozen=True)
class Recipe:
    """How one documented recipe is started, and what its relay answers RCPT TO while popbridge
    is stopped, crashed or hung (docs/operations.md, "When something is down", says the same)."""

    start: Callable[[list[object], Dovecot], tuple[Popbridge, Relay]]
    refused_before: int
    down: dict[str, int]


@pytest.fixture
def started() -> Iterator[list[object]]:
    """Servers a test starts, stopped and removed afterwards in reverse order."""
    servers: list[object] = []
    yield servers
    for server in reversed(servers):
        if isinstance(server, Popbridge):
            if server.process is not None and server.process.poll() is None:
                server.process.send_signal(signal.SIGCONT)  # a hung daemon must hear SIGTERM
            print(f"--- popbridge output:\n{server.output()}")
        elif isinstance(server, (Exim, Sendmail)):
            print(f"--- {server.name} log:\n{server.log_text()}")
        server.cleanup()  # type: ignore[attr-defined]


def _popbridge(started: list[object], dovecot: Dovecot, **options: object) -> Popbridge:
    daemon = Popbridge(backend_port=dovecot.port, **options)  # type: ignore[arg-type]
    started.append(daemon)
    return daemon.start()


def _relay(started: list[object], server: Postfix | Exim | Sendmail) -> Postfix | Exim | Sendmail:
    started.append(server)
    try:
        return server.start()
    except ServerError as e:
        pytest.fail(f"{type(server).__name__} with the documented lines did not start: {e}", pytrace=False)


def postfix_policy(started: list[object], dovecot: Dovecot) -> tuple[Popbridge, Relay]:
    require("postfix", "postmap")
    main_cf = documented_block("# main.cf: popbridge policy")
    assert "{ default_action = DEFER 4.3.0 POP-before-SMTP check unavailable }" in main_cf
    main_cf += f"relay_domains = {INBOUND}\n"
    postfix = _relay(started, Postfix(policy_socket=Path("/nonexistent/unused.sock"), main_extra=main_cf))
    # unix:private/popbridge is relative to the queue directory, as inside Debian's chroot
    daemon = _popbridge(started, dovecot, policy_socket=postfix.directory / "queue" / "private" / "popbridge")
    return daemon, postfix


def postfix_socketmap(started: list[object], dovecot: Dovecot) -> tuple[Popbridge, Relay]:
    require("postfix", "postmap")
    daemon = _popbridge(started, dovecot)
    main_cf = documented_block("# main.cf: popbridge socketmap")
    assert "proxy:socketmap:unix:/run/popbridge/socketmap.sock:access" in main_cf
    main_cf = main_cf.replace("/run/popbridge/socketmap.sock", str(daemon.socketmap_socket))
    return daemon, _relay(started, Postfix(policy_socket=daemon.policy_socket, main_extra=main_cf))


def sendmail_socketmap(started: list[object], dovecot: Dovecot) -> tuple[Popbridge, Relay]:
    layers = require_debian_root(CYRUS_SENDMAIL)
    daemon = _popbridge(started, dovecot)
    mc = documented_block("dnl sendmail.mc: popbridge socketmap")
    assert "local:/run/popbridge/socketmap.sock" in mc and daemon.socketmap_socket.name == "socketmap.sock"
    return daemon, _relay(started, Sendmail(layers, binds={"/run/popbridge": daemon.directory}, mc=mc))


def exim_whoson(started: list[object], dovecot: Dovecot) -> tuple[Popbridge, Relay]:
    layers = require_debian_root(COURIER_EXIM)
    daemon = _popbridge(started, dovecot)
    acl = documented_block("# exim4.conf: popbridge WHOSON, in acl_smtp_rcpt before the relay check")
    assert "${readsocket{/run/popbridge/whoson.sock}" in acl and daemon.whoson_socket.name == "whoson.sock"
    return daemon, _relay(started, Exim(layers, binds={"/run/popbridge": daemon.directory}, acl=acl))


RECIPES = {
    # Postfix: default_action DEFER after permit_auth_destination: a relay attempt popbridge
    # cannot judge is retried (450), never refused, and inbound mail never asks popbridge
    "postfix-policy": Recipe(postfix_policy, 554, {"stopped": 450, "crashed": 450, "hung": 450}),
    # Postfix socketmap: an unreachable or silent map is 451 (silent: after Postfix's fixed 100 s)
    "postfix-socketmap": Recipe(postfix_socketmap, 554, {"stopped": 451, "crashed": 451, "hung": 451}),
    # Sendmail: -T<TMPF> turns every lookup failure into 451, -d5s bounds a silent popbridge
    "sendmail-socketmap": Recipe(sendmail_socketmap, 550, {"stopped": 451, "crashed": 451, "hung": 451}),
    # Exim: ${readsocket} fails to its empty fail string, so the ordinary relay check refuses
    "exim-whoson": Recipe(exim_whoson, 550, {"stopped": 550, "crashed": 550, "hung": 550}),
}


def bring_down(daemon: Popbridge, outage: str) -> None:
    assert daemon.process is not None
    if outage == "stopped":
        daemon.stop()
    elif outage == "crashed":
        daemon.process.kill()  # SIGKILL: the socket files stay behind, nobody listens
        daemon.process.wait(timeout=10)
        assert daemon.socketmap_socket.exists() and daemon.whoson_socket.exists()
    else:
        daemon.process.send_signal(signal.SIGSTOP)  # connections queue, nothing is answered


@pytest.mark.parametrize("name", RECIPES)
def test_documented_recipe_relays_only_after_a_pop3_login(
    name: str, started: list[object], dovecot: Dovecot
) -> None:
    recipe = RECIPES[name]
    daemon, relay = recipe.start(started, dovecot)
    assert rcpt_code(relay.port, "127.0.0.31") == recipe.refused_before
    pop3_login(daemon.port, "127.0.0.31", "alice", "alice-pw")
    assert rcpt_code(relay.port, "127.0.0.31") == ACCEPTED
    assert rcpt_code(relay.port, "127.0.0.32") == recipe.refused_before  # another address never logged in
    assert rcpt_code(relay.port, "127.0.0.1") == ACCEPTED  # the relay's own clients are unaffected


@pytest.mark.parametrize("outage", ("stopped", "crashed", "hung"))
@pytest.mark.parametrize("name", RECIPES)
def test_documented_recipe_never_relays_while_popbridge_is_down(
    name: str, outage: str, started: list[object], dovecot: Dovecot
) -> None:
    recipe = RECIPES[name]
    daemon, relay = recipe.start(started, dovecot)
    pop3_login(daemon.port, "127.0.0.33", "bob", "bob-pw")
    assert rcpt_code(relay.port, "127.0.0.33") == ACCEPTED
    bring_down(daemon, outage)
    assert rcpt_code(relay.port, "127.0.0.33") == recipe.down[outage]
    if outage != "hung":  # a hung lookup costs the relay's whole timeout: one RCPT is enough
        assert rcpt_code(relay.port, "127.0.0.34") == recipe.down[outage]
    assert rcpt_code(relay.port, "127.0.0.1") == ACCEPTED


def test_documented_policy_recipe_never_delays_inbound_mail_while_popbridge_is_down(
    started: list[object], dovecot: Dovecot
) -> None:
    daemon, relay = postfix_policy(started, dovecot)
    daemon.stop()
    assert rcpt_code(relay.port, "127.0.0.22") == DEFERRED
    assert rcpt_code(relay.port, "127.0.0.22", recipient=f"someone@{INBOUND}") == ACCEPTED


def test_documented_policy_recipe_defers_a_relay_attempt_when_the_store_is_down(
    started: list[object], dovecot: Dovecot, own_redis: Redis
) -> None:
    require("postfix", "postmap")
    postfix = _relay(started, Postfix(policy_socket=Path("/nonexistent/unused.sock"),
                                      main_extra=documented_block("# main.cf: popbridge policy")))
    socket_path = postfix.directory / "queue" / "private" / "popbridge"
    daemon = _popbridge(started, dovecot, policy_socket=socket_path, store=own_redis.url)
    pop3_login(daemon.port, "127.0.0.28", "alice", "alice-pw")
    assert rcpt_code(postfix.port, "127.0.0.28") == ACCEPTED
    own_redis.stop()
    assert rcpt_code(postfix.port, "127.0.0.28") == DEFERRED  # tempfail_action: DEFER, not DEFER_IF_PERMIT's 554
    assert rcpt_code(postfix.port, "127.0.0.29") == DEFERRED


def test_documented_sendmail_recipe_asks_for_an_ipv6_client_by_its_bare_address(
    started: list[object], dovecot: Dovecot
) -> None:
    """Sendmail writes an IPv6 client as `IPv6:2001:db8::7`; the recipe must ask popbridge for
    `2001:db8::7`. No IPv6 client can connect here, so Sendmail's own rule tester (-bt) runs
    the recipe for one, against a popbridge that learnt that address by a WHOSON update."""
    layers = require_debian_root(CYRUS_SENDMAIL)
    daemon = Popbridge(backend_port=dovecot.port, extra_config="""
[[lookup]]
protocol = "whoson"
listen = "unix:address=updates.sock:mode=600"
allow_updates = true
""")
    started.append(daemon)
    daemon.start()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.directory / "updates.sock"))
        s.sendall(b"LOGIN 2001:db8::7 alice\r\n\r\n")
        assert s.recv(64).startswith(b"+")
    sendmail = _relay(started, Sendmail(layers, binds={"/run/popbridge": daemon.directory},
                                        mc=documented_block("dnl sendmail.mc: popbridge socketmap")))
    answers = {}
    for client in ("IPv6:2001:DB8::7", "IPv6:2001:db8::8"):
        tested = sendmail.chroot.run_with_input(
            f".D{{client_addr}}{client}\nLocal_check_rcpt <someone@outside.example>\n", "sendmail", "-bt")
        answers[client] = re.findall(r"Local_check_rcpt returns: (.*)", tested)
    assert answers == {"IPv6:2001:DB8::7": ["$# OK"], "IPv6:2001:db8::8": ["< ? >"]}
