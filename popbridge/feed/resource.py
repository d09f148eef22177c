"""The HTTP side of the Dovecot feed: twisted.web receives, `wire.dovecot_policy` decodes,
`feed.rules` decides, the ledger records.

Every answer to an authenticated, well-formed ``allow`` is Dovecot's "continue"
(`ALLOW_ANSWER`): popbridge never refuses, tarpits or fails a login. With ``record_on =
"after_auth"`` that answer is written only once the ledger write has fired (record before
release: Dovecot tells the client OK after it); a store that fails still gets "continue".
Requests are never access-logged and bodies never logged: they carry Dovecot's ``pwhash``.
"""

import hmac
import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from popbridge.feed.rules import RECORD, AfterAuthGuard, FeedRules
from popbridge.ledger import ILedger
from popbridge.metrics.counters import Counters
from popbridge.settings import FeedConfig
from popbridge.wire.dovecot_policy import ALLOW_ANSWER, MAX_BODY, PolicyRequest, PolicyRequestError, decode_policy_request

WARN_INTERVAL = 60.0  # seconds between two warnings for the same reason


class BoundedRequest(Request):
    """A request whose body is kept only up to MAX_BODY bytes; the rest is read and dropped."""

    body_too_large = False
    content: io.BytesIO  # set in gotLength, before any chunk arrives

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()  # in memory, whatever the declared length: at most MAX_BODY is kept

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large or self.content.tell() + len(data) > MAX_BODY:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


class DovecotPolicyResource(Resource):
    """Answers ``POST <any path>?command=allow|report``."""

    isLeaf = True
    log = Logger()

    def __init__(self, settings: FeedConfig, ledger: ILedger, counters: Counters, clock: IReactorTime) -> None:
        super().__init__()
        self._settings, self._ledger, self._metrics, self._clock = settings, ledger, counters.metrics, clock
        self._key = settings.api_key.encode()
        self._header = settings.api_header.encode()
        self._rules = FeedRules.of(settings.protocols, settings.ignore_addresses)
        self._guard = AfterAuthGuard() if settings.record_on == "after_auth" else None
        self._warned: dict[str, float] = {}

    def render(self, request: Request) -> bytes | int:
        if request.method != b"POST":  # answered here: Twisted's own 405 page is deprecated
            request.setResponseCode(405)
            request.setHeader(b"allow", b"POST")
            return b"POST only\n"
        return self.render_POST(request)

    def render_POST(self, request: Request) -> bytes | int:
        command = (request.args or {}).get(b"command", [b""])[0].decode("latin-1")
        if not self._authorised(request):
            return self._refuse(request, 401, command, PolicyRequestError("unauthorised", "wrong or missing API key"))
        try:
            if getattr(request, "body_too_large", False):
                raise PolicyRequestError("too_large", f"body over {MAX_BODY} bytes")
            assert request.content is not None
            decoded = decode_policy_request(command, request.content.getvalue())
        except PolicyRequestError as e:
            return self._refuse(request, 413 if e.reason == "too_large" else 400, command, e)
        if decoded.command == "report" and self._guard is not None and self._guard.reported(decoded, self._clock.seconds()):
            self._tripped(decoded)
        outcome = self._rules.outcome(decoded, records_on_allow=self._guard is not None and self._guard.records_on_allow)
        self._metrics.feed_request(decoded.command, outcome)
        if outcome != RECORD:
            request.setHeader(b"content-type", b"application/json")
            return ALLOW_ANSWER
        gone: list[bool] = []  # Dovecot gave up waiting (its 2 s timeout): nobody to answer
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        recorded: Deferred[Any] = self._ledger.record(decoded.remote, decoded.login, decoded.protocol, tls=decoded.tls)
        recorded.addCallbacks(
            self._recorded, self._not_recorded, callbackArgs=(request, decoded, gone), errbackArgs=(request, decoded, gone)
        )
        return NOT_DONE_YET

    def _authorised(self, request: Request) -> bool:
        if self._settings.allow_unauthenticated:
            return True
        return hmac.compare_digest(request.getHeader(self._header) or b"", self._key)

    def _recorded(self, _: object, request: Request, decoded: PolicyRequest, gone: list[bool]) -> None:
        if self._guard is not None and decoded.command == "allow":
            self._guard.recorded_on_allow(decoded, self._clock.seconds())
        self.log.info(
            "login learned from Dovecot {command}: user {user!r} from {client} via {protocol}",
            command=decoded.command, user=decoded.login, client=decoded.remote, protocol=decoded.protocol,
        )
        _answer(request, gone, 200, ALLOW_ANSWER)

    def _not_recorded(self, failure: Any, request: Request, decoded: PolicyRequest, gone: list[bool]) -> None:
        self._metrics.feed_request(decoded.command, "store_error")
        if self._due("store_error"):
            self.log.failure("could not record a login from {client} learned from Dovecot", failure, client=decoded.remote)
        # an allow is still "continue": the store must never block a login; a report's answer is only logged
        _answer(request, gone, 200 if decoded.command == "allow" else 503, ALLOW_ANSWER)

    def _tripped(self, decoded: PolicyRequest) -> None:
        self.log.error(
            "Dovecot sent an allow and then a failed report for {user!r} from {client}: an allow came before the "
            "password check (auth_policy_check_before_auth = yes?); this feed now records on reports only, "
            "and the address is revoked",
            user=decoded.login, client=decoded.remote,
        )
        self._metrics.feed_request("report", "allow_before_password")
        self._ledger.revoke(decoded.remote).addErrback(lambda f: self.log.failure("revoke failed", f))

    def _refuse(self, request: Request, code: int, command: str, error: PolicyRequestError) -> bytes:
        self._metrics.feed_request(command if command in ("allow", "report") else "other", error.reason)
        if self._due(error.reason):
            self.log.warn(
                "Dovecot feed: refused a request from {peer} ({reason}: {detail}); more of these are "
                "counted in popbridge_feed_requests and logged at most once a minute",
                peer=request.getClientAddress(), reason=error.reason, detail=str(error),
            )
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain")
        return f"{error.reason}\n".encode()

    def _due(self, reason: str) -> bool:
        now = self._clock.seconds()
        if now - self._warned.get(reason, -WARN_INTERVAL) < WARN_INTERVAL:
            return False
        self._warned[reason] = now
        return True


def _answer(request: Request, gone: list[bool], code: int, body: bytes) -> None:
    if gone:
        return
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))  # one write, not chunked
    request.write(body)
    request.finish()


class FeedSite(Site):
    """The feed's HTTP factory: bounded bodies, an idle timeout, no access log (one line per login)."""

    requestFactory = BoundedRequest
    displayTracebacks = False

    def log(self, request: HTTPRequest) -> None:
        """No access log line per request."""


def feed_site(settings: FeedConfig, ledger: ILedger, counters: Counters, clock: IReactorTime) -> Site:
    """The factory to listen with for one ``[[feed]]`` table."""
    resource = DovecotPolicyResource(settings, ledger, counters, clock)
    # the body is JSON whatever its Content-Type: no form parsing (a sixth of the CPU per request)
    return FeedSite(resource, timeout=settings.timeout, reactor=clock, parsePOSTFormSubmission=False)
