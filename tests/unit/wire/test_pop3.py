import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popbridge.wire.login import LoginFailed, LoginSucceeded
from popbridge.wire.pop3 import Pop3LoginWatcher, Pop3ProtocolError, State
from tests.unit.wire.sessions import GREETING, run_session


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# the backend lists SASL in CAPA: an RFC 5034 server, which reads initial responses as such
SASL_CAPA = [("backend", GREETING), ("client", b"CAPA\r\n"),
             ("backend", b"+OK\r\nUSER\r\nSASL PLAIN LOGIN CRAM-MD5 XOAUTH2 OAUTHBEARER\r\n.\r\n")]


def test_pass_accepted_records_the_user_named_by_user():
    outcome = run_session([
        ("backend", GREETING), ("client", b"USER alice\r\n"), ("backend", b"+OK\r\n"),
        ("client", b"PASS secret\r\n"), ("backend", b"+OK Logged in.\r\n"),
    ])
    assert outcome.logins == [LoginSucceeded("alice", "USER")]
    assert outcome.to_backend == b"USER alice\r\nPASS secret\r\n"
    assert outcome.to_client == GREETING + b"+OK\r\n+OK Logged in.\r\n"


def test_login_event_comes_before_the_success_line_is_released():
    watcher = Pop3LoginWatcher()
    run_session([("backend", GREETING), ("client", b"USER a\r\nPASS b\r\n"), ("backend", b"+OK\r\n")], watcher)
    actions = watcher.feed_backend(b"+OK Logged in.\r\n")
    assert [type(a).__name__ for a in actions] == ["LoginSucceeded", "ToClient", "Authenticated"]


def test_pipelined_commands_are_released_one_at_a_time():
    watcher = Pop3LoginWatcher()
    run_session([("backend", GREETING)], watcher)
    first = run_session([("client", b"USER bob\r\nPASS wrong\r\nNOOP\r\n")], watcher)
    assert first.to_backend == b"USER bob\r\n"
    second = run_session([("backend", b"+OK\r\n")], watcher)
    assert second.to_backend == b"PASS wrong\r\n"


def test_pipelined_user_wrong_pass_noop_records_nothing():
    outcome = run_session([
        ("backend", GREETING), ("client", b"USER bob\r\nPASS wrong\r\nNOOP\r\n"), ("backend", b"+OK\r\n"),
        ("backend", b"-ERR [AUTH] Authentication failed.\r\n"), ("backend", b"-ERR Unknown command.\r\n"),
    ])
    assert outcome.logins == []
    assert outcome.failures == [LoginFailed("bob", "USER")]
    assert outcome.to_backend == b"USER bob\r\nPASS wrong\r\nNOOP\r\n"


def test_in_use_error_to_a_correct_pass_records_nothing():
    outcome = run_session([
        ("backend", GREETING), ("client", b"USER alice\r\n"), ("backend", b"+OK\r\n"),
        ("client", b"PASS right\r\n"), ("backend", b"-ERR [IN-USE] Mailbox locked.\r\n"),
    ])
    assert outcome.logins == []


def test_a_second_user_command_replaces_the_first():
    outcome = run_session([
        ("backend", GREETING), ("client", b"USER alice\r\nUSER bob\r\nPASS pw\r\n"),
        ("backend", b"+OK\r\n"), ("backend", b"+OK\r\n"), ("backend", b"+OK Logged in.\r\n"),
    ])
    assert outcome.logins == [LoginSucceeded("bob", "USER")]


def test_ok_to_user_alone_is_not_a_login():
    outcome = run_session([("backend", GREETING), ("client", b"USER alice\r\n"), ("backend", b"+OK\r\n")])
    assert outcome.logins == []


def test_greeting_is_not_a_login():
    assert run_session([("backend", GREETING)]).logins == []


def test_ok_to_another_command_is_not_a_login():
    outcome = run_session([("backend", GREETING), ("client", b"NOOP\r\n"), ("backend", b"+OK\r\n")])
    assert outcome.logins == []


