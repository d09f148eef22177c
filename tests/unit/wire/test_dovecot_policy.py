"""Dovecot's auth-policy JSON, decoded: what Dovecot 2.3 sends, and everything it never sends."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbridge.wire.dovecot_policy import MAX_BODY, PolicyRequest, PolicyRequestError, decode_policy_request

# a report exactly as Dovecot 2.3.19 sent it in tests/integration/test_dovecot_feed.py
REPORT = (
    b'{"device_id":"","login":"alice","protocol":"imap","pwhash":"0359","remote":"127.0.0.1",'
    b'"session_id":"bC1w0tFhsOR/AAAB","success":true,"policy_reject":false,"tls":false}'
)
ALLOW = b'{"device_id":"","login":"alice","protocol":"imap","pwhash":"0359","remote":"127.0.0.1","tls":true}'


def reason(command: str | None, body: bytes) -> str:
    with pytest.raises(PolicyRequestError) as e:
        decode_policy_request(command, body)
    return e.value.reason


def test_a_dovecot_report_decodes_to_its_login_fields() -> None:
    assert decode_policy_request("report", REPORT) == PolicyRequest(
        command="report", login="alice", remote="127.0.0.1", protocol="imap", tls=False, success=True, policy_reject=False
    )


def test_an_allow_has_no_success_of_its_own() -> None:
    assert decode_policy_request("allow", ALLOW) == PolicyRequest("allow", "alice", "127.0.0.1", "imap", tls=True)


def test_nested_attributes_and_extra_keys_are_accepted_and_dropped() -> None:
    body = json.loads(REPORT) | {"attrs": {"cos": "premium"}, "device_id": "x"}
    assert decode_policy_request("report", json.dumps(body).encode()).login == "alice"


def test_tls_may_be_absent_as_before_dovecot_2_3_2() -> None:
    body = json.loads(ALLOW)
    del body["tls"]
    assert decode_policy_request("allow", json.dumps(body).encode()).tls is False


def test_an_empty_remote_is_a_request_without_a_client_address() -> None:
    body = json.loads(REPORT) | {"remote": ""}
    assert decode_policy_request("report", json.dumps(body).encode()).remote == ""


@pytest.mark.parametrize("field", ["login", "remote", "protocol", "success", "policy_reject"])
def test_a_report_without_a_needed_field_is_refused(field: str) -> None:
    body = json.loads(REPORT)
    del body[field]
    assert reason("report", json.dumps(body).encode()) == "missing_field"


@pytest.mark.parametrize(
    "field, value", [("success", "true"), ("success", 1), ("tls", "false"), ("login", True), ("remote", None), ("protocol", 3)]
)
def test_a_field_of_the_wrong_type_is_refused(field: str, value: object) -> None:
    assert reason("report", json.dumps(json.loads(REPORT) | {field: value}).encode()) == "bad_field"


@pytest.mark.parametrize("login", ["al\nice", "x" * 256, "\x00"])
def test_a_login_that_is_not_a_printable_bounded_name_is_refused(login: str) -> None:
    assert reason("report", json.dumps(json.loads(REPORT) | {"login": login}).encode()) == "bad_field"


@pytest.mark.parametrize("remote", ["mail.example.org", "127.0.0.1; DROP", "300.1.1.1", " "])
def test_a_remote_that_is_not_an_address_is_refused(remote: str) -> None:
    assert reason("report", json.dumps(json.loads(REPORT) | {"remote": remote}).encode()) == "bad_remote"


@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b'"x"', b"\xff\xfe", b'{"login": NaN}', b"[" * 60_000])
def test_what_is_not_a_json_object_is_malformed(body: bytes) -> None:
    assert reason("report", body) == "malformed"


@pytest.mark.parametrize("command", [None, "", "ALLOW", "reject", "report\n"])
def test_an_unknown_command_is_refused(command: str | None) -> None:
    assert reason(command, REPORT) == "unknown_command"


def test_a_body_over_the_limit_is_refused_before_it_is_parsed() -> None:
    assert reason("report", REPORT[:-1] + b"," + b" " * MAX_BODY + b"}") == "too_large"


@given(st.sampled_from(["allow", "report", "other"]), st.binary(max_size=300))
def test_only_the_request_error_escapes_for_any_bytes(command: str, body: bytes) -> None:
    try:
        decode_policy_request(command, body)
    except PolicyRequestError:
        pass


addresses = st.one_of(st.ip_addresses().map(str), st.just(""))
names = st.text(max_size=60).filter(str.isprintable)
extras = st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=20), st.dictionaries(st.text(max_size=5), st.text(max_size=5))), max_size=4)


@given(names, addresses, names, st.booleans(), st.booleans(), st.booleans(), extras)
def test_every_report_dovecot_can_build_decodes_to_its_fields(
    login: str, remote: str, protocol: str, success: bool, reject: bool, tls: bool, extra: dict[str, object]
) -> None:
    fields = {"login": login, "remote": remote, "protocol": protocol, "success": success, "policy_reject": reject, "tls": tls}
    body = json.dumps({**extra, **fields}, ensure_ascii=False).encode()  # Dovecot writes UTF-8, escaping only what JSON must
    assert decode_policy_request("report", body) == PolicyRequest("report", login, remote, protocol, tls, success, reject)
