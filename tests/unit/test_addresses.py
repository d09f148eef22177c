from hypothesis import given
from hypothesis import strategies as st

from popbridge.addresses import client_key


def test_ipv4_is_its_own_key():
    assert client_key("192.0.2.7") == "192.0.2.7"


def test_ipv4_mapped_ipv6_folds_to_ipv4():
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_ipv6_is_compressed():
    assert client_key("2001:0db8:0000:0000:0000:0000:0000:0001") == "2001:db8::1"


def test_ipv6_prefix_groups_a_network():
    assert client_key("2001:db8::1", 64) == client_key("2001:db8::ffff:1", 64) == "2001:db8::/64"


def test_ipv6_prefix_leaves_ipv4_alone():
    assert client_key("192.0.2.7", 64) == "192.0.2.7"


def test_hostnames_and_junk_have_no_key():
    for text in ("unknown", "mail.example.org", "", "1.2.3", "192.0.2.7/24"):
        assert client_key(text) is None


def test_scope_and_brackets_are_dropped():
    assert client_key("[fe80::1%eth0]") == "fe80::1"


@given(st.text(max_size=60), st.integers(min_value=1, max_value=128))
def test_any_text_gives_a_key_or_none(text, prefix):
    key = client_key(text, prefix)
    assert key is None or client_key(key.split("/")[0], prefix) == key
