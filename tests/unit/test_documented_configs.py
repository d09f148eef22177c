"""The configurations README.md and docs/configuration.md show are ones `popbridge check-config`
accepts, so an operator who copies them starts from a file that loads. Their production
directories are moved under tmp_path; nothing is bound."""

import re
from pathlib import Path

import pytest

from popbridge.cli import main

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_DIRECTORIES = ("/etc/popbridge/", "/run/popbridge/", "/var/lib/popbridge/")


def first_toml_block(page: Path) -> str:
    match = re.search(r"^```toml\n(.*?)^```", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert match, f"{page} has no toml block"
    return match.group(1)


def check_config(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> str:
    for directory in PRODUCTION_DIRECTORIES:
        text = text.replace(directory, f"{tmp_path}{directory}")
    if "store =" not in text:  # the default store is a production path too
        text = text.replace("[ledger]\n", f'[ledger]\nstore = "sqlite:{tmp_path}/ledger.sqlite3"\n', 1)
    path = tmp_path / "popbridge.toml"
    path.write_text(text)
    main(["check-config", str(path)])
    return capsys.readouterr().out


def test_the_readme_minimal_config_passes_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = check_config(tmp_path, first_toml_block(ROOT / "README.md"), capsys)
    assert "OK: 1 proxy, 1 lookup listener(s), control off" in out


def test_the_configuration_reference_example_passes_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = check_config(tmp_path, first_toml_block(ROOT / "docs" / "configuration.md"), capsys)
    assert "OK: 1 proxy, 3 lookup listener(s)" in out
