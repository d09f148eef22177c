"""contrib/: the example production config passes `popbridge check-config`, and the systemd units
are what systemd itself accepts. Paths that exist only on a production host are moved under
tmp_path; nothing is bound."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trustme

from popbridge.cli import main
from popbridge.config import ConfigError, load_config

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
PRODUCTION_DIRECTORIES = ("/etc/popbridge/", "/run/popbridge/", "/var/lib/popbridge/")


def harmless(tmp_path: Path, text: str) -> Path:
    """The example with its production directories under tmp_path, and a real certificate."""
    for directory in PRODUCTION_DIRECTORIES:
        text = text.replace(directory, f"{tmp_path}{directory}")
        (tmp_path / directory.strip("/")).mkdir(parents=True, exist_ok=True)
    tls = tmp_path / "etc/popbridge/tls"
    tls.mkdir()
    certificate = trustme.CA().issue_cert("mail.example.org")
    certificate.private_key_and_cert_chain_pem.write_to_path(str(tls / "fullchain.pem"))
    certificate.private_key_pem.write_to_path(str(tls / "privkey.pem"))
    path = tmp_path / "popbridge.toml"
    path.write_text(text)
    return path


def test_the_example_production_config_passes_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = harmless(tmp_path, (CONTRIB / "popbridge.toml").read_text())
    main(["check-config", str(path)])
    out = capsys.readouterr().out
    assert "OK: 4 proxy, 3 lookup listener(s)" in out
    assert out.rstrip().endswith(f", {len(os.sched_getaffinity(0))} proxy worker process(es)")  # workers = "auto"
    config = load_config(path)
    assert config.metrics is not None and config.metrics.listen == "tcp:port=9110:interface=127.0.0.1"


def test_the_socket_activation_alternatives_in_the_example_pass_too(tmp_path: Path) -> None:
    text = (CONTRIB / "popbridge.toml").read_text()
    alternatives = re.findall(r'^# (listen = "systemd:[^"]+")', text, flags=re.MULTILINE)
    assert len(alternatives) == 2
    for alternative in alternatives:  # each replaces the line just above it
        text = re.sub(r'^listen = "tcp:port=\d+:interface=0\.0\.0\.0".*\n# ' + re.escape(alternative), alternative, text, count=1, flags=re.MULTILINE)
    config = load_config(harmless(tmp_path, text))
    assert [proxy.listen for proxy in config.proxies][::2] == ["systemd:domain=INET:name=pop3", "systemd:domain=INET:name=imap4"]


def test_every_socket_name_the_config_uses_is_one_a_socket_unit_gives() -> None:
    names = set(re.findall(r"systemd:domain=\w+:name=(\w+)", (CONTRIB / "popbridge.toml").read_text()))
    given = {
        match
        for unit in (CONTRIB / "systemd").glob("*.socket")
        for match in re.findall(r"^FileDescriptorName=(\w+)$", unit.read_text(), flags=re.MULTILINE)
    }
    assert names == given == {"pop3", "imap4", "policy"}


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("systemd:domain=INET", "exactly one of index="),
        ("systemd:domain=INET:index=0:name=pop3", "exactly one of index="),
        ("systemd:domain=APPLETALK:index=0", "domain= must be INET, INET6 or UNIX"),
        ("systemd:domain=INET:index=first", "index= must be a number"),
    ],
)
def test_a_malformed_systemd_endpoint_is_an_error_naming_the_key(tmp_path: Path, listen: str, problem: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'[[lookup]]\nprotocol = "policy"\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError, match=rf"\[\[lookup\]\] #1 listen: .*{re.escape(problem)}"):
        load_config(path)


def test_a_systemd_endpoint_is_checked_without_systemd_having_passed_anything(tmp_path: Path) -> None:
    """check-config runs in ExecStartPre, which gets no sockets: it must still pass."""
    path = tmp_path / "p.toml"
    path.write_text('[[lookup]]\nprotocol = "policy"\nlisten = "systemd:domain=UNIX:index=3"\n')
    assert load_config(path).lookups[0].listen == "systemd:domain=UNIX:index=3"


def test_the_metrics_table_takes_listen_only(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[[lookup]]\nprotocol = "policy"\nlisten = "unix:address=/tmp/x"\n[metrics]\nport = 9110\n')
    with pytest.raises(ConfigError, match=r"\[metrics\] port: unknown key"):
        load_config(path)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    units = tmp_path / "units"
    shutil.copytree(CONTRIB / "systemd", units)
    popbridge = shutil.which("true")
    for unit in units.rglob("*.service"):  # /opt/popbridge does not exist here
        unit.write_text(unit.read_text().replace("/opt/popbridge/bin/popbridge", str(popbridge)))
    names = [str(path) for path in sorted(units.glob("*.s*")) if path.is_file()]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names], capture_output=True, text=True, timeout=60, cwd=units
    )
    complaints = [line for line in result.stderr.splitlines() if "popbridge" in line]
    assert result.returncode == 0 and not complaints, result.stderr
