"""Where the Debian roots of the integration tests get Debian from: the machine's own apt
sources, read from both of apt's file formats."""

from __future__ import annotations

from pathlib import Path

from tests.integration.debian_root import DEFAULT_MIRROR, apt_sources, debian_mirror


def write(etc: Path, name: str, text: str) -> None:
    (etc / "sources.list.d").mkdir(parents=True, exist_ok=True)
    (etc / name).write_text(text)


def test_deb822_sources_give_every_bookworm_suite_with_main(tmp_path: Path) -> None:
    write(tmp_path, "sources.list.d/debian.sources", """\
Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main contrib
""")
    assert apt_sources(tmp_path) == [
        ("http://mirror.example/debian", "bookworm"),
        ("http://mirror.example/debian", "bookworm-updates"),
        ("http://mirror.example/debian-security", "bookworm-security"),
    ]


def test_one_line_sources_skip_options_comments_sources_and_other_suites(tmp_path: Path) -> None:
    write(tmp_path, "sources.list", """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main non-free
deb http://mirror.example/debian trixie main
deb https://packages.example/apt cloud-sdk-bookworm main
""")
    assert apt_sources(tmp_path) == [("http://mirror.example/debian", "bookworm")]


def test_disabled_stanzas_and_stanzas_without_main_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "sources.list.d/x.sources", """\
Types: deb
URIs: http://off.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
URIs: http://contrib.example/debian
Suites: bookworm
Components: contrib
""")
    assert apt_sources(tmp_path) == []


def test_debootstrap_uses_the_plain_bookworm_source_else_debian_itself() -> None:
    sources = [("http://security.example/debian-security", "bookworm-security"), ("http://m.example/debian", "bookworm")]
    assert debian_mirror(sources) == "http://m.example/debian"
    assert debian_mirror([]) == DEFAULT_MIRROR
