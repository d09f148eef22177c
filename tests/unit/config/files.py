"""The config tests' shared helpers: write a popbridge.toml into tmp_path, load it, read the complaint."""

import pytest

from popbridge.config import ConfigError, load_config
from popbridge.settings import Config

POLICY = '[[lookup]]\nprotocol = "policy"\nlisten = "unix:address=/tmp/p"\n'
LDAP = """
[ldap]
url = "ldap://ldap.example.org"
base = "dc=example,dc=org"
"""


def load(tmp_path, text) -> Config:
    path = tmp_path / "popbridge.toml"
    path.write_text(text)
    return load_config(path)


def error(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    return str(e.value)
