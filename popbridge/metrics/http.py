"""``[metrics] listen``: Prometheus scrapes ``GET /metrics`` here, served by twisted.web.

The live gauges (authorised addresses, live logins) are read from the ledger for each scrape
rather than kept up to date on every login and expiry: a scrape every 15 s costs one
``logins()`` call, and the numbers can never drift from the store. If the store cannot answer,
the scrape still gets every other metric (with the last live values), and the store error
counter shows why. Requests are not access-logged: a scraper would fill the log.
"""

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from popbridge.metrics import Metrics


class MetricsPage(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, metrics: Metrics, ledger: Any) -> None:
        super().__init__()
        self._metrics, self._ledger = metrics, ledger

    def render_GET(self, request: Request) -> object:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        Deferred.fromCoroutine(self._render(request, gone)).addErrback(
            lambda failure: self.log.failure("metrics scrape failed", failure)
        )
        return NOT_DONE_YET

    async def _render(self, request: Request, gone: list[bool]) -> None:
        try:
            await self._metrics.refresh_live(self._ledger)
        except Exception as e:
            self.log.warn("metrics: live logins unknown, the store did not answer: {error}", error=e)
        if gone:
            return
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.write(self._metrics.exposition())
        request.finish()


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class _QuietSite(Site):
    def log(self, request: HTTPRequest) -> None:
        """No access log line per scrape."""


def metrics_site(metrics: Metrics, ledger: Any) -> Site:
    """The factory to listen with: ``/metrics`` and nothing else (404)."""
    root = _Root()
    root.putChild(b"metrics", MetricsPage(metrics, ledger))
    site = _QuietSite(root)
    site.displayTracebacks = False
    return site
