from base64 import b64encode

from hypothesis import given
from hypothesis import strategies as st

from popbridge.wire.sasl import SaslUserReader


def read(mechanism: str, *responses: bytes) -> str:
    reader = SaslUserReader(mechanism)
    for response in responses:
        reader.client_response(b64encode(response))
    return reader.user


def test_plain_gives_the_authcid_without_an_authzid():
    assert read("PLAIN", b"\0alice\0secret") == "alice"


def test_plain_gives_the_authzid_when_present():
    assert read("plain", b"bob\0master\0secret") == "bob"


def test_plain_with_the_wrong_number_of_fields_gives_no_name():
    assert read("PLAIN", b"alice\0secret") == ""


def test_login_gives_the_first_response_only():
    assert read("LOGIN", b"alice", b"secret") == "alice"


def test_cram_md5_gives_the_name_before_the_digest():
    assert read("CRAM-MD5", b"joe user 3dbc88f0624776a737b39093f6eb6427") == "joe user"


def test_scram_gives_the_saslname():
    assert read("SCRAM-SHA-256", b"n,,n=al=3Dice,r=rOprNGfwEbeRWgbNEkqO") == "al=ice"


def test_unknown_mechanisms_give_no_name():
    assert read("GSSAPI", b"\x60\x82anything") == ""
    assert read("EXTERNAL", b"alice") == ""


def test_empty_initial_response_and_cancel_give_no_name():
    reader = SaslUserReader("PLAIN")
    reader.client_response(b"=")
    assert reader.user == ""
    reader = SaslUserReader("LOGIN")
    reader.client_response(b"*")
    assert reader.user == ""


def test_invalid_base64_gives_no_name():
    reader = SaslUserReader("PLAIN")
    reader.client_response(b"not base64!")
    assert reader.user == ""


def test_control_characters_are_dropped_from_names():
    assert read("LOGIN", b"ali\nce\x1b[2J") == "alice[2J"


@given(mechanism=st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-1", "X"]),
       responses=st.lists(st.binary(max_size=200), max_size=4), raw=st.booleans())
def test_any_response_gives_a_printable_bounded_name(mechanism, responses, raw):
    reader = SaslUserReader(mechanism)
    for response in responses:
        reader.client_response(response if raw else b64encode(response))
    assert len(reader.user) <= 255 and reader.user.isprintable()
