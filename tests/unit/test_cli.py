"""The ``popbridge`` command line, parsed without starting anything."""

from importlib.metadata import version

import pytest

from popbridge.cli import main


def test_version_prints_popbridges_version_not_twisteds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"popbridge {version('popbridge')}\n"
