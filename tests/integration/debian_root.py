"""Debian bookworm roots for the servers that cannot be installed beside Dovecot and Postfix.

Courier, Cyrus, Exim and Sendmail conflict with the packages the suite installs on the machine
(one IMAP server, one POP3 server, one MTA per system), so each runs from a Debian root of its
own. A root is built once per machine and reused by every later run, from any clone:

- `base`: `debootstrap --variant=minbase bookworm` from the mirror the machine's apt uses, with
  that apt's bookworm sources, a `policy-rc.d` that keeps package scripts from starting
  services, and no recommended packages.
- one layer per server family (`courier-exim`, `cyrus-sendmail`): `apt-get install` run inside
  an overlay whose lower directory is `base`, so each layer holds only what its packages add.
  Courier and Cyrus each need some MTA installed; Exim and Sendmail are the ones tested, so each
  pair shares a layer.

Each directory has a `marker` file holding what it was built from (mirror and suites; a layer:
its packages and the build id of its base); a marker that differs from what this module asks
for means a rebuild, so a rebuilt base rebuilds its layers. Builds hold an
exclusive lock on `ROOTS/lock`, so concurrent test runs wait for one another instead of building
twice. `ROOTS` is /var/cache/popbridge-test-roots unless `POPBRIDGE_TEST_ROOTS` names another.

A server is run in a `Chroot`: a private overlay (the root's layers read-only, a writable upper
directory under /tmp) mounted in a mount namespace of its own, held open by a `sleep` that the
namespace's mounts disappear with. The root itself is never written after its build, and
several instances of one root can run at once. The network is the machine's, so daemons bind
loopback high ports; host directories (popbridge's socket directory) are bind-mounted inside.
Daemons that log only through syslog get a `Syslog` of the test's own on the instance's
/dev/log, and are stopped by their pid files (`stop_by_pid_files`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .servers import ServerError, find_binary, short_directory, wait_until

ROOTS = Path(os.environ.get("POPBRIDGE_TEST_ROOTS", "/var/cache/popbridge-test-roots"))
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BUILD_TIMEOUT = 1800  # seconds one debootstrap or apt-get may take on a slow mirror
HOSTS = "127.0.0.1\tlocalhost mail.popbridge-test.invalid mail\n"
READY_FILE = "/run/.popbridge-chroot"  # inside: seen through the holder's root once it is chrooted
TOOLS = {"debootstrap": "debootstrap", "unshare": "util-linux", "nsenter": "util-linux"}


@dataclass(frozen=True)
class RootSpec:
    """A layer of packages installed on the base root. `debconf` lines are preseeded first."""

    name: str
    packages: tuple[str, ...]
    debconf: tuple[str, ...] = ()


COURIER_EXIM = RootSpec(
    "courier-exim",
    ("courier-imap", "courier-pop", "courier-authlib-userdb", "exim4-daemon-light", "openssl"),
    ("courier-base courier-base/webadmin-configmode boolean false",),
)
CYRUS_SENDMAIL = RootSpec(
    "cyrus-sendmail",
    ("cyrus-imapd", "cyrus-pop3d", "cyrus-admin", "sasl2-bin", "sendmail-bin", "sendmail-cf", "m4", "make"),
)


class RootUnavailable(ServerError):
    """A root cannot be built here: the reason names what is missing or what failed."""


def missing_tools() -> list[str]:
    """What this machine lacks to build and enter roots (besides root itself)."""
    reasons = [] if os.geteuid() == 0 else [f"root (running as uid {os.geteuid()}; chroot and mounts need it)"]
    reasons += [f"{tool} (apt-get install {package})" for tool, package in TOOLS.items() if find_binary(tool) is None]
    return reasons


# ---------------------------------------------------------------- where apt gets Debian from


def apt_sources(etc: Path = Path("/etc/apt")) -> list[tuple[str, str]]:
    """(URI, suite) for every bookworm `deb` source of the machine's apt with component main,
    from sources.list and sources.list.d (one-line and deb822 forms), in file order."""
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list")),
             *sorted((etc / "sources.list.d").glob("*.sources"))]
    found: list[tuple[str, str]] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        stanzas = _deb822_stanzas(text) if path.suffix == ".sources" else _one_line_sources(text)
        for uris, suites, components in stanzas:
            if "main" in components:
                found += [(uri, suite) for uri in uris for suite in suites if suite.split("-")[0] == SUITE]
    return list(dict.fromkeys(found))


def _one_line_sources(text: str) -> Iterator[tuple[list[str], list[str], list[str]]]:
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()  # drop [options]
        if len(words) >= 4 and words[0] == "deb":
            yield [words[1]], [words[2]], words[3:]


def _deb822_stanzas(text: str) -> Iterator[tuple[list[str], list[str], list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            yield fields.get("uris", "").split(), fields.get("suites", "").split(), fields.get("components", "").split()


def debian_mirror(sources: list[tuple[str, str]]) -> str:
    """The mirror debootstrap fetches from: the first plain `bookworm` source, else Debian's."""
    return next((uri for uri, suite in sources if suite == SUITE), DEFAULT_MIRROR)


