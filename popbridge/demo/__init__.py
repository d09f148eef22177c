"""``popbridge demo``: the demo config file and what to try (the backend is `popbridge.demo.backend`).

The directory also gets ``postfix/main.cf``, empty, for the ``postmap -c`` in the instructions:
postmap reads a main.cf before it looks anything up, and Debian's postfix installed with "No
configuration" has none in /etc/postfix.
"""

import json
import os
import shlex
from pathlib import Path
from urllib.parse import quote

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from popbridge.config import ConfigError
from popbridge.settings import Config

CONFIG_NAME = "popbridge.toml"
SOCKET_NAMES = ("policy.sock", "socketmap.sock", "whoson.sock", "control.sock")
POSTFIX_DIRECTORY = "postfix"  # an empty main.cf for `postmap -c`
UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
_PROXY_LISTEN = "tcp:port=1110:interface=127.0.0.1"
_DEMO_LISTEN = "tcp:port=11110:interface=127.0.0.1"
_DEMO_BACKEND = "tcp:host=127.0.0.1:port=11110"


class DemoDirectoryError(ConfigError):
    """The demo directory cannot hold unix sockets (its path is too long)."""


# --- the demo configuration file -------------------------------------------------------------


def write_demo_config(directory: Path) -> Path:
    """Write ``popbridge.toml`` for the demo into `directory`, unless one is there already.

    An existing file is left alone (and its path returned) so that an operator's edits survive
    the next ``popbridge demo``. The lookup and control sockets live in `directory` too, so a
    directory whose socket paths would not fit a unix socket address is refused before anything
    is created.
    """
    directory = Path(os.path.abspath(directory))
    path = directory / CONFIG_NAME
    if path.exists():
        _write_postfix_directory(directory)
        return path
    for name in SOCKET_NAMES:
        size = len(os.fsencode(directory / name))
        if size > UNIX_PATH_MAX:
            raise DemoDirectoryError(
                f"{directory}: too long for the demo's unix sockets ({directory / name} is {size} bytes,"
                f" the limit is {UNIX_PATH_MAX}); choose a shorter --dir, for example --dir /tmp/popbridge-demo"
            )
    directory.mkdir(parents=True, exist_ok=True)
    _write_postfix_directory(directory)
    sockets = {
        name.removesuffix(".sock"): _toml(_unix_endpoint(directory / name, "600" if name == "control.sock" else "666"))
        for name in SOCKET_NAMES
    }
    text = _DEMO_TEMPLATE.format(
        proxy_listen=_toml(_PROXY_LISTEN),
        proxy_backend=_toml(_DEMO_BACKEND),
        demo_listen=_toml(_DEMO_LISTEN),
        **sockets,
    )
    try:
        with open(path, "x", encoding="utf-8") as f:  # "x": never overwrite a file that appeared meanwhile
            f.write(text)
    except FileExistsError:
        pass
    return path


def _write_postfix_directory(directory: Path) -> None:
    """An empty main.cf for `postmap -c`; one that is there already is left alone."""
    postfix = directory / POSTFIX_DIRECTORY
    postfix.mkdir(exist_ok=True)
    (postfix / "main.cf").touch()


def _unix_endpoint(path: Path, mode: str) -> str:
    """A ``unix:`` endpoint string for `path`.

    Backslash, colon and '=' are the endpoint syntax's own characters; `quoteStringArgument`
    escapes the first two only, so all three are escaped here.
    """
    escaped = "".join("\\" + c if c in "\\:=" else c for c in str(path))
    return f"unix:address={escaped}:mode={mode}"


def _toml(value: str) -> str:
    """A TOML basic string: JSON's string escapes are all valid TOML escapes."""
    return json.dumps(value, ensure_ascii=False)


_DEMO_TEMPLATE = """\
# popbridge demo configuration, written by `popbridge demo`. Edit it freely: the demo never
# overwrites it (delete it to get a fresh one). Check it with `popbridge check-config FILE`.
#
# Every place that listens or connects is a Twisted endpoint string: "tcp:port=...:interface=...",
# "unix:address=PATH:mode=666", "ssl:...", "haproxy:tcp:...", "systemd:...". Inside one, ':' '='
# and '\\' are escaped with a backslash (which TOML needs doubled: "\\\\:").

[ledger]
ttl = 1800                  # seconds a successful POP3 login lets its client address relay
store = "memory"            # where logins are kept; "memory" forgets them when popbridge stops
ipv6_prefix = 128           # group IPv6 clients by this prefix (64 = one entry per /64)

# The POP3 proxy: mail clients connect here; logins are passed to the backend, and a login the
# backend accepts is recorded for the client's address. Add more [[proxy]] tables for more ports.
[[proxy]]
protocol = "pop3"
listen = {proxy_listen}
backend = {proxy_backend}  # the demo POP3 server below; normally Dovecot & co.
# forward_client_address = true   # send XCLIENT so the backend sees the real client address

# Lookups answer the outbound relay: "may this client address relay?". All are read-only.
[[lookup]]
protocol = "policy"         # Postfix: smtpd_recipient_restrictions = check_policy_service unix:...
listen = {policy}
authorised_action = "OK"    # the answer for an address with a live login
unknown_action = "DUNNO"    # the answer for any other address (DUNNO: let other rules decide)

[[lookup]]
protocol = "socketmap"      # Postfix >= 2.10 / Sendmail: socketmap:unix:PATH:access (or :user)
listen = {socketmap}

[[lookup]]
protocol = "whoson"         # WHOSON: "QUERY address" answers "+user" or "-"
listen = {whoson}
# allow_updates = false     # true would let WHOSON clients LOGIN/LOGOUT addresses themselves

# The admin socket used by `popbridge list|query|revoke|stats --socket PATH`; keep it mode 600.
[control]
listen = {control}

# The demo POP3 server, run inside popbridge; only `popbridge demo` starts it. Toy only:
# plaintext passwords, sample messages in memory.
[demo]
listen = {demo_listen}
users = {{ alice = "wonderland", bob = "builder" }}
messages = 2                # sample messages in each mailbox
"""


