"""Prometheus scrapes the real daemon after a scripted POP3 login; `popbridge stats` agrees."""

from __future__ import annotations

import urllib.request

import pytest

from .servers import StartPopbridge, free_port, pop3_login

pytestmark = pytest.mark.realserver

LOGIN = 'popbridge_logins_total{method="USER",outcome="succeeded",protocol="pop3"}'


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name.replace(", ", ",")] = float(value)
    return samples


def test_a_scrape_after_a_login_shows_it_and_stats_prints_the_same_numbers(popbridge_daemon: StartPopbridge) -> None:
    port = free_port()
    daemon = popbridge_daemon(extra_config=f'\n[metrics]\nlisten = "tcp:port={port}:interface=127.0.0.1"\n')
    before = scrape(port)
    assert before.get(LOGIN, 0) == 0 and before["popbridge_live_addresses"] == 0
    pop3_login(daemon.port, "127.0.0.31", "alice", "alice-pw")
    after = scrape(port)
    assert after[LOGIN] == 1
    assert after["popbridge_live_addresses"] == 1
    assert after['popbridge_backend_connect_seconds_count{protocol="pop3"}'] == 1
    assert after['popbridge_store_seconds_count{operation="record"}'] == 1
    stats = daemon.cli("stats")
    assert stats.returncode == 0, stats.stderr
    assert f"  {LOGIN} 1" in stats.stdout.splitlines()
    assert "  popbridge_live_addresses 1" in stats.stdout.splitlines()