# ---------------------------------------------------------------- building


@contextmanager
def _locked() -> Iterator[None]:
    ROOTS.mkdir(parents=True, exist_ok=True)
    with open(ROOTS / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _log_run(argv: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    with open(log, "a") as output:
        output.write(f"\n$ {' '.join(argv)}\n")
        output.flush()
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                env=env, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RootUnavailable(f"{what}: {argv[0]} exited {result.returncode} (log {log}):\n{tail}")


def _read_marker(directory: Path) -> str | None:
    try:
        return (directory / "marker").read_text()
    except OSError:
        return None


def _replace(directory: Path, built: Path) -> None:
    """Move a finished build into place (the old one, if any, is removed first)."""
    if directory.exists():
        shutil.rmtree(directory)
    built.rename(directory)


def _base_marker() -> str:
    sources = apt_sources()
    return json.dumps({"suite": SUITE, "variant": "minbase", "mirror": debian_mirror(sources), "sources": sources},
                      indent=1) + "\n"


def _build_base(marker: str) -> None:
    built = ROOTS / "base.new"
    shutil.rmtree(built, ignore_errors=True)
    built.mkdir()
    log = ROOTS / "base.log"
    log.write_text("")
    sources = apt_sources() or [(DEFAULT_MIRROR, SUITE)]
    (ROOTS / "debs").mkdir(exist_ok=True)
    _log_run([find_binary("debootstrap") or "debootstrap", "--variant=minbase", f"--cache-dir={ROOTS / 'debs'}",
              SUITE, str(built / "rootfs"), debian_mirror(sources)], log, "debootstrap")
    rootfs = built / "rootfs"
    (rootfs / "etc/apt/sources.list").write_text("".join(f"deb {uri} {suite} main\n" for uri, suite in sources))
    (rootfs / "etc/apt/apt.conf.d/99popbridge-test").write_text(
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nDpkg::Use-Pty "false";\n')
    policy = rootfs / "usr/sbin/policy-rc.d"  # package scripts must not start services
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (rootfs / "etc/hosts").write_text(HOSTS)
    (rootfs / "etc/hostname").write_text("mail.popbridge-test.invalid\n")
    (built / "build-id").write_text(uuid.uuid4().hex + "\n")  # layers name the base they were built on
    (built / "marker").write_text(marker)
    _replace(ROOTS / "base", built)


def _layer_marker(spec: RootSpec) -> str:
    base = (ROOTS / "base" / "build-id").read_text().strip()
    return json.dumps({"base": base, "packages": spec.packages, "debconf": spec.debconf}, indent=1) + "\n"


def _build_layer(spec: RootSpec, marker: str) -> None:
    built = ROOTS / f"{spec.name}.new"
    shutil.rmtree(built, ignore_errors=True)
    built.mkdir()
    log = ROOTS / f"{spec.name}.log"
    log.write_text("")
    (built / "layer").mkdir()
    holder = Chroot([ROOTS / "base" / "rootfs"], upper=built / "layer", scratch=built)
    holder.start()
    try:
        if spec.debconf:
            holder.path("/tmp/debconf").write_text("".join(line + "\n" for line in spec.debconf))
            _log_run(holder.command("debconf-set-selections", "/tmp/debconf"), log, f"{spec.name}: debconf")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
        _log_run(holder.command("apt-get", "update", "-q"), log, f"{spec.name}: apt-get update", env)
        _log_run(holder.command("apt-get", "install", "-y", "-q", *spec.packages), log,
                 f"{spec.name}: apt-get install", env)
        _log_run(holder.command("apt-get", "clean"), log, f"{spec.name}: apt-get clean", env)
    finally:
        holder.stop()
    shutil.rmtree(built / "work", ignore_errors=True)
    for leftover in ("tmp/debconf", READY_FILE):  # the build's own files are not the root's
        (built / "layer" / leftover.lstrip("/")).unlink(missing_ok=True)
    (built / "marker").write_text(marker)
    _replace(ROOTS / spec.name, built)


_failed: dict[str, RootUnavailable] = {}


def ensure_root(spec: RootSpec) -> list[Path]:
    """The read-only layers of `spec`'s root, top first, built (or rebuilt) if their markers
    do not match. Raises RootUnavailable with the reason when that cannot be done."""
    if spec.name in _failed:  # one failed build per run, not one per test
        raise _failed[spec.name]
    reasons = missing_tools()
    if reasons:
        raise RootUnavailable("; ".join(reasons))
    try:
        with _locked():
            base_marker = _base_marker()
            if _read_marker(ROOTS / "base") != base_marker or not (ROOTS / "base" / "build-id").exists():
                _build_base(base_marker)
            marker = _layer_marker(spec)
            if _read_marker(ROOTS / spec.name) != marker:
                _build_layer(spec, marker)
    except RootUnavailable as e:
        _failed[spec.name] = e
        raise
    except (OSError, subprocess.TimeoutExpired) as e:
        _failed[spec.name] = RootUnavailable(f"building {spec.name} in {ROOTS}: {e}")
        raise _failed[spec.name] from e
    return [ROOTS / spec.name / "layer", ROOTS / "base" / "rootfs"]


# ---------------------------------------------------------------- running


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process goes away (PR_SET_PDEATHSIG),
    so a crashed test run leaves no namespace holder behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class Chroot:
    """A private writable instance of a root: overlay of `layers` (top first) with an upper
    directory of its own, /proc mounted, `binds` (host directories at paths inside),
    all in a mount namespace held by a `sleep` chrooted into it. `command()` builds argv that
    runs inside; `path()` is a file inside as seen from the host (through the holder's root)."""

    layers: list[Path]
    binds: Mapping[str, Path] = field(default_factory=dict)  # path inside -> host directory
    upper: Path | None = None  # default: a directory of this instance's own
    scratch: Path | None = None  # where the merged view and overlay's work directory go
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.scratch = self.scratch or short_directory("pb-chroot-")
        self.upper = self.upper or self.scratch / "upper"

    def start(self) -> "Chroot":
        assert self.scratch is not None and self.upper is not None
        merged, work = self.scratch / "merged", self.scratch / "work"
        for directory in (self.upper, merged, work):
            directory.mkdir(exist_ok=True)
        lower = ":".join(str(layer) for layer in self.layers)
        lines = [
            "set -e",
            f"mount -t overlay overlay -o lowerdir={lower},upperdir={self.upper},workdir={work} {merged}",
            f"mount -t proc proc {merged}/proc",
        ]
        for inside, host in self.binds.items():
            lines += [f"mkdir -p {merged}{inside}", f"mount --bind {host} {merged}{inside}"]
        lines += [f"touch {merged}{READY_FILE}", f"exec chroot {merged} sleep infinity"]
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        wait_until(lambda: self.path(READY_FILE).exists(), "chroot namespace", timeout=20,
                   alive=self._why_dead)
        return self

    def _why_dead(self) -> str | None:
        assert self.process is not None
        if self.process.poll() is None:
            return None
        error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
        return f"namespace holder exited {self.process.returncode}: {error.strip()}"

    def path(self, inside: str) -> Path:
        assert self.process is not None
        return Path(f"/proc/{self.process.pid}/root") / inside.lstrip("/")

    def command(self, *argv: str) -> list[str]:
        """argv that runs `argv` inside the instance (its namespace and root, cwd /)."""
        assert self.process is not None
        return ["nsenter", f"--target={self.process.pid}", "--mount", "--root", "--wd", *argv]

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside and wait; a non-zero exit raises ServerError with its output."""
        result = subprocess.run(self.command(*argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise ServerError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def run_with_input(self, text: str, *argv: str, timeout: float = 60) -> str:
        """Run `argv` inside with `text` on its standard input; its standard output."""
        result = subprocess.run(self.command(*argv), input=text, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise ServerError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def stop(self) -> None:
        """End the holder; the namespace, its mounts included, goes when its last process does.
        Daemons started inside are stopped by their owners first (by pid file)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()
        if self.scratch is not None and self.scratch.name.startswith("pb-chroot-"):
            shutil.rmtree(self.scratch, ignore_errors=True)


class Syslog:
    """A /dev/log of a chroot's own: a datagram socket whose messages are kept for failure output."""

    def __init__(self, path: Path) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        path.chmod(0o666)  # daemons log after dropping root
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._read, name="chroot-syslog", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                message = self._socket.recv(65536)
            except OSError:
                return
            self._lines.append(message.decode("utf-8", "replace"))

    def text(self) -> str:
        return "\n".join(self._lines)

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()


def stop_by_pid_files(chroot: Chroot, pid_files: Iterable[str], what: str, timeout: float = 15) -> None:
    """SIGTERM every daemon whose pid is in one of `pid_files` (paths inside) at once, wait for
    them together, and SIGKILL those still running after `timeout` seconds."""
    pids = []
    for pid_file in pid_files:
        try:
            pids.append(int(chroot.path(pid_file).read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _running(pid)]
        time.sleep(0.05)  # polling interval of a bounded wait
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    if pids:
        raise ServerError(f"{what} (pids {pids}) ignored SIGTERM for {timeout:.0f} s and was killed")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def main() -> None:
    """`python -m tests.integration.debian_root`: build every root now, timing each."""
    for spec in (COURIER_EXIM, CYRUS_SENDMAIL):
        started = time.monotonic()
        layers = ensure_root(spec)
        print(f"{spec.name}: {' + '.join(map(str, layers))} ready in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