def test_capa_is_read_to_its_dot_line_and_loses_stls_and_xclient():
    outcome = run_session([
        ("backend", GREETING), ("client", b"CAPA\r\nUSER alice\r\n"),
        ("backend", b"+OK\r\nCAPA\r\nTOP\r\nSTLS\r\nXCLIENT\r\nSASL PLAIN LOGIN\r\nUSER\r\n.\r\n"),
    ])
    assert outcome.to_client == GREETING + b"+OK\r\nCAPA\r\nTOP\r\nSASL PLAIN LOGIN\r\nUSER\r\n.\r\n"
    assert outcome.to_backend == b"CAPA\r\nUSER alice\r\n"


def test_multiline_body_lines_that_look_like_status_are_not_parsed():
    outcome = run_session([
        ("backend", GREETING), ("client", b"CAPA\r\nUSER a\r\nPASS b\r\n"),
        ("backend", b"+OK\r\n+OK fake\r\n..\r\n.\r\n"), ("backend", b"+OK\r\n"), ("backend", b"-ERR no\r\n"),
    ])
    assert outcome.logins == []


def test_apop_records_its_name():
    outcome = run_session([
        ("backend", GREETING), ("client", b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n"),
        ("backend", b"+OK maildrop has 1 message\r\n"),
    ])
    assert outcome.logins == [LoginSucceeded("mrose", "APOP")]


def test_auth_plain_with_initial_response_records_the_authcid():
    outcome = run_session([
        *SASL_CAPA, ("client", b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n"),
        ("backend", b"+OK Logged in.\r\n"),
    ])
    assert outcome.logins == [LoginSucceeded("alice", "AUTH PLAIN")]
    assert outcome.to_backend == b"CAPA\r\nAUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n"


def test_initial_response_answers_the_first_challenge_when_capa_was_not_seen():
    outcome = run_session([
        ("backend", GREETING), ("client", b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n"),
        ("backend", b"+ \r\n"), ("backend", b"+OK Logged in.\r\n"),
    ])
    assert outcome.to_backend == b"AUTH PLAIN\r\n" + b64(b"\0alice\0secret") + b"\r\n"
    assert outcome.to_client == GREETING + b"+OK Logged in.\r\n"
    assert outcome.logins == [LoginSucceeded("alice", "AUTH PLAIN")]


def test_ok_before_the_held_initial_response_was_sent_is_a_protocol_error():
    with pytest.raises(Pop3ProtocolError):
        run_session([("backend", GREETING), ("client", b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n"), ("backend", b"+OK\r\n")])


def test_cram_md5_with_an_initial_response_is_refused_unforwarded():
    outcome = run_session([
        *SASL_CAPA, ("client", b"AUTH CRAM-MD5 " + b64(b"mallory 0123456789abcdef0123456789abcdef") + b"\r\n"),
    ])
    assert outcome.to_backend == b"CAPA\r\n"
    assert outcome.to_client.endswith(b"-ERR popbridge: CRAM-MD5 takes no initial response\r\n")


def test_empty_initial_response_for_a_named_mechanism_is_refused():
    outcome = run_session([*SASL_CAPA, ("client", b"AUTH PLAIN =\r\n")])
    assert outcome.to_backend == b"CAPA\r\n" and outcome.to_client.endswith(b"\r\n-ERR popbridge: an empty initial response is not accepted for PLAIN\r\n")


def test_mechanism_the_backend_did_not_list_is_refused():
    outcome = run_session([*SASL_CAPA, ("client", b"AUTH DIGEST-MD5\r\n")])
    assert outcome.to_backend == b"CAPA\r\n" and outcome.to_client.endswith(b"-ERR popbridge: DIGEST-MD5 is not offered here\r\n")


def test_a_malformed_first_response_is_replaced_by_a_cancel():
    outcome = run_session([
        ("backend", GREETING), ("client", b"AUTH PLAIN\r\n"), ("backend", b"+ \r\n"),
        ("client", b"AGFsaWNlAHB3 \r\n"), ("backend", b"-ERR Authentication aborted\r\n"),
    ])
    assert outcome.to_backend == b"AUTH PLAIN\r\n*\r\n"
    assert outcome.logins == [] and outcome.to_client.endswith(b"-ERR Authentication aborted\r\n")


def test_ok_to_a_cancelled_exchange_is_a_protocol_error():
    with pytest.raises(Pop3ProtocolError):
        run_session([
            ("backend", GREETING), ("client", b"AUTH PLAIN\r\n"), ("backend", b"+ \r\n"),
            ("client", b"*\r\n"), ("backend", b"+OK\r\n"),
        ])


@pytest.mark.parametrize("argument", [b"", b" alice", b"alice ", b"ali\x01ce", b"\xffalice"])
def test_user_names_that_servers_could_read_differently_are_refused(argument):
    outcome = run_session([("backend", GREETING), ("client", b"USER " + argument + b"\r\n")])
    assert outcome.to_backend == b"" and outcome.to_client.startswith(GREETING + b"-ERR popbridge: ")


def test_apop_is_refused_when_the_greeting_offers_no_timestamp():
    outcome = run_session([("backend", b"+OK ready\r\n"), ("client", b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n")])
    assert outcome.to_backend == b"" and outcome.to_client == b"+OK ready\r\n-ERR popbridge: APOP is not offered here\r\n"


@pytest.mark.parametrize("argument", [b"mrose", b"mrose x", b"m rose c4c9334bac560ecc979e58001b3e22fb", b"mrose  c4c9334bac560ecc979e58001b3e22fb"])
def test_apop_other_than_name_and_digest_is_refused(argument):
    outcome = run_session([("backend", GREETING), ("client", b"APOP " + argument + b"\r\n")])
    assert outcome.to_backend == b""


def test_auth_plain_with_an_authzid_records_the_authzid():
    outcome = run_session([
        ("backend", GREETING), ("client", b"AUTH PLAIN\r\n"), ("backend", b"+ \r\n"),
        ("client", b64(b"bob\0master\0secret") + b"\r\n"), ("backend", b"+OK Logged in.\r\n"),
    ])
    assert outcome.logins == [LoginSucceeded("bob", "AUTH PLAIN")]


def test_auth_login_takes_the_user_from_the_first_response():
    outcome = run_session([
        ("backend", GREETING), ("client", b"AUTH LOGIN\r\n"), ("backend", b"+ VXNlcm5hbWU6\r\n"),
        ("client", b64(b"alice") + b"\r\n"), ("backend", b"+ UGFzc3dvcmQ6\r\n"),
        ("client", b64(b"secret") + b"\r\n"), ("backend", b"+OK Logged in.\r\n"),
    ])
    assert outcome.logins == [LoginSucceeded("alice", "AUTH LOGIN")]


def test_auth_cram_md5_takes_the_user_before_the_digest():
    outcome = run_session([
        ("backend", GREETING), ("client", b"AUTH CRAM-MD5\r\n"), ("backend", b"+ " + b64(b"<1.2@host>") + b"\r\n"),
        ("client", b64(b"alice b913a602c7eda7a495b4e6e7334d3890") + b"\r\n"), ("backend", b"+OK\r\n"),
    ])
    assert outcome.logins == [LoginSucceeded("alice", "AUTH CRAM-MD5")]


def test_auth_xoauth2_takes_the_user_field():
    token = b64(b"user=alice@example.org\x01auth=Bearer ya29.token\x01\x01")
    outcome = run_session([*SASL_CAPA, ("client", b"AUTH XOAUTH2 " + token + b"\r\n"), ("backend", b"+OK\r\n")])
    assert outcome.logins == [LoginSucceeded("alice@example.org", "AUTH XOAUTH2")]


def test_auth_oauthbearer_takes_the_gs2_authzid():
    token = b64(b"n,a=alice=2Cx@example.org,\x01host=server\x01auth=Bearer abc\x01\x01")
    outcome = run_session([*SASL_CAPA, ("client", b"AUTH OAUTHBEARER " + token + b"\r\n"), ("backend", b"+OK\r\n")])
    assert outcome.logins == [LoginSucceeded("alice,x@example.org", "AUTH OAUTHBEARER")]


def test_failed_xoauth2_error_continuation_records_nothing():
    token = b64(b"user=alice\x01auth=Bearer bad\x01\x01")
    outcome = run_session([
        *SASL_CAPA, ("client", b"AUTH XOAUTH2 " + token + b"\r\n"),
        ("backend", b"+ " + b64(b'{"status":"401"}') + b"\r\n"), ("client", b"\r\n"),
        ("backend", b"-ERR [AUTH] failed\r\n"),
    ])
    assert outcome.logins == [] and outcome.failures == [LoginFailed("alice", "AUTH XOAUTH2")]


def test_auth_cancelled_with_star_records_nothing():
    outcome = run_session([
        ("backend", GREETING), ("client", b"AUTH LOGIN\r\n"), ("backend", b"+ VXNlcm5hbWU6\r\n"),
        ("client", b"*\r\n"), ("backend", b"-ERR Authentication aborted\r\n"),
    ])
    assert outcome.logins == []
    assert outcome.to_backend.endswith(b"*\r\n")


def test_a_continuation_answer_is_sasl_data_never_a_command():
    outcome = run_session([
        ("backend", GREETING), ("client", b"AUTH LOGIN\r\n"), ("backend", b"+ VXNlcm5hbWU6\r\n"),
        ("client", b"STLS\r\n"), ("backend", b"-ERR Invalid base64 data\r\n"),
    ])
    assert outcome.to_backend == b"AUTH LOGIN\r\n*\r\n"  # not base64: refused, and never a command
    assert outcome.logins == []


def test_auth_without_mechanism_lists_mechanisms_to_the_dot():
    outcome = run_session([
        ("backend", GREETING), ("client", b"AUTH\r\nNOOP\r\n"), ("backend", b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"),
    ])
    assert outcome.to_backend == b"AUTH\r\nNOOP\r\n"


def test_stls_is_refused_locally_and_never_forwarded():
    outcome = run_session([("backend", GREETING), ("client", b"STLS\r\n")])
    assert outcome.to_backend == b""
    assert outcome.to_client.endswith(b"-ERR STLS is not offered here\r\n")


def test_a_clients_own_xclient_is_refused_locally():
    outcome = run_session([("backend", GREETING), ("client", b"XCLIENT ADDR=10.0.0.1\r\n")])
    assert outcome.to_backend == b""
    assert outcome.to_client.startswith(GREETING + b"-ERR")


def test_commands_pipelined_behind_the_login_are_handed_over():
    outcome = run_session([
        ("backend", GREETING), ("client", b"USER a\r\nPASS b\r\nSTAT\r\nLIST\r\n"),
        ("backend", b"+OK\r\n"), ("backend", b"+OK Logged in.\r\n"),
    ])
    assert outcome.to_backend == b"USER a\r\nPASS b\r\nSTAT\r\nLIST\r\n"
    assert "authenticated" in outcome.events


def test_after_login_bytes_pass_through_unparsed():
    watcher = Pop3LoginWatcher()
    run_session([("backend", GREETING), ("client", b"APOP a 0123456789abcdef0123456789abcdef\r\n"), ("backend", b"+OK\r\n")], watcher)
    assert watcher.state is State.AUTHENTICATED
    outcome = run_session([("client", b"RETR 1\r\n\0\xff"), ("backend", b"junk without status\n")], watcher)
    assert outcome.to_backend == b"RETR 1\r\n\0\xff"
    assert outcome.to_client == b"junk without status\n"


def test_xclient_is_sent_before_any_client_command_when_offered():
    watcher = Pop3LoginWatcher(client_address=("192.0.2.7", 50123))
    outcome = run_session([
        ("backend", GREETING), ("client", b"USER alice\r\n"),
        ("backend", b"+OK\r\nUSER\r\nXCLIENT\r\n.\r\n"), ("backend", b"+OK Updated\r\n"),
    ], watcher)
    assert outcome.to_backend == b"CAPA\r\nXCLIENT ADDR=192.0.2.7 PORT=50123\r\nUSER alice\r\n"
    assert outcome.to_client == GREETING
    assert outcome.notices == []


def test_xclient_offered_in_the_greeting_is_sent_without_asking_capa():
    watcher = Pop3LoginWatcher(client_address=("192.0.2.7", 50123))
    outcome = run_session([
        ("backend", b"+OK [XCLIENT] Dovecot (Debian) ready.\r\n"), ("client", b"CAPA\r\n"),
        ("backend", b"+OK Updated\r\n"),
    ], watcher)
    assert outcome.to_backend == b"XCLIENT ADDR=192.0.2.7 PORT=50123\r\nCAPA\r\n"
    assert outcome.to_client == b"+OK Dovecot (Debian) ready.\r\n"


def test_clients_never_see_the_xclient_greeting_code():
    outcome = run_session([("backend", b"+OK [XCLIENT] Dovecot ready. <1.2@x>\r\n")])
    assert outcome.to_client == b"+OK Dovecot ready. <1.2@x>\r\n"


def test_without_xclient_on_offer_the_greeting_is_released_with_a_notice():
    watcher = Pop3LoginWatcher(client_address=("192.0.2.7", 50123))
    outcome = run_session([("backend", GREETING), ("backend", b"+OK\r\nUSER\r\n.\r\n")], watcher)
    assert outcome.to_backend == b"CAPA\r\n"
    assert outcome.to_client == GREETING
    assert len(outcome.notices) == 1


def test_unsolicited_backend_line_is_a_protocol_error():
    with pytest.raises(Pop3ProtocolError):
        run_session([("backend", GREETING + b"+OK surprise\r\n")])


def test_backend_line_without_status_is_a_protocol_error():
    with pytest.raises(Pop3ProtocolError):
        run_session([("backend", b"HELLO\r\n")])


def test_overlong_client_line_is_a_protocol_error():
    with pytest.raises(Pop3ProtocolError) as error:
        run_session([("backend", GREETING), ("client", b"USER " + b"a" * 20_000)], Pop3LoginWatcher(max_line=16_384))
    assert error.value.reply.startswith(b"-ERR")


def test_nul_in_a_command_is_a_protocol_error():
    with pytest.raises(Pop3ProtocolError):
        run_session([("backend", GREETING), ("client", b"USER al\0ice\r\n")])


def test_too_much_pipelined_input_is_a_protocol_error():
    with pytest.raises(Pop3ProtocolError):
        run_session([("client", b"NOOP\r\n" * 20_000)], Pop3LoginWatcher(max_pending=65_536))


SESSIONS = [
    [("backend", GREETING), ("client", b"CAPA\r\nUSER alice\r\nPASS x\r\nSTAT\r\n"),
     ("backend", b"+OK\r\nSTLS\r\nUSER\r\n.\r\n"), ("backend", b"+OK\r\n"), ("backend", b"+OK in\r\n"),
     ("backend", b"+OK 1 2\r\n")],
    [("backend", GREETING), ("client", b"AUTH PLAIN\r\n"), ("backend", b"+ \r\n"),
     ("client", b64(b"\0bob\0pw") + b"\r\n"), ("backend", b"-ERR no\r\n"), ("client", b"QUIT\r\n"), ("backend", b"+OK\r\n")],
    [("backend", GREETING), ("client", b"AUTH LOGIN\r\n"), ("backend", b"+ VXNlcm5hbWU6\r\n"),
     ("client", b64(b"carol") + b"\r\n"), ("backend", b"+ UGFzc3dvcmQ6\r\n"), ("client", b64(b"pw") + b"\r\n"),
     ("backend", b"+OK\r\n"), ("client", b"RETR 1\r\n")],
]


@settings(max_examples=60, deadline=None)
@given(session=st.sampled_from(SESSIONS), chunk=st.integers(min_value=1, max_value=64))
def test_chunking_never_changes_the_outcome(session, chunk):
    whole = run_session(session)
    assert run_session(session, chunk=chunk) == whole


@settings(max_examples=300, deadline=None)
@given(client=st.binary(max_size=300), backend=st.binary(max_size=300))
def test_arbitrary_input_raises_only_the_protocol_error(client, backend):
    watcher = Pop3LoginWatcher(max_line=64, max_pending=256)
    try:
        watcher.feed_backend(GREETING)
        watcher.feed_client(client)
        watcher.feed_backend(backend)
    except Pop3ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(reply=st.binary(max_size=80).filter(lambda b: not b.startswith(b"+OK")))
def test_only_ok_to_pass_counts_as_a_login(reply):
    try:
        outcome = run_session([("backend", GREETING), ("client", b"USER a\r\nPASS b\r\n"), ("backend", b"+OK\r\n"), ("backend", reply + b"\r\n")])
    except Pop3ProtocolError:
        return
    assert outcome.logins == []


def test_ok_to_auth_before_any_sasl_response_is_a_protocol_error():
    with pytest.raises(Pop3ProtocolError):
        run_session([("backend", GREETING), ("client", b"AUTH PLAIN\r\n"), ("backend", b"+OK Logged in.\r\n")])


def test_ok_while_a_sasl_challenge_is_unanswered_is_a_protocol_error():
    with pytest.raises(Pop3ProtocolError):
        run_session([("backend", GREETING), ("client", b"AUTH PLAIN\r\n"), ("backend", b"+ \r\n+OK Logged in.\r\n")])
