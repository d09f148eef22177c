from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

popbridge = ServiceMaker(
    "popbridge",
    "popbridge.tap",
    "POP-before-SMTP bridge: proxies POP3 and IMAP4, remembers logins, answers relay lookups",
    "popbridge",
)

popbridge_reactor = Reactor(
    "popbridge",
    "popbridge.fast.reactor",
    "epoll without a log context per socket event (what `popbridge run` uses)",
)