# --- what to try -----------------------------------------------------------------------------


def demo_instructions(config: Config) -> str:
    """Commands to try against a running demo, with the addresses and names from `config`."""
    lines = [f"popbridge demo, configured by {config.source}", "Once it is listening, try in another terminal:", ""]
    users = list(config.demo.users.items()) if config.demo else []
    first = users[0] if users else ("USER", "PASSWORD")
    second = users[1] if len(users) > 1 else first
    if config.proxies:
        url = _pop3_url(config.proxies[0].listen)
        lines += [
            "# 1. fetch mail through popbridge; the login records 127.0.0.1",
            f"curl {shlex.quote(url.format(_userinfo(*first)))}",
            "# ... and from another client address, 127.0.0.2",
            f"curl --interface 127.0.0.2 {shlex.quote(url.format(_userinfo(*second)))}",
            "",
        ]
    lookups = {lookup.protocol: lookup for lookup in config.lookups}
    if lookups:
        lines += [
            "# 2. ask what the relay would ask (127.0.0.3 never logged in); `ask` talks to a unix socket",
            "ask() { python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
            ' s.sendall(sys.argv[2].encode().decode("unicode_escape").encode());'
            ' print(s.recv(65536).decode())\' "$@"; }',
        ]
    if "policy" in lookups:
        policy = lookups["policy"]
        socket_path = shlex.quote(_unix_address(policy.listen))
        lines += [
            f"# policy: action={policy.authorised_action} for a live login, action={policy.unknown_action} otherwise",
            f"ask {socket_path} 'request=smtpd_access_policy\\nclient_address=127.0.0.2\\n\\n'",
            f"ask {socket_path} 'request=smtpd_access_policy\\nclient_address=127.0.0.3\\n\\n'",
        ]
    if "socketmap" in lookups:
        socket_path = _unix_address(lookups["socketmap"].listen)
        postfix = shlex.quote(str(Path(socket_path).parent / POSTFIX_DIRECTORY))
        query = "access 127.0.0.2"
        lines += [
            "# socketmap: the same question as Postfix asks it (postmap comes with Postfix) ...",
            f"postmap -c {postfix} -q 127.0.0.2 {shlex.quote(f'socketmap:unix:{socket_path}:access')}",
            f"postmap -c {postfix} -q 127.0.0.2 {shlex.quote(f'socketmap:unix:{socket_path}:user')}",
            "# ... or by hand, as a netstring",
            f"ask {shlex.quote(socket_path)} '{len(query)}:{query},'",
        ]
    if "whoson" in lookups:
        lines += [
            "# WHOSON: '+user' for a live login, '-' otherwise",
            f"ask {shlex.quote(_unix_address(lookups['whoson'].listen))} 'QUERY 127.0.0.2\\r\\n\\r\\n'",
        ]
    if config.control:
        lines += [
            "",
            "# 3. what popbridge knows, through the admin socket",
            f"popbridge list --socket {shlex.quote(_unix_address(config.control.listen))}",
        ]
    lines += ["", "Stop the demo with Ctrl-C; edit the configuration to experiment (it is never overwritten)."]
    return "\n".join(lines) + "\n"


def _userinfo(user: str, password: str) -> str:
    return f"{quote(user, safe='')}:{quote(password, safe='')}"


def _listened(description: str) -> MemoryReactor:
    """Let Twisted's own parser decode `description`: a MemoryReactor records the listen call."""
    reactor = MemoryReactor()
    serverFromString(reactor, description).listen(Factory())
    return reactor


def _pop3_url(description: str) -> str:
    """A curl URL template (``{}`` for the user info) reaching a proxy listener.

    A wildcard interface is reached on loopback; a listener curl cannot reach by address
    (``systemd:``, unix) falls back to the standard port on loopback.
    """
    scheme, port, interface = "pop3", 110, "127.0.0.1"
    try:
        reactor = _listened(description)
        if reactor.tcpServers:
            port, _, _, interface = reactor.tcpServers[0]
        elif reactor.sslServers:
            scheme, (port, _, _, _, interface) = "pop3s", reactor.sslServers[0]
    except Exception:  # Twisted's parsers and adopt-style endpoints raise many kinds
        pass
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(interface, interface)
    return f"{scheme}://{{}}@{f'[{host}]' if ':' in host else host}:{port}/"


def _unix_address(description: str) -> str:
    try:
        return _listened(description).unixServers[0][0]
    except Exception:  # not a unix socket (or not parseable): show the description itself
        return description
