import os

import pytest

from popbridge.config import ConfigError, load_config

from tests.unit.config.files import error, load

GOOD = """
[ledger]
ttl = 1800
store = "memory"
ipv6_prefix = 64
[[proxy]]
protocol = "pop3"
listen = "tcp:port=1110:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port=110"
forward_client_address = true
[[lookup]]
protocol = "policy"
listen = "unix:address=/var/spool/postfix/private/popbridge:mode=666"
authorised_action = "OK"
unknown_action = "DUNNO"
[[lookup]]
protocol = "socketmap"
listen = "unix:address=/run/popbridge/socketmap.sock:mode=666"
[[lookup]]
protocol = "whoson"
listen = "unix:address=/run/popbridge/whoson.sock:mode=660"
allow_updates = false
[control]
listen = "unix:address=/run/popbridge/control.sock:mode=600"
"""


def test_the_issue_example_loads(tmp_path):
    config = load(tmp_path, GOOD)
    assert config.ledger.ipv6_prefix == 64
    assert config.proxies[0].forward_client_address
    assert [lookup.protocol for lookup in config.lookups] == ["policy", "socketmap", "whoson"]
    assert config.control.listen.endswith("mode=600")


def test_defaults_apply(tmp_path):
    config = load(tmp_path, '[[lookup]]\nprotocol = "policy"\nlisten = "unix:address=/tmp/p"\n')
    assert config.ledger.ttl == 1800 and config.ledger.ipv6_prefix == 128
    assert config.lookups[0].authorised_action == "OK" and config.lookups[0].unknown_action == "DUNNO"


def test_unknown_key_names_file_table_and_key(tmp_path):
    message = error(tmp_path, GOOD.replace("unknown_action", "unknwn_action"))
    assert message.startswith(str(tmp_path / "popbridge.toml") + ": [[lookup]] #1 unknwn_action: unknown key")


def test_unknown_top_level_table_is_an_error(tmp_path):
    assert "ledgr: unknown key" in error(tmp_path, GOOD + "\n[ledgr]\nttl = 5\n")


def test_bad_endpoint_names_the_key(tmp_path):
    message = error(tmp_path, GOOD.replace('"tcp:host=127.0.0.1:port=110"', '"tcpp:host=x"'))
    assert ": [[proxy]] #1 backend: not a usable endpoint" in message


def test_missing_listen_is_an_error(tmp_path):
    assert "[[lookup]] #1 listen: missing" in error(tmp_path, '[[lookup]]\nprotocol = "policy"\n')


def test_unknown_protocol_is_an_error(tmp_path):
    assert "[[proxy]] #1 protocol: 'smtp' is not one of" in error(tmp_path, GOOD.replace('"pop3"', '"smtp"'))


def test_wrong_types_are_errors(tmp_path):
    assert "[ledger] ttl: must be a number" in error(tmp_path, GOOD.replace("ttl = 1800", 'ttl = "30m"'))
    assert "[ledger] ipv6_prefix" in error(tmp_path, GOOD.replace("ipv6_prefix = 64", "ipv6_prefix = 129"))
    assert "forward_client_address: must be true or false" in error(tmp_path, GOOD.replace("= true", '= "yes"'))


def test_updates_are_a_whoson_setting_only(tmp_path):
    text = GOOD.replace('unknown_action = "DUNNO"', 'unknown_action = "DUNNO"\nallow_updates = true')
    assert "[[lookup]] #1 allow_updates: unknown key for protocol 'policy'" in error(tmp_path, text)


def test_unsupported_store_is_an_error(tmp_path):
    assert "[ledger] store: unsupported store" in error(tmp_path, GOOD.replace('"memory"', '"mysql://db/x"'))


def test_invalid_toml_names_the_file(tmp_path):
    assert error(tmp_path, "[ledger\n").startswith(str(tmp_path / "popbridge.toml") + ": not valid TOML")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_workers_default_to_one_process(tmp_path):
    assert load(tmp_path, GOOD).daemon.workers == 0


def test_workers_auto_is_one_per_usable_cpu(tmp_path):
    config = load(tmp_path, GOOD + '[daemon]\nworkers = "auto"\n')
    assert config.daemon.workers == len(os.sched_getaffinity(0))


def test_workers_must_be_a_count_or_auto(tmp_path):
    for bad in ('"many"', "-1", "true", "2.5"):
        message = error(tmp_path, GOOD + f"[daemon]\nworkers = {bad}\n")
        assert message.endswith('popbridge.toml: [daemon] workers: must be "auto" or a whole number from 0 to 256')
