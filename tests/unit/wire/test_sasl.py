from base64 import b64encode

import pytest
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


def refusal(mechanism: str, response: bytes) -> str | None:
    return SaslUserReader(mechanism).client_response(b64encode(response))


def test_names_with_control_characters_are_refused_not_cleaned():
    assert refusal("LOGIN", b"ali\nce\x1b[2J") is not None


def test_names_over_255_characters_are_refused_not_cut():
    assert refusal("LOGIN", b"a" * 256) is not None and refusal("LOGIN", b"a" * 255) is None


def test_names_that_are_not_utf8_are_refused():
    assert refusal("PLAIN", b"\0\xffalice\0pw") is not None


@pytest.mark.parametrize("message", [b"alice\0pw", b"\0\0pw", b"a\0b\0c\0d"])
def test_malformed_plain_is_refused(message):
    assert refusal("PLAIN", message) is not None


def test_xoauth2_with_two_user_fields_is_refused():
    assert refusal("XOAUTH2", b"user=alice\x01user=bob\x01auth=Bearer x\x01\x01") is not None


def test_cram_md5_response_without_a_digest_is_refused():
    assert refusal("CRAM-MD5", b"alice") is not None and refusal("CRAM-MD5", b"alice nothex") is not None


def test_scram_with_a_malformed_saslname_is_refused():
    assert refusal("SCRAM-SHA-1", b"n,,n=al=ice,r=abc") is not None


def test_scram_authzid_is_the_recorded_name():
    assert read("SCRAM-SHA-256", b"n,a=bob,n=admin,r=abc") == "bob"


def test_invalid_base64_is_refused_and_cancels():
    reader = SaslUserReader("PLAIN")
    assert reader.client_response(b"AGFsaWNlAHB3 ") is not None and reader.cancelled


def test_server_first_mechanisms_refuse_any_initial_response():
    for mechanism in ("CRAM-MD5", "DIGEST-MD5"):
        assert SaslUserReader(mechanism).initial_response(b"=") is not None


def test_empty_initial_response_is_refused_only_where_a_name_is_expected():
    assert SaslUserReader("PLAIN").initial_response(b"=") is not None
    assert SaslUserReader("LOGIN").initial_response(b"=") is not None
    assert SaslUserReader("EXTERNAL").initial_response(b"=") is None


def test_only_the_first_message_names_the_user():
    assert read("LOGIN", b"alice", b"\xff\x00 secret") == "alice"


@given(mechanism=st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-1", "X"]),
       responses=st.lists(st.binary(max_size=200), max_size=4), raw=st.booleans())
def test_any_response_gives_a_printable_bounded_name(mechanism, responses, raw):
    reader = SaslUserReader(mechanism)
    for response in responses:
        reader.client_response(response if raw else b64encode(response))
    assert len(reader.user) <= 255 and reader.user.isprintable()
